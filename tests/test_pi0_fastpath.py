"""pi0 inference fast paths: the float32 gelu form, the key/value buffers written in
place by the prefix, and the optional torch.compile'd prefix and denoising step."""

from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_pi0 import _obs  # the same raw observations as the pi0 tests

from policydistill.core import sample_with_ctx
from policydistill.policies import layers
from policydistill.policies.layers import Linear, gelu_tanh, linear
from policydistill.policies.pi0 import Pi0Policy, preset


def _policy(variant: str) -> Pi0Policy:
    torch.manual_seed(0)
    p = Pi0Policy(preset("tiny", variant, cameras=["corner2", "wrist"])).eval()
    with torch.no_grad():  # non-trivial norms and adaRMS, so that no branch hides behind a zero
        for name, prm in p.named_parameters():
            if "layernorm" in name or name.endswith("norm.weight") or "dense" in name:
                prm.normal_(0, 0.1)
    return p


@pytest.mark.skipif(not layers._ONEDNN, reason="this torch build has no oneDNN")
def test_linear_runs_large_float32_inference_through_onednn_and_matches_the_blas():
    """``linear``: the oneDNN op for float32 CPU inference of a large enough product (checked
    with the profiler, not assumed), ``F.linear`` for small products, under autograd and for
    other dtypes; the results agree with ``F.linear`` to float32 rounding; ``Linear`` keeps
    ``nn.Linear``'s parameters and state-dict keys."""
    from torch.profiler import profile

    torch.manual_seed(0)
    lin = Linear(128, 1024)
    assert isinstance(lin, torch.nn.Linear) and set(lin.state_dict()) == {"weight", "bias"}
    big, small = torch.randn(2, 50, 128), torch.randn(1, 128)
    assert big.numel() * 1024 >= layers.ONEDNN_MIN_MACS > small.numel() * 1024

    def ops(fn) -> set[str]:
        with profile() as prof:
            fn()
        return {e.key for e in prof.key_averages()}

    with torch.no_grad():
        assert "mkldnn::_linear_pointwise" in ops(lambda: lin(big))
        assert "mkldnn::_linear_pointwise" not in ops(lambda: lin(small))
        assert "mkldnn::_linear_pointwise" not in ops(lambda: lin.double()(big.double()))
        lin.float()
        torch.testing.assert_close(lin(big), F.linear(big, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)
        # a non-contiguous input and a bias-free call
        x = torch.randn(2, 128, 50).transpose(1, 2)
        torch.testing.assert_close(linear(x, lin.weight), F.linear(x, lin.weight), rtol=1e-5, atol=1e-5)
    assert "mkldnn::_linear_pointwise" not in ops(lambda: lin(big).sum().backward())  # autograd: the BLAS
    assert lin.weight.grad is not None


@pytest.mark.skipif(not layers._ONEDNN, reason="this torch build has no oneDNN")
def test_ref_size_pi0_chunk_with_onednn_equals_the_blas_chunk():
    """The whole ref-size 10-step chunk (products above the oneDNN threshold in the vision
    tower, the VLM and the expert) agrees with the all-BLAS computation to float32 rounding."""
    torch.manual_seed(0)
    p = Pi0Policy(preset("ref")).eval()
    obs = {
        "pixels": {
            c: np.random.default_rng(0).integers(0, 256, (1, 128, 128, 3), dtype=np.uint8) for c in p.config.cameras
        },
        "agent_pos": np.zeros((1, p.config.state_dim), np.float32),
        "task": ["pick up the cube"],
    }
    noise = torch.randn(1, *p.sample_shape())
    with torch.no_grad():
        fast = p.sample_actions(obs, steps=10, noise=noise)
        try:
            layers._ONEDNN = False
            blas = p.sample_actions(obs, steps=10, noise=noise)
        finally:
            layers._ONEDNN = True
    assert (fast - blas).abs().max() < 1e-4, (fast - blas).abs().max()


def test_gelu_tanh_form_matches_torch_and_its_gradient():
    x = torch.randn(64, 96, dtype=torch.float64).mul_(3).float().requires_grad_()
    up = torch.randn(64, 96, requires_grad=True)
    ours, ref = gelu_tanh(x, up), F.gelu(x, approximate="tanh") * up
    assert (ours - ref).abs().max() < 1e-5
    g_ours = torch.autograd.grad(ours.square().sum(), (x, up))
    g_ref = torch.autograd.grad(ref.square().sum(), (x, up))
    assert all(torch.allclose(a, b, atol=1e-4, rtol=1e-5) for a, b in zip(g_ours, g_ref))
    assert (gelu_tanh(x) - F.gelu(x, approximate="tanh")).abs().max() < 1e-6
    xb = x.detach().bfloat16()  # other dtypes: torch's own kernel
    assert torch.equal(gelu_tanh(xb), F.gelu(xb, approximate="tanh"))


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_inference_cache_is_views_of_the_step_buffers(variant):
    """No-grad encode writes the prefix (and pi0's state token) straight into buffers with room
    for the actions; the cache equals the autograd path's concatenated keys/values."""
    p = _policy(variant)
    cond = p.process(_obs(missing_wrist=True))
    with torch.no_grad():
        ctx = p.encode(cond)
    ref = p.encode(cond)  # autograd on: concatenation, no buffers
    assert ref.k_buf is None and ctx.k_buf is not None
    lc = ref.cached_len
    assert lc == cond["image_masks"].shape[1] * 16 + cond["tokens"].shape[1] + (0 if variant == "pi05" else 1)
    for i in range(len(ctx.keys)):
        assert ctx.k_buf[i].shape[2] == lc + p.config.chunk_size
        assert ctx.keys[i].data_ptr() == ctx.k_buf[i].data_ptr() and ctx.keys[i].shape[2] == lc
        assert torch.equal(ctx.keys[i], ref.keys[i].detach()) and torch.equal(ctx.values[i], ref.values[i].detach())


@pytest.mark.parametrize(
    "variant,padding,backend",
    [
        # quick: dynamo captures prefix and step whole (fullgraph), the in-place buffer writes are
        # functionalised, the dispatch works; inductor's code generation is the slow part (~20-40 s
        # per graph on a cold cache), checked in the slow cases
        ("pi0", (True,), "aot_eager"),
        pytest.param("pi0", (False, True), "inductor", marks=pytest.mark.slow),
        pytest.param("pi05", (False, True), "inductor", marks=pytest.mark.slow),
    ],
)
def test_compiled_inference_matches_eager(variant, padding, backend, monkeypatch):
    """compile_for_inference: the compiled prefix and step agree with eager (with and without
    padding), recompile when the frozen weights changed, leave the autograd path eager, and
    ``use_eager`` undoes it. Every projection goes through oneDNN here (threshold 0), so that
    inductor's lowering of it with frozen weights is exercised at this tiny size too."""
    monkeypatch.setattr(layers, "ONEDNN_MIN_MACS", 0)
    torch._dynamo.reset()
    p = _policy(variant)
    noise = torch.randn(2, *p.sample_shape())
    t = torch.tensor([0.9, 0.3])
    conds = [p.process(_obs(missing_wrist=padded)) for padded in padding]
    with torch.no_grad():
        want = [p.flow(noise, t, t, p.encode(c)) for c in conds]
        want_actions = sample_with_ctx(p, noise, p.encode(conds[-1]), 3, "diagonal")
        want_chunk = p.sample_chunk(conds[-1], noise, 2, "flowmap")
        p.compile_for_inference(backend=backend)
        got = [p.flow(noise, t, t, p.encode(c)) for c in conds]
        got_actions = sample_with_ctx(p, noise, p.encode(conds[-1]), 3, "diagonal")
        before = p.prefix_calls
        got_chunk = p.sample_chunk(conds[-1], noise, 2, "flowmap")  # prefix + 2 jumps as one program
        assert p.prefix_calls == before + 1
    for a, b in zip(want, got):
        assert (a - b).abs().max() < 1e-5
    assert (want_actions - got_actions).abs().max() < 1e-5
    assert (want_chunk - got_chunk).abs().max() < 1e-5

    with torch.no_grad():  # weights changed in place (a training step): no stale constants
        p.expert.layers[0].mlp.down_proj.weight.mul_(1.5)
        eager = copy.deepcopy(p).use_eager()
        assert eager._compiled is None and p._compiled is not None
        with pytest.warns(UserWarning, match="weights changed after compile_for_inference"):
            ctx = p.encode(conds[-1])
        got, want = p.flow(noise, t, t, ctx), eager.flow(noise, t, t, eager.encode(conds[-1]))
        assert (got - want).abs().max() < 1e-5
    v = p(noise, t, t, conds[-1])  # autograd on: the eager path, gradients flow
    v.square().mean().backward()
    assert p.action_out_proj.weight.grad is not None
    torch._dynamo.reset()


@pytest.mark.slow
def test_bench_reports_compiled_rows_beside_eager():
    from policydistill.policies.bench import BenchSettings, checks, run

    result = run(
        BenchSettings(archs=("pi0", "smolvla"), sizes=("tiny",), repeats=2, warmup=1, threads=1, compile=True),
        log=lambda *_: None,
    )
    assert [(r["arch"], r["mode"]) for r in result["rows"]] == [
        ("pi0", "eager"),
        ("pi0", "compiled"),
        ("smolvla", "eager"),
    ]
    compiled = result["rows"][1]
    assert compiled["compile_s"] > 0 and compiled["chunk10_ms"] > 0 and "compile_s" not in result["rows"][0]
    assert result["skipped"] == [
        {"arch": "smolvla", "size": "tiny", "mode": "compiled", "why": "smolvla has no compile_for_inference"}
    ]
    assert any("compiled" in claim for claim, _, _ in checks(result))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_keep_freed_memory_stops_page_faults_on_reallocation():
    import resource

    from policydistill.policies.cpu_memory import keep_freed_memory

    assert keep_freed_memory()
    for _ in range(3):  # the heap grows once to hold these
        torch.ones(4 << 20)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):  # 16 MB each: 4096 pages each time if the memory went back to the kernel
        torch.ones(4 << 20)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 500
