"""pi0 / pi0.5 on our own presets: cache discipline, flow-map contract, training, I/O, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from policydistill.checkpoint import CheckpointError, load_model, save_model
from policydistill.core import student_from_teacher
from policydistill.methods.snapflow import SnapFlow
from policydistill.policies.pi0 import Pi0Policy, preset
from policydistill.policies.tokenizer import BuiltinTokenizer, load_tokenizer

VARIANTS = ["pi0", "pi05"]


def _policy(variant: str, **kw) -> Pi0Policy:
    torch.manual_seed(0)
    p = Pi0Policy(preset("tiny", variant, cameras=["corner2", "wrist"], **kw)).eval()
    with torch.no_grad():  # non-trivial norms and adaRMS, so that no branch hides behind a zero
        for name, prm in p.named_parameters():
            if "layernorm" in name or name.endswith("norm.weight") or "dense" in name:
                prm.normal_(0, 0.1)
    return p


def _obs(b: int = 2, missing_wrist: bool = False):
    rng = np.random.default_rng(1)
    pixels = {"corner2": rng.integers(0, 256, (b, 32, 32, 3), dtype=np.uint8)}
    if not missing_wrist:
        pixels["wrist"] = rng.integers(0, 256, (b, 32, 32, 3), dtype=np.uint8)
    return {
        "pixels": pixels,
        "agent_pos": rng.standard_normal((b, 4)).astype(np.float32),
        "task": ["pick up the cube", "open the drawer now please"][:b],
    }


@pytest.mark.parametrize("variant", VARIANTS)
def test_prefix_computed_once_per_chunk(variant):
    p = _policy(variant)
    vision_calls = []
    p.vision.register_forward_hook(lambda *a: vision_calls.append(1))
    p.prefix_calls = 0
    p.sample_actions(_obs(), steps=10)
    assert p.prefix_calls == 1 and len(vision_calls) == 1
    p.reset()
    p.nfe = 10
    for _ in range(p.config.n_action_steps + 1):  # one chunk, then the first action of the next
        p.select_action(_obs())
    assert p.prefix_calls == 3 and len(vision_calls) == 3


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_path_equals_full_attention(variant):
    """Padding in the prompt and a missing camera: the cache (with pi0's state token cached
    too) must equal the joint block-causal pass."""
    p = _policy(variant)
    cond = p.process(_obs(missing_wrist=True))
    assert not cond["image_masks"][:, 1].any() and not cond["token_masks"].all()
    x = torch.randn(2, *p.sample_shape())
    t = torch.tensor([0.9, 0.3])
    with torch.no_grad():
        cached = p.flow(x, t, t, p.encode(cond))
        full = p.velocity_full_attention(x, t, cond)
    assert (cached - full).abs().max() < 1e-5


@pytest.mark.parametrize("variant", VARIANTS)
def test_target_time_zero_means_teacher_and_is_wired(variant):
    teacher = _policy(variant)
    student = student_from_teacher(teacher)
    cond = teacher.process(_obs())
    x, t = torch.randn(2, *teacher.sample_shape()), torch.tensor([1.0, 0.6])
    with torch.no_grad():
        v_teacher = teacher.flow(x, t, t, teacher.encode(cond))
        ctx = student.encode(cond)
        assert torch.equal(student.flow(x, t, torch.zeros(2), ctx), v_teacher)
        assert torch.equal(student.flow(x, t, t, ctx), v_teacher)
        student.target_time.fc2.weight.normal_()
        assert not torch.allclose(student.flow(x, t, torch.zeros(2), ctx), v_teacher)


@pytest.mark.parametrize("variant", VARIANTS)
def test_snapflow_step_trains_every_part(variant):
    p = _policy(variant).train()
    window = {
        "observation.images.corner2": torch.rand(4, 1, 3, 32, 32),
        "observation.images.wrist": torch.rand(4, 3, 32, 32),
        "observation.state": torch.randn(4, 4),
        "action": torch.randn(4, 8, 3),
        "action_is_pad": torch.zeros(4, 8, dtype=torch.bool),
        "task": ["a", "b", "c", "d"],
    }
    batch = p.make_flow_batch(window)
    method = SnapFlow()
    method.setup(p, None, 10)
    loss, metrics = method.loss(p, None, batch, step=0)
    loss.backward()
    assert torch.isfinite(loss) and "consistency_loss" in metrics
    for part in (p.vision, p.vlm, p.expert, p.action_in_proj, p.target_time):
        grads = [q.grad for q in part.parameters() if q.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), f"no gradient reaches {type(part).__name__}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_save_load_round_trip_through_zoo(variant, tmp_path):
    p = _policy(variant)
    p.set_normalization(
        {
            "observation.state": {"mean": [1, 2, 3, 4], "std": [2, 2, 2, 2]},
            "action": {"mean": [5, 6, 7], "std": [0.1, 0.2, 0.3]},
        }
    )
    save_model(tmp_path / "m", p)
    q = load_model(tmp_path / "m").eval()
    assert type(q).__name__ == ("Pi05Policy" if variant == "pi05" else "Pi0Policy")
    noise = torch.randn(2, *p.sample_shape())
    assert torch.equal(p.sample_actions(_obs(), steps=2, noise=noise), q.sample_actions(_obs(), steps=2, noise=noise))


def test_sample_actions_unnormalised_shape_and_bf16():
    p = _policy("pi0")
    p.set_normalization({"action": {"mean": [100.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}})
    acts = p.sample_actions(_obs(), steps=3)
    assert acts.shape == (2, 8, 3) and 90 < float(acts[..., 0].mean()) < 110
    bf = p.to(torch.bfloat16)
    assert torch.isfinite(bf.sample_actions(_obs(), steps=2).float()).all()


def test_presets_sizes():
    n = {name: sum(q.numel() for q in Pi0Policy(preset(name)).parameters()) for name in ("tiny", "small")}
    assert n["tiny"] < 1e6 and 1e6 < n["small"] < 1e7
    with torch.device("meta"):
        ref = Pi0Policy(preset("ref"))
        full = Pi0Policy(preset("full"))
    assert (ref.config.vlm_width, ref.config.expert_width, ref.config.chunk_size, len(ref.config.cameras)) == (
        256,
        128,
        50,
        2,
    )
    assert 3.0e9 < sum(q.numel() for q in full.parameters()) < 3.6e9  # PaliGemma 2B (+ SigLIP 400M) + 300M expert


def test_builtin_tokenizer_and_missing_tokenizer_error(tmp_path):
    tok = BuiltinTokenizer(320)
    ids, mask = tok(["State: 0 255 -1 128;\nAction: ", "pick"], 12)
    assert ids.shape == (2, 12) and mask[1].sum() == 2
    assert ids[0, 3:6].tolist() == [4, 4 + 255, 4 + 256]  # "0", "255", "-1" have their own ids
    assert torch.equal(tok(["pick"], 4)[0], tok(["pick"], 4)[0]) and int(ids.max()) < 320
    with pytest.raises(FileNotFoundError, match="tokenizer.json or tokenizer.model"):
        load_tokenizer(str(tmp_path), 320)
    p = _policy("pi0", tokenizer=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="paligemma"):
        p.sample_actions(_obs(), steps=1)


def test_from_lerobot_refuses_pickles_and_lists_bad_keys(tmp_path, fixtures_dir):
    (tmp_path / "config.json").write_text('{"type": "pi0"}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04junk")
    with pytest.raises(CheckpointError, match="pickles are never loaded"):
        Pi0Policy.from_lerobot(tmp_path)
    import shutil

    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(fixtures_dir / "lerobot" / "pi0", bad)
    state = load_file(str(bad / "model.safetensors"))
    del state["model.state_proj.weight"]
    state["model.extra_thing.weight"] = torch.zeros(2, 2)
    (bad / "model.safetensors").chmod(0o644)
    save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        Pi0Policy.from_lerobot(bad)
    assert "state_proj.weight (32, 8)" in str(err.value) and "extra_thing.weight (2, 2)" in str(err.value)


def test_bench_policies_reports_every_number():
    from policydistill.policies.bench import BenchSettings, checks, run

    result = run(
        BenchSettings(archs=("pi0", "pi05"), sizes=("tiny", "nosuch"), repeats=2, warmup=1, threads=1),
        log=lambda *_: None,
    )
    assert [r["arch"] for r in result["rows"]] == ["pi0", "pi05"] and len(result["skipped"]) == 2
    row = result["rows"][0]
    for key in (
        "params_M",
        "prefix_ms",
        "step_ms",
        "denoise1_ms",
        "denoise10_ms",
        "chunk1_ms",
        "chunk10_ms",
        "e2e10_ms",
        "ratio_10_1",
    ):
        assert row[key] > 0
    assert result["lerobot_pi0_ref_quoted_ms"]["chunk10_ms"] == 38.7
    assert len(checks(result)) == 2


def test_grouped_query_attention_with_several_kv_heads():
    """num_kv_heads > 1 takes the general grouped path (query heads folded per key/value head)."""
    p = _policy("pi0", num_kv_heads=2)
    cond = p.process(_obs(missing_wrist=True))
    x, t = torch.randn(2, *p.sample_shape()), torch.tensor([0.9, 0.3])
    with torch.no_grad():
        assert (p.flow(x, t, t, p.encode(cond)) - p.velocity_full_attention(x, t, cond)).abs().max() < 1e-5
