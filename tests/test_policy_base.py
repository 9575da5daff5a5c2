"""FlowPolicy base: observation formats, normalisation, action queue, training batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from policydistill.core import TargetTimeEmbedding, sinusoidal_embedding
from policydistill.policies.base import FlowPolicy, FlowPolicyConfig, resize_with_pad


class ToyPolicy(FlowPolicy):
    """A tiny FlowPolicy: mean-pooled pixels + state → MLP velocity."""

    architecture = "toy"

    def __init__(self, config: FlowPolicyConfig) -> None:
        super().__init__()
        self._init_policy(config)
        self.net = nn.Linear(config.max_state_dim + 3 + 16, config.chunk_size * config.max_action_dim)
        self.target_time = TargetTimeEmbedding(16)
        self.encodes = 0

    def encode_inputs(self, tasks, state):
        b = state.shape[0]
        return {"tokens": torch.zeros(b, 1, dtype=torch.long), "token_masks": torch.ones(b, 1, dtype=torch.bool)}

    def encode(self, cond):
        self.encodes += 1
        cond = self.process(cond)
        return torch.cat([cond["state"], cond["images"].mean(dim=(1, 3, 4))], dim=-1)

    def flow(self, x_t, t, s, ctx):
        emb = sinusoidal_embedding(t, 16) + self.target_time(s)
        return self.net(torch.cat([ctx, emb], -1)).reshape(x_t.shape) + 0 * x_t


def _policy(**kw):
    cfg = FlowPolicyConfig(
        cameras=["corner2"],
        image_size=16,
        state_dim=5,
        action_dim=3,
        max_state_dim=8,
        max_action_dim=4,
        chunk_size=6,
        n_action_steps=4,
        **kw,
    )
    return ToyPolicy(cfg)


def _env_obs(b=2):
    rng = np.random.default_rng(0)
    return {
        "pixels": {"corner2": rng.integers(0, 255, (b, 16, 16, 3), dtype=np.uint8)},
        "agent_pos": rng.standard_normal((b, 5)).astype(np.float32),
        "task": ["reach"] * b,
    }


def test_env_and_lerobot_formats_agree():
    p = _policy()
    env = _env_obs()
    lr = {
        "observation.images.corner2": torch.from_numpy(env["pixels"]["corner2"]).permute(0, 3, 1, 2).float() / 255,
        "observation.state": torch.from_numpy(env["agent_pos"]),
        "task": "reach",
    }
    a, b = p.process(env), p.process(lr)
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["state"], b["state"])
    assert a["images"].shape == (2, 1, 3, 16, 16) and a["images"].min() >= -1 and a["state"].shape == (2, 8)


def test_missing_camera_is_masked_and_no_camera_is_an_error():
    cfg = FlowPolicyConfig(
        cameras=["corner2", "wrist"],
        image_size=16,
        state_dim=5,
        action_dim=3,
        max_state_dim=8,
        max_action_dim=4,
        chunk_size=6,
    )
    p = ToyPolicy(cfg)
    cond = p.process(_env_obs())
    assert cond["image_masks"].tolist() == [[True, False], [True, False]]
    with pytest.raises(KeyError, match="cameras"):
        p.process({"agent_pos": np.zeros((1, 5), np.float32), "pixels": {"top": np.zeros((1, 16, 16, 3), np.uint8)}})


def test_normalisation_round_trip_and_buffers_saved():
    p = _policy()
    p.set_normalization(
        {
            "observation.state": {"mean": np.arange(5.0), "std": np.full(5, 2.0)},
            "action": {"mean": [1.0, 2.0, 3.0], "std": [0.5, 0.5, 2.0]},
        }
    )
    x = torch.randn(4, 3)
    assert torch.allclose(p.normalizer.unnormalize("action", p.normalizer.normalize("action", x)), x, atol=1e-6)
    assert "normalizer.action_shift" in p.state_dict()
    with pytest.raises(ValueError, match="action_dim"):
        p.set_normalization({"action": {"mean": [0.0] * 7, "std": [1.0] * 7}})


def test_quantile_mode_matches_lerobot_formula():
    p = _policy(state_norm="QUANTILES")
    p.set_normalization({"observation.state": {"q01": -np.ones(5) * 0.5, "q99": np.ones(5) * 1.5}})
    x = torch.tensor([[0.0, 1.0, -0.5, 1.5, 0.25]])
    want = 2 * (x + 0.5) / 2.0 - 1
    assert torch.allclose(p.normalizer.normalize("state", x), want, atol=1e-6)


def test_sample_actions_shape_unnormalised_and_queue():
    p = _policy()
    p.set_normalization({"action": {"mean": [10.0, 10.0, 10.0], "std": [1e-3] * 3}})
    acts = p.sample_actions(_env_obs(), steps=2)
    assert acts.shape == (2, 6, 3) and (acts - 10).abs().max() < 0.1
    p.reset()
    p.encodes = 0
    first = [p.select_action(_env_obs()) for _ in range(5)]
    assert first[0].shape == (2, 3)
    assert p.encodes == 2  # n_action_steps = 4: a new chunk at the 1st and 5th call


def test_make_flow_batch_masks_padding():
    p = _policy()
    window = {
        "observation.images.corner2": torch.rand(2, 1, 3, 16, 16),
        "observation.state": torch.randn(2, 5),
        "action": torch.randn(2, 6, 3),
        "action_is_pad": torch.tensor([[False] * 6, [False] * 4 + [True] * 2]),
        "task": ["a", "b"],
    }
    fb = p.make_flow_batch(window)
    assert fb.data.shape == (2, 6, 4) and fb.mask.shape == (2, 6, 4)
    assert fb.mask[0, :, :3].all() and not fb.mask[..., 3].any() and not fb.mask[1, 4:].any()
    assert fb.data[..., 3].abs().max() == 0
    assert torch.allclose(fb.data[..., :3], p.normalizer.normalize("action", window["action"]))
    # the observation part of the window becomes the processed condition: images in [-1, 1], state padded
    assert torch.allclose(fb.cond["images"], window["observation.images.corner2"] * 2 - 1)
    assert torch.equal(fb.cond["state"][:, 5:], torch.zeros(2, 3))


def test_nfe_and_mode_settings_validate():
    p = _policy()
    p.nfe = 1
    p.sampling_mode = "flowmap"
    assert p.config_dict()["num_inference_steps"] == 1
    with pytest.raises(ValueError):
        p.sampling_mode = "bogus"


def test_resize_with_pad_keeps_aspect():
    img = torch.ones(1, 3, 8, 16)
    out = resize_with_pad(img, 16)
    assert out.shape == (1, 3, 16, 16) and out[0, 0, 0, 0] == 0 and out[0, 0, 8, 8] == 1
