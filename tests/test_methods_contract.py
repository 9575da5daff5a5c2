"""One contract test for every registered method (the method registry of docs/architecture.md): on a tiny
2-D two-mode mixture, a few steps through the ONE training loop give a finite loss that goes down,
the method's sampler gives finite samples of the right shape at 1 and N steps, and the model and the
method's own state (EMA copies, buffers) survive the checkpoint round trip."""

from __future__ import annotations

import dataclasses
import importlib
import json
import zlib

import pytest
import torch

from policydistill.checkpoint import load_model, read_safetensors, save_model, unflatten_state
from policydistill.core import FlowBatch, sample
from policydistill.methods import METHODS, make_method
from policydistill.models.mlp import MLPFlowMap
from policydistill.train.loop import TrainConfig, train

MODES = torch.tensor([[1.5, 1.0], [-1.5, -1.0]])
WIDTH, DEPTH = 32, 2
STEPS, BATCH, WINDOW = 80, 128, 15
N_STEPS = 4  # the "N" of the N-step sampler: a power of two, so shortcut-style methods support it


class TwoModes:
    """a = ±(1.5, 1) + 0.1·noise: the naive 1-step map would average the two modes."""

    def sample(self, batch_size: int, generator: torch.Generator) -> FlowBatch:
        which = torch.randint(0, 2, (batch_size,), generator=generator)
        return FlowBatch(MODES[which] + 0.1 * torch.randn(batch_size, 2, generator=generator))


def tiny_model(seed: int) -> MLPFlowMap:
    torch.manual_seed(seed)
    return MLPFlowMap(sample_shape=(2,), width=WIDTH, depth=DEPTH, time_dim=16)


def quiet(steps: int, seed: int, **kw) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=BATCH, lr=3e-3, warmup_steps=5, seed=seed, progress=False, **kw)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teacher() -> MLPFlowMap:
    """A quick flow-matching fit of the mixture, frozen; cached for the whole module."""
    model = tiny_model(seed=1234)
    train(model, make_method("flow_matching"), TwoModes(), quiet(300, seed=1234))
    return model.eval().requires_grad_(False)


def test_every_registered_method_is_covered():
    # the ten shipped methods; a newly registered one is picked up by the parametrisation
    expected = {
        "flow_matching",
        "snapflow",
        "shortcut",
        "meanflow",
        "lsd",
        "psd",
        "consistency_distillation",
        "consistency_training",
        "progressive_distillation",
        "reflow",
    }
    assert expected <= set(METHODS.names()), sorted(expected - set(METHODS.names()))


@pytest.mark.parametrize("name", METHODS.names(), ids=METHODS.names())
def test_method_contract(name, teacher, tmp_path):
    cls = METHODS.load(name)
    # registry metadata every method must carry
    assert cls.description and cls.paper and cls.nfe_supported, f"{name} lacks registry metadata"
    assert cls.sampling in ("flowmap", "diagonal", "consistency")
    assert dataclasses.is_dataclass(cls.Config), f"{name}.Config must be a dataclass"
    doc_lines = (importlib.import_module(cls.__module__).__doc__ or "").strip().splitlines()
    assert doc_lines and doc_lines[0].strip(), f"{name}'s module docstring must name its paper and equation"

    seed = zlib.crc32(name.encode()) % 10_000  # fixed per method, independent of test order
    student = tiny_model(seed)
    method = make_method(name)
    result = train(student, method, TwoModes(), quiet(STEPS, seed), teacher=teacher, out_dir=tmp_path)

    # 1. finite loss that goes down (student starts from scratch, so every method has real work)
    # a self-normalised loss (meanflow's adaptive weight ℓ/sg(ℓ+c)) sits near 1 by design: such
    # methods name the metric that must go down in ``progress_metric``
    losses = torch.tensor([r[cls.progress_metric] for r in result.history])
    assert len(losses) == STEPS and torch.isfinite(losses).all(), f"{name}: non-finite loss {losses}"
    first, last = losses[:WINDOW].mean().item(), losses[-WINDOW:].mean().item()
    assert last < 0.8 * first, f"{name}: loss did not decrease enough (first {first:.4f} → last {last:.4f})"

    # 2. the method's own sampler at 1 and N steps
    model = method.sampling_model(result.model)
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    for steps in (1, N_STEPS):
        out = sample(model, noise, None, steps=steps, mode=cls.sampling)
        assert out.shape == noise.shape and torch.isfinite(out).all(), f"{name}: bad {steps}-step samples"

    # 3a. the model round trips through safetensors + config.json
    save_model(tmp_path / "export", result.model)
    loaded = load_model(tmp_path / "export").eval()
    x, t = torch.randn(16, 2), torch.rand(16)
    s = t * torch.rand(16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, s), result.model(x, t, s), rtol=0, atol=0)

    # 3b. the method's state (extra networks, buffers) round trips through the loop's checkpoint
    folder = tmp_path / "checkpoints" / f"step-{STEPS:08d}"
    state = json.loads((folder / "training_state.json").read_text())
    restored_state = unflatten_state(
        state["skeleton"]["method"], read_safetensors(folder / "training_state.safetensors")
    )
    fresh = make_method(name)
    fresh.setup(tiny_model(seed + 1), teacher, STEPS)
    fresh.load_state_dict(restored_state)
    want = method.state_dict()
    got = fresh.state_dict()
    assert set(got) == set(want), f"{name}: method state keys differ after the round trip"
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=f"{name}: {key} changed")
    for extra in cls.extra_networks:
        assert any(k.startswith(extra) for k in want), f"{name}: extra network {extra!r} is not in its state_dict"
