"""One implementation per concept: the policies, the training windows and the core share the
normaliser, the time embedding and RoPE, and behave as the formulas they replace."""

from __future__ import annotations

import torch

from policydistill.core import Normalizer, sinusoidal_embedding
from policydistill.policies.layers import apply_rope, rope_cos_sin
from policydistill.policies.pi0 import Pi0Policy, preset


def _state(module: torch.nn.Module) -> dict[str, object]:
    """Everything a module holds outside parameters, buffers and sub-modules, by identity and size."""
    return {
        k: (id(v), len(v) if isinstance(v, (dict, list)) else None)
        for k, v in vars(module).items()
        if k not in ("_parameters", "_buffers", "_modules")
    }


def test_pi0_time_embedding_is_cores_and_keeps_no_cache() -> None:
    # a cache filled on first use is a module attribute assigned during torch.export tracing
    policy = Pi0Policy(preset("tiny"))
    cfg = policy.config
    before = _state(policy)
    t = torch.tensor([0.0, 0.3, 0.7, 1.0])
    emb = policy.time_embedding(t, torch.float32)
    assert torch.equal(emb, sinusoidal_embedding(t, cfg.expert_width, cfg.min_period, cfg.max_period))
    assert _state(policy) == before


def test_normalizer_matches_lerobot_mean_std_and_passes_unknown_names() -> None:
    norm = Normalizer({"observation.state": 2, "action": 3})
    norm.set("action", {"mean": [1.0, 2.0, 3.0], "std": [0.5, 1.0, 2.0]}, "MEAN_STD", 1e-8)
    x = torch.tensor([[2.0, 2.0, -1.0]])
    assert torch.equal(
        norm.normalize("action", x), (x - torch.tensor([1.0, 2.0, 3.0])) / (torch.tensor([0.5, 1.0, 2.0]) + 1e-8)
    )
    assert torch.allclose(norm.unnormalize("action", norm.normalize("action", x)), x)
    assert torch.equal(norm.normalize("observation.state", x[:, :2]), x[:, :2])  # identity until set
    assert torch.equal(norm.normalize("other", x), x)
    assert set(norm.state_dict()) == {
        "observation_state_shift",
        "observation_state_scale",
        "action_shift",
        "action_scale",
    }


def test_apply_rope_is_the_pairwise_rotation() -> None:
    # pairs (i, i + hd/2) rotated by pos / 10000^(2i/hd): the formula lerobot's SmolVLA writes out
    hd, pos = 8, torch.tensor([[0, 1, 5]])
    x = torch.randn(1, 2, 3, hd)
    cos, sin = rope_cos_sin(pos, hd, 10000.0)
    ang = pos[..., None].float() / 10000.0 ** (torch.arange(hd // 2).float() * 2 / hd)
    c, s = ang.cos()[:, None], ang.sin()[:, None]
    x1, x2 = x.chunk(2, -1)
    want = torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], -1)
    assert torch.allclose(apply_rope(x, cos, sin), want, atol=1e-6)
    low = apply_rope(x.bfloat16(), cos, sin)  # float32 tables: rotated in float32, returned in bfloat16
    assert low.dtype == torch.bfloat16 and torch.equal(low, apply_rope(x.bfloat16().float(), cos, sin).bfloat16())


def test_smolvla_compile_for_inference_is_the_frozen_compile_contract() -> None:
    """SmolVLA compiles like pi0 (prefix and step, frozen weights; autograd stays eager) instead of
    replacing its ``flow`` on the instance; ``compile()`` means ``compile_for_inference()``."""
    from policydistill.policies.smolvla import SmolVLA

    torch._dynamo.reset()
    torch.manual_seed(0)
    p = SmolVLA.from_preset("tiny").eval()
    img = torch.rand(2, 3, 32, 32)
    cond = p.process(
        {
            "observation.images.base": img,
            "observation.images.wrist": img,
            "observation.state": torch.randn(2, 4),
            "task": ["pick", "place"],
        }
    )
    noise, t = torch.randn(2, *p.sample_shape()), torch.tensor([0.9, 0.3])
    with torch.no_grad():
        want = p.flow(noise, t, t, p.encode(cond))
        assert p.compile(backend="aot_eager") is p and p._compiled is not None
        encodes = p.counters["encode"]
        got = p.flow(noise, t, t, p.encode(cond))
        assert p.counters["encode"] == encodes + 1
    assert "flow" not in vars(p)  # nothing patched onto the instance
    assert (want - got).abs().max() < 1e-5
    v = p(noise, t, t, cond)  # autograd on: eager, gradients flow
    v.square().mean().backward()
    assert p.action_out_proj.weight.grad is not None
    assert p.use_eager()._compiled is None
    torch._dynamo.reset()


def test_every_architecture_declares_its_own_fsdp_units() -> None:
    """train/fsdp.py asks the model (``shard_units``): DiT and MLP blocks, none for a model without."""
    from policydistill.models.dit import DiTBlock, ImageDiT
    from policydistill.models.mlp import MLPFlowMap
    from policydistill.train import fsdp

    dit = ImageDiT()
    assert [u.module for u in fsdp.units_of(dit)] == [m for m in dit.modules() if isinstance(m, DiTBlock)]
    mlp = MLPFlowMap()
    assert [u.module for u in fsdp.units_of(mlp)] == list(mlp.blocks) and mlp.blocks
    assert fsdp.units_of(torch.nn.Linear(2, 2)) == []


def test_default_method_comes_from_one_table_per_domain(tmp_path) -> None:
    """`distill image-dit` (the pipeline command) and `media distill` resolve the same default,
    the media domain's, from methods.DEFAULT_METHODS; policies keep theirs."""
    from typer.testing import CliRunner

    from policydistill.cli.app import app
    from policydistill.methods import DEFAULT_METHOD, DEFAULT_METHODS, default_method

    assert default_method("actions") == DEFAULT_METHOD == DEFAULT_METHODS["actions"]
    torch.set_num_threads(1)
    result = CliRunner().invoke(
        app, ["distill", "image-dit", "--preset", "tiny", "--iters", "2", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "image-dit-tiny").glob("*-1nfe")] == [f"{default_method('images')}-1nfe"]
