"""Every registered method runs on every domain — action chunks, images, video — through the one
training loop, with no method-specific code here: that is the promise of the registry
(a method sees only the flow-map contract: docs/architecture.md)."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from policydistill.core import sample, student_from_teacher
from policydistill.core.flowmap import FlowBatch
from policydistill.methods import METHODS, make_method
from policydistill.models.dit import ImageDiT, ImageDiTConfig, VideoDiT, VideoDiTConfig
from policydistill.models.mlp import MLPFlowMap, MLPFlowMapConfig
from policydistill.train import loop

NUM_CLASSES = 3


class ActionChunks:
    """Bimodal 2-D action chunks (4 × 2) conditioned on a 3-D observation."""

    def sample(self, batch_size: int, generator: torch.Generator) -> FlowBatch:
        obs = torch.randn(batch_size, 3, generator=generator)
        side = torch.randint(0, 2, (batch_size, 1, 1), generator=generator).float() * 2 - 1
        chunk = side * torch.linspace(0.2, 1.0, 4).reshape(1, 4, 1).expand(batch_size, 4, 2) + 0.05 * obs[:, None, :2]
        return FlowBatch(data=chunk, cond=obs)


class Images:
    """Class-dependent 8×8 one-channel patterns in [-1, 1]."""

    def sample(self, batch_size: int, generator: torch.Generator) -> FlowBatch:
        labels = torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator)
        base = torch.linspace(-1, 1, 8).reshape(1, 1, 1, 8) * (labels.float() - 1).reshape(-1, 1, 1, 1)
        x = (base + 0.1 * torch.randn(batch_size, 1, 8, 8, generator=generator)).clamp(-1, 1)
        return FlowBatch(data=x, cond=labels)


class Clips:
    """Two-frame 8×8 RGB clips that drift from a conditioning first frame."""

    def sample(self, batch_size: int, generator: torch.Generator) -> FlowBatch:
        first = torch.rand(batch_size, 3, 8, 8, generator=generator) * 2 - 1
        labels = torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator)
        drift = (labels.float() - 1).reshape(-1, 1, 1, 1, 1) * 0.2
        clip = (first[:, None] + drift * torch.arange(1, 3).reshape(1, 2, 1, 1, 1)).clamp(-1, 1)
        return FlowBatch(data=clip, cond={"first_frame": first, "label": labels})


def _actions():
    return MLPFlowMap(MLPFlowMapConfig(sample_shape=(4, 2), cond_dim=3, width=32, depth=1, time_dim=16)), ActionChunks()


def _images():
    cfg = ImageDiTConfig(
        image_size=8, channels=1, patch=4, width=32, depth=1, heads=2, num_classes=NUM_CLASSES, time_dim=16
    )
    return ImageDiT(cfg), Images()


def _video():
    cfg = VideoDiTConfig(
        frames=2, image_size=8, channels=3, patch=4, width=32, depth=1, heads=2, num_classes=NUM_CLASSES, time_dim=16
    )
    return VideoDiT(cfg), Clips()


DOMAINS = {"actions": _actions, "images": _images, "video": _video}


def _method_module_missing(name: str) -> bool:
    module = METHODS.entries[name].split(":")[0]
    return importlib.util.find_spec(module) is None


@pytest.mark.parametrize("domain", list(DOMAINS))
@pytest.mark.parametrize("name", METHODS.names())
def test_method_runs_on_domain(name: str, domain: str) -> None:
    if _method_module_missing(name):
        pytest.skip(f"method {name!r} is registered but its module has not landed yet")
    teacher, data = DOMAINS[domain]()
    teacher.eval()
    student = student_from_teacher(teacher)
    method = make_method(name)
    cfg = loop.TrainConfig(steps=2, batch_size=8, lr=1e-3, warmup_steps=1, progress=False, seed=1)
    result = loop.train(student, method, data, cfg, teacher=teacher)

    assert len(result.history) == 2
    assert all(math.isfinite(h["loss"]) for h in result.history), result.history
    net = method.sampling_model(result.model)
    batch = data.sample(4, torch.Generator().manual_seed(5))
    noise = torch.randn_like(batch.data)
    for nfe in (1, 2):
        out = sample(net, noise, batch.cond, steps=nfe, mode=method.sampling)
        assert out.shape == batch.data.shape, (name, domain, nfe, out.shape)
        assert torch.isfinite(out).all(), (name, domain, nfe)


def test_every_domain_is_covered() -> None:
    # the contract test above must keep covering the three domains the registry serves
    assert set(DOMAINS) == {"actions", "images", "video"}
    assert "snapflow" in METHODS and "flow_matching" in METHODS
