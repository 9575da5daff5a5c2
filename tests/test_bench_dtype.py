"""Reduced-precision and GPU-ready inference: bfloat16 chunks measured against float32 by
``bench policies``, its options, the dtype paths of ``layers.linear`` and of the normaliser, and
the whole-chunk program's CUDA-graph path (exercised on the CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from policydistill.core import sample_with_ctx
from policydistill.policies import layers
from policydistill.policies.bench import BenchSettings, chunk_error, dtype_name, run
from policydistill.policies.compiled import chunk_compile_kwargs
from policydistill.policies.pi0 import Pi0Policy, preset

pytestmark = pytest.mark.usefixtures("one_thread")


def test_chunk_error_is_relative_rms_and_max_over_the_real_action_dims():
    ref = torch.zeros(1, 2, 3)
    ref[..., :2] = torch.tensor([[3.0, 4.0], [0.0, 0.0]])  # RMS over 4 values: sqrt(25 / 4) = 2.5
    out = ref.clone()
    out[0, 0, 0] += 0.5  # RMS of the difference: sqrt(0.25 / 4) = 0.25
    out[..., 2] = 100.0  # a padding dim: not a robot's action, not counted
    err = chunk_error(out, ref, action_dim=2)
    assert err["rel"] == pytest.approx(0.1) and err["max"] == pytest.approx(0.5)
    assert chunk_error(ref, ref, 2) == {"rel": 0.0, "max": 0.0}


@pytest.mark.parametrize(
    "name,want", [("bf16", "bfloat16"), ("BFloat16", "bfloat16"), ("fp16", "float16"), ("fp32", "float32")]
)
def test_dtype_names(name, want):
    assert dtype_name(name) == want


def test_sampler_integrates_reduced_precision_noise_in_float32():
    """bfloat16 noise: the model is asked at the float32 grid times (0.9, not bfloat16's 0.8984)
    and the state is not rounded to bfloat16 after every jump."""
    seen = []

    class Model:
        def flow(self, x, t, s, ctx):
            seen.append((x.dtype, t.clone()))
            return torch.full_like(x, 1e-3, dtype=torch.bfloat16)

    out = sample_with_ctx(Model(), torch.ones(1, 2, dtype=torch.bfloat16), None, 10, "diagonal")
    assert out.dtype == torch.float32 and [d for d, _ in seen] == [torch.float32] * 10
    assert torch.equal(torch.cat([t for _, t in seen]), torch.linspace(1.0, 0.0, 11)[:-1])
    # ten jumps of 0.1·f: in bfloat16 each would round back to 1.0 (its spacing there is 2^-7)
    f = torch.tensor(1e-3, dtype=torch.bfloat16).float()
    assert torch.allclose(out, 1 - f, atol=1e-6, rtol=0)


def test_bench_bf16_reports_each_chunks_error_against_float32():
    """Same weights, observation and noise: the bfloat16 chunks differ from the float32 ones by
    bfloat16 rounding — measurably (not zero: the cast really happened) and little."""
    result = run(
        BenchSettings(archs=("pi0",), sizes=("tiny",), repeats=1, warmup=0, threads=1, dtype="bf16"),
        log=lambda *_: None,
    )
    ref, row = result["rows"]  # the float32 reference is timed too, first
    assert ref["dtype"] == "float32" and "chunk10_err" not in ref and ref["chunk10_ms"] > 0
    assert row["dtype"] == "bfloat16" and result["settings"]["dtype"] == "bfloat16"
    assert row["params_M"] == ref["params_M"]
    for n in (1, 10):
        assert 1e-4 < row[f"chunk{n}_err"] < 0.02, row
        assert 0 < row[f"chunk{n}_err_max"] < 0.5
        assert row[f"chunk{n}_ms"] > 0
    fp32 = run(BenchSettings(archs=("pi0",), sizes=("tiny",), repeats=1, warmup=0, threads=1), log=lambda *_: None)
    assert "chunk10_err" not in fp32["rows"][0]  # the float32 eager row is the reference itself


@pytest.mark.parametrize(
    "change,message",
    [
        ({"dtype": "int8"}, "not an inference dtype"),
        ({"repeats": 0}, "repeats must be an integer >= 1"),
        ({"threads": 0}, "threads must be"),
        ({"device": "tpu"}, "cpu or cuda"),
        ({"sizes": ()}, "at least one"),
    ],
)
def test_bench_settings_are_checked_before_anything_is_built(change, message):
    with pytest.raises(ValueError, match=message):
        run(BenchSettings(**{"archs": ("pi0",), "sizes": ("tiny",), "threads": 1, **change}), log=lambda *_: None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_bench_policies_cli_refuses_cuda_without_a_gpu_and_unknown_dtypes():
    from policydistill.cli.app import app

    res = CliRunner().invoke(app, ["bench", "policies", "--device", "cuda", "--dtype", "bf16", "--sizes", "tiny"])
    assert res.exit_code == 2 and "no usable CUDA GPU" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["bench", "policies", "--dtype", "int8", "--sizes", "tiny"])
    assert res.exit_code == 2 and "not an inference dtype" in res.output
    with pytest.raises(ValueError, match="sees no CUDA GPU"):  # the library checks too
        run(BenchSettings(archs=("pi0",), sizes=("tiny",), device="cuda"), log=lambda *_: None)


@pytest.mark.skipif(not layers._ONEDNN, reason="this torch build has no oneDNN")
def test_linear_takes_onednn_only_for_float32_operands():
    """bfloat16 goes to ``F.linear`` (oneDNN's bfloat16 kernel inside torch, float32 accumulation)
    and agrees with float32 to bfloat16 rounding; a float32 input against bfloat16 weights gets
    F.linear's error naming both dtypes, not oneDNN's "could not create a primitive descriptor"."""
    from torch.profiler import profile

    torch.manual_seed(0)
    x, w, b = torch.randn(2, 64, 128), torch.randn(512, 128) / 11, torch.randn(512)
    assert x.numel() * w.shape[0] >= layers.ONEDNN_MIN_MACS
    with torch.no_grad():
        with profile() as prof:
            y16 = layers.linear(x.bfloat16(), w.bfloat16(), b.bfloat16())
        assert "mkldnn::_linear_pointwise" not in {e.key for e in prof.key_averages()}
        assert torch.equal(y16, F.linear(x.bfloat16(), w.bfloat16(), b.bfloat16()))
        y32 = layers.linear(x, w, b)
        assert (y16.float() - y32).abs().max() / y32.abs().max() < 2e-2
        with pytest.raises(RuntimeError, match="same dtype"):
            layers.linear(x, w.bfloat16(), b.bfloat16())


def test_bfloat16_policy_keeps_float32_normalisation_stats():
    """Cast to bfloat16, a policy still normalises with its float32 statistics: rounded to
    bfloat16, a mean of 100.3 becomes 100.5, 4 standard deviations off for a std of 0.05."""
    p = Pi0Policy(preset("tiny", "pi0", state_dim=4, action_dim=4))
    p.set_normalization(
        {
            "observation.state": {"mean": np.full(4, 100.3), "std": np.full(4, 0.05)},
            "action": {"mean": np.full(4, 100.3), "std": np.full(4, 0.05)},
        }
    )
    want = p.normalizer.normalize("state", torch.full((1, 4), 100.35))
    p = p.to(torch.bfloat16)
    assert p.normalizer.state_shift.dtype == torch.float32 and p.action_in_proj.weight.dtype == torch.bfloat16
    assert torch.equal(p.normalizer.normalize("state", torch.full((1, 4), 100.35)), want)
    assert torch.allclose(want, torch.ones(1, 4), atol=1e-3)
    assert p.normalizer.unnormalize("action", torch.zeros(1, 4)).sub(100.3).abs().max() < 1e-4


def test_chunk_program_selects_cuda_graphs_only_on_a_gpu():
    kw = {"fullgraph": True, "dynamic": False}
    assert chunk_compile_kwargs(kw, True) == {**kw, "mode": "reduce-overhead"}
    assert chunk_compile_kwargs(kw, False) == kw
    assert chunk_compile_kwargs({**kw, "mode": "max-autotune"}, True)["mode"] == "max-autotune"  # the caller's
    assert "mode" not in chunk_compile_kwargs({**kw, "backend": "aot_eager"}, True)  # inductor's mode only
    p = Pi0Policy(preset("tiny", "pi0")).eval().compile_for_inference(backend="aot_eager")
    assert p._compiled.graphs_for(torch.device("cuda")) and not p._compiled.graphs_for(torch.device("cpu"))
    torch._dynamo.reset()


def _compiled_chunk_matches_eager(backend: str) -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    p = Pi0Policy(preset("tiny", "pi0")).eval()
    obs = {
        "pixels": {
            c: np.full((1, p.config.image_size, p.config.image_size, 3), 90, np.uint8) for c in p.config.cameras
        },
        "agent_pos": np.zeros((1, p.config.state_dim), np.float32),
        "task": "push the puck",
    }
    noise = torch.randn(1, *p.sample_shape())
    with torch.inference_mode():
        cond = p.process(obs)
        want = p.sample_chunk(cond, noise, 1, "flowmap")
        p.compile_for_inference(backend=backend, cuda_graphs=True)  # forced: the GPU path, on the CPU
        first = p.sample_chunk(cond, noise, 1, "flowmap")
        second = p.sample_chunk(cond, noise + 1, 1, "flowmap")  # the first's output must survive it
    assert (first - want).abs().max() < 1e-5
    assert not torch.equal(first, second) and (first - want).abs().max() < 1e-5
    torch._dynamo.reset()


def test_compiled_chunk_with_cuda_graph_handling_matches_eager():
    """The 1-step student's chunk through the CUDA-graph path (new step marked, output copied out)."""
    _compiled_chunk_matches_eager("aot_eager")


@pytest.mark.slow
def test_compiled_chunk_in_reduce_overhead_mode_matches_eager():
    """The same with inductor's ``reduce-overhead`` mode (its CUDA graphs are skipped on a CPU)."""
    _compiled_chunk_matches_eager("inductor")


def test_bfloat16_policy_samples_from_unrounded_float32_noise():
    """``sample_actions`` hands a bfloat16 policy's sampler the caller's float32 noise as is (the
    sampler integrates in float32 and each step casts its input), not rounded to bfloat16 first."""
    torch.manual_seed(0)
    p = Pi0Policy(preset("tiny", "pi0")).eval().to(torch.bfloat16)
    obs = {
        "pixels": {
            c: np.full((1, p.config.image_size, p.config.image_size, 3), 90, np.uint8) for c in p.config.cameras
        },
        "agent_pos": np.zeros((1, p.config.state_dim), np.float32),
        "task": "push the puck",
    }
    noise = torch.randn(1, *p.sample_shape())
    with torch.no_grad():
        got = p.sample_actions(obs, steps=1, noise=noise)
        chunk = p.sample_chunk(p.process(obs), noise, 1, "diagonal")
    want = p.normalizer.unnormalize("action", chunk[..., : p.config.action_dim])
    assert chunk.dtype == torch.float32 and torch.equal(got, want)


def test_bench_policies_cli_prints_the_error_beside_the_time(tmp_path):
    import json

    from policydistill.cli.app import app

    out = tmp_path / "bench.json"
    args = ["bench", "policies", "--arch", "pi0", "--sizes", "tiny", "--dtype", "bf16", "--repeats", "1"]
    res = CliRunner().invoke(app, [*args, "--warmup", "0", "--threads", "1", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "err 10 vs fp32" in res.output and "bfloat16" in res.output and "ref" in res.output
    rows = json.loads(out.read_text())["rows"]
    assert [r["dtype"] for r in rows] == ["float32", "bfloat16"] and rows[1]["chunk10_err"] > 0
