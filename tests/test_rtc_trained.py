"""Training-time real-time chunking on pi0 / pi0.5: a clean prefix of committed actions with
per-token time 0, kept exactly at inference, outside the loss, and actually used by the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from policydistill.core.flowmap import FlowBatch
from policydistill.core.rtc import per_token_time, prefix_mask, training_delays
from policydistill.policies.pi0 import Pi0Policy, preset
from policydistill.policies.rtc import RTCPrefix

VARIANTS = ["pi0", "pi05"]


def _policy(variant: str, max_delay: int = 3) -> Pi0Policy:
    torch.manual_seed(0)
    p = Pi0Policy(preset("tiny", variant, rtc_training_max_delay=max_delay))
    with torch.no_grad():  # non-zero adaRMS / norms, so that per-token conditioning is exercised
        for name, prm in p.named_parameters():
            if "layernorm" in name or name.endswith("norm.weight") or "dense" in name or "target_time.fc2" in name:
                prm.normal_(0, 0.1)
    return p


def _window(p: Pi0Policy, b: int, actions: torch.Tensor | None = None) -> dict:
    cfg = p.config
    g = torch.Generator().manual_seed(5)
    return {
        "observation.images.corner2": torch.rand(b, 3, cfg.image_size, cfg.image_size, generator=g),
        "observation.state": torch.randn(b, cfg.state_dim, generator=g),
        "task": "reach the moving goal",
        "action": torch.randn(b, cfg.chunk_size, cfg.action_dim, generator=g) if actions is None else actions,
    }


def _obs(window: dict) -> dict:
    return {k: v for k, v in window.items() if k != "action"}


def test_prefix_numerics():
    assert prefix_mask(torch.tensor([0, 2, 3]), 4).tolist() == [
        [False] * 4,
        [True, True, False, False],
        [True, True, True, False],
    ]
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        prefix_mask(torch.tensor([4]), 4)
    t = per_token_time(torch.tensor([0.5, 0.75]), prefix_mask(torch.tensor([1, 0]), 3))
    assert t.tolist() == [[0.0, 0.5, 0.5], [0.75, 0.75, 0.75]]
    d = training_delays(4000, 3, torch.Generator().manual_seed(0))
    assert set(d.tolist()) == {0, 1, 2, 3} and abs(float((d == 0).float().mean()) - 0.25) < 0.03
    assert torch.equal(d, training_delays(4000, 3, torch.Generator().manual_seed(0)))  # the data stream's


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_batch_has_a_clean_prefix_outside_the_loss(variant):
    p = _policy(variant)
    batch = p.make_flow_batch(_window(p, 64), generator=torch.Generator().manual_seed(1))
    mask, clean = batch.cond["rtc_mask"], batch.cond["rtc_clean"]
    delays = mask.sum(1)
    assert delays.min() == 0 and delays.max() == 3  # 0..max_delay, 0 included
    real = batch.mask[..., : p.config.action_dim]
    assert float(real[mask].abs().sum()) == 0.0 and bool((real[~mask] == 1).all())
    assert torch.equal(clean, batch.data)
    again = p.make_flow_batch(_window(p, 64), generator=torch.Generator().manual_seed(1))
    assert torch.equal(again.cond["rtc_mask"], mask)
    plain = Pi0Policy(preset("tiny", variant)).make_flow_batch(_window(p, 4))
    assert "rtc_mask" not in plain.cond


@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_prefix_tokens_are_clean_inputs_with_time_zero_and_zero_output(variant):
    p = _policy(variant)
    batch = p.make_flow_batch(_window(p, 6), generator=torch.Generator().manual_seed(3))
    mask = batch.cond["rtc_mask"]
    assert bool(mask.any()) and not bool(mask.all(1).any())
    ctx = p.encode(batch.cond)
    x, t = torch.randn_like(batch.data), torch.rand(6)
    out = p.flow(x, t, t, ctx)
    assert float(out[mask].abs().max()) == 0.0
    # what the sampler's state holds at prefix positions does not matter: the clean actions replace it
    x2 = torch.where(mask[..., None], torch.randn_like(x), x)
    assert torch.allclose(p.flow(x2, t, t, p.encode(batch.cond)), out, atol=1e-6)
    # the committed actions themselves do: the postfix attends to them
    moved = dict(batch.cond, rtc_clean=batch.cond["rtc_clean"] + 1.0)
    diff = (p.flow(x, t, t, p.encode(moved)) - out)[~mask].abs().max()
    assert float(diff) > 1e-4
    # no prefix (delay 0 everywhere) is the per-sample path (to rounding: per-token time embeds per token)
    none = dict(batch.cond, rtc_mask=torch.zeros_like(mask))
    plain = {k: v for k, v in batch.cond.items() if not k.startswith("rtc_")}
    assert torch.allclose(p.flow(x, t, t, p.encode(none)), p.flow(x, t, t, p.encode(plain)), atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_sample_actions_starts_with_the_committed_actions(variant):
    p = _policy(variant).eval()
    win = _window(p, 3)
    prev = torch.randn(3, 5, p.config.action_dim)
    out = p.sample_actions(_obs(win), steps=2, rtc=RTCPrefix(prev, [0, 2, 5], lengths=[0, 5, 5]))
    assert torch.allclose(out[1, :2], prev[1, :2], atol=1e-5)
    # beyond the trained range (3) the prefix is the trained part: the rest is stale for the caller
    assert torch.allclose(out[2, :3], prev[2, :3], atol=1e-5) and not torch.allclose(out[2, 3:5], prev[2, 3:5])
    noise = torch.randn(3, p.config.chunk_size, p.config.max_action_dim)
    a = p.sample_actions(_obs(win), steps=2, noise=noise)
    b = p.sample_actions(_obs(win), steps=2, noise=noise, rtc=RTCPrefix(prev, 0))
    assert torch.equal(a, b)


def test_a_prefix_for_a_policy_not_trained_with_it_is_refused():
    p = Pi0Policy(preset("tiny", "pi0")).eval()
    win = _window(p, 2)
    with pytest.raises(ValueError, match="rtc_training_max_delay"):
        p.sample_actions(
            _obs(win), steps=1, rtc=RTCPrefix(torch.zeros(2, 3, p.config.action_dim), 1), rtc_mode="trained"
        )
    with pytest.raises(ValueError, match="rtc_mode"):
        p.sample_actions(_obs(win), steps=1, rtc=RTCPrefix(torch.zeros(2, 3, p.config.action_dim), 1), rtc_mode="x")
    with pytest.raises(ValueError, match="delay must lie"):
        p.sample_actions(_obs(win), steps=1, rtc=RTCPrefix(torch.zeros(2, 3, p.config.action_dim), 4))
    with pytest.raises(ValueError, match="chunk_size"):
        preset("tiny", "pi0", rtc_training_max_delay=8)
    from policydistill.policies.smolvla.configuration import SmolVLAConfig

    with pytest.raises(ValueError, match="pi0 and pi0.5, not SmolVLA"):
        SmolVLAConfig(rtc_training_max_delay=2)


def test_distilling_with_a_longer_prefix_than_the_teacher_knows_is_refused():
    from policydistill.pipeline.distill import set_rtc_max_delay

    teacher, student = _policy("pi0", 3), _policy("pi0", 3)
    assert set_rtc_max_delay(student, teacher, None) == 3
    assert set_rtc_max_delay(student, teacher, 0) == 0 and student.config.rtc_training_max_delay == 0
    with pytest.raises(ValueError, match="train the teacher with"):
        set_rtc_max_delay(student, teacher, 5)


class _ConstantChunks:
    """Chunks whose actions are one constant c ~ N(0, 1) per chunk, independent of the observation:
    with no prefix the best chunk is any draw of c, with a prefix the exact answer is c itself."""

    def __init__(self, policy: Pi0Policy) -> None:
        self.policy = policy

    def sample(self, batch_size: int, generator: torch.Generator) -> FlowBatch:
        cfg = self.policy.config
        c = torch.randn(batch_size, 1, 1, generator=generator)
        win = _window(self.policy, batch_size, c.expand(batch_size, cfg.chunk_size, cfg.action_dim).clone())
        return self.policy.make_flow_batch(win, generator=generator)


@pytest.mark.slow  # ~30 s per variant on an idle 2-core CPU
@pytest.mark.parametrize("variant", VARIANTS)
def test_training_time_rtc_learns_to_continue_the_committed_actions(variant):
    from policydistill.methods.flow_matching import FlowMatching
    from policydistill.train import TrainConfig, train

    torch.manual_seed(0)
    p = Pi0Policy(preset("tiny", variant, rtc_training_max_delay=3))
    p.set_normalization({"action": {"mean": np.zeros(3), "std": np.ones(3)}})
    cfg = TrainConfig(steps=150, batch_size=32, lr=2e-3, warmup_steps=10, progress=False, handle_signals=False)
    model = train(p, FlowMatching(), _ConstantChunks(p), cfg).model.eval()
    c = torch.linspace(-1.5, 1.5, 16)[:, None, None]
    prev = c.expand(16, 4, 3)
    obs = _obs(_window(model, 16))
    torch.manual_seed(1)
    guided = model.sample_actions(obs, steps=10, rtc=RTCPrefix(prev, 2))
    free = model.sample_actions(obs, steps=10)
    err_rtc = float((guided[:, 2:] - c).pow(2).mean())
    err_free = float((free[:, 2:] - c).pow(2).mean())
    assert err_rtc < 0.1 * err_free, (err_rtc, err_free)


def test_lerobot_training_time_rtc_setting_is_read_on_import(tmp_path):
    """lerobot's pi0.5 ``rtc_training_max_delay`` (the same clean-prefix scheme) comes in with the weights."""
    import json
    import warnings

    p = Pi0Policy(preset("tiny", "pi05"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny size is not one stock lerobot builds
        p.to_lerobot(tmp_path / "lr")
    (tmp_path / "lr" / "policydistill.json").unlink()  # as lerobot itself would have written the folder
    cfg = json.loads((tmp_path / "lr" / "config.json").read_text())
    cfg["rtc_training_max_delay"] = 3
    (tmp_path / "lr" / "config.json").write_text(json.dumps(cfg))
    back = Pi0Policy.from_lerobot(tmp_path / "lr", overrides={"vision_heads": p.config.vision_heads})
    assert back.config.rtc_training_max_delay == 3
