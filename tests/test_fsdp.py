"""FSDP: two gloo processes launched by the real ``torchrun`` shard a tiny pi0 with FSDP2
(``TrainConfig.fsdp``) and end with the same weights as one unsharded process with the same global
batch (``micro_batches = 2``). Covered: flow matching with the loop's EMA, SnapFlow, MeanFlow (a
``torch.func.jvp`` through the sharded student) and Shortcut (a method keeping a sharded EMA copy
that runs without gradients). A checkpoint written under FSDP has the single-process format, and
``--resume`` re-shards it (bit for bit) or continues it on one unsharded process.

Tolerance: rtol 1e-5 / atol 1e-6 as for data parallelism (float summation order of the gradient
and of the clipping norm), except SigLIP's attention KEY biases. Softmax is invariant to a shift
of every key, so their true gradient is exactly 0 and what reaches them is rounding noise (~1e-9),
which Adam normalises into steps of up to lr: there the bound is lr·steps.

This file is also the worker: ``torchrun ... tests/test_fsdp.py OUT`` runs ``_worker``.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from policydistill.checkpoint import read_safetensors, write_json, write_safetensors
from policydistill.core.flowmap import FlowBatch, student_from_teacher
from policydistill.methods import make_method
from policydistill.policies.pi0.model import Pi0Policy, Pi05Policy
from policydistill.policies.smolvla import SmolVLA
from policydistill.train import distributed, fsdp
from policydistill.train.loop import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
METHODS = ["flow_matching", "snapflow", "meanflow", "shortcut"]
STEPS, BATCH, LR = 3, 8, 1e-3
ZERO_GRADIENT = "self_attn.k_proj.bias"  # SigLIP key biases: see the module docstring


class Windows:
    """Random pi0 training windows drawn from the step's generator (the loop seeds it)."""

    def __init__(self, policy: Pi0Policy) -> None:
        self.policy = policy

    def sample(self, batch_size: int, generator: torch.Generator) -> FlowBatch:
        b, g = batch_size, generator
        return self.policy.make_flow_batch(
            {
                "observation.images.corner2": torch.rand(b, 3, 32, 32, generator=g),
                "observation.state": torch.randn(b, 4, generator=g),
                "task": ["reach the goal"] * b,
                "action": torch.randn(b, 8, 3, generator=g),
                "action_is_pad": torch.zeros(b, 8, dtype=torch.bool),
            }
        )


def run_method(
    name: str,
    micro_batches: int,
    sharded: bool,
    steps: int = STEPS,
    out: Path | None = None,
    resume: bool = False,
    checkpoint_every: int = 0,
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Train a fresh tiny-pi0 student; returns the weights the method samples with (+ the loop's EMA)."""
    torch.manual_seed(0)
    teacher = Pi0Policy.from_preset("tiny").eval()
    student = student_from_teacher(teacher)
    method = make_method(name)
    cfg = TrainConfig(
        steps=steps,
        batch_size=BATCH,
        lr=LR,
        warmup_steps=1,
        seed=3,
        progress=False,
        micro_batches=micro_batches,
        fsdp=sharded,
        checkpoint_every=checkpoint_every,
        ema_decay=0.9 if name == "flow_matching" else 0.0,
    )
    result = train(
        student,
        method,
        Windows(student),
        cfg,
        teacher=teacher if method.needs_teacher else None,
        out_dir=out,
        resume=resume,
    )
    state = dict(method.sampling_model(result.model).state_dict())
    if result.ema is not None:
        state.update({f"ema.{k}": v for k, v in result.ema.state_dict().items()})
    assert not any(fsdp.is_sharded(v) for v in state.values()), "train() must hand back plain full modules"
    return state, [h["loss"] for h in result.history]


def _worker(out: Path) -> None:
    torch.set_num_threads(1)
    ctx = distributed.init_from_env()
    assert ctx.world_size == 2, ctx
    for name in METHODS:
        state, losses = run_method(name, micro_batches=0, sharded=True)  # 0 = one micro-batch per rank
        if ctx.is_main:
            write_safetensors(out / f"{name}.safetensors", state)
            write_json(out / f"{name}.json", {"losses": losses})
    # 4 steps with a checkpoint at 2 (and 4); then point latest.json back at step 2 and resume
    run = out / "run"
    full, _ = run_method("flow_matching", 0, True, steps=4, out=run, checkpoint_every=2)
    distributed.barrier()
    if ctx.is_main:
        write_json(run / "checkpoints" / "latest.json", {"step": 2, "folder": "step-00000002"})
    distributed.barrier()
    resumed, _ = run_method("flow_matching", 0, True, steps=4, out=run, resume=True, checkpoint_every=2)
    if ctx.is_main:
        write_safetensors(out / "full4.safetensors", full)
        write_safetensors(out / "resumed4.safetensors", resumed)
    distributed.shutdown()


def _assert_same_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], what: str) -> None:
    assert set(got) == set(want), what
    for k, v in want.items():
        if ZERO_GRADIENT in k and k.startswith(("vision.", "ema.vision.")):
            torch.testing.assert_close(got[k], v, rtol=0, atol=LR * 4, msg=f"{what}: {k}")
        else:
            torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6, msg=f"{what}: {k}")


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory: pytest.TempPathFactory, torchrun) -> Path:
    out = tmp_path_factory.mktemp("fsdp")
    torchrun(Path(__file__), out, 300)
    return out


def test_two_fsdp_gloo_processes_equal_one_process_same_global_batch(fsdp_run: Path) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    start = student_from_teacher(Pi0Policy.from_preset("tiny")).state_dict()
    for name in METHODS:
        single, single_losses = run_method(name, micro_batches=2, sharded=False)
        sharded = read_safetensors(fsdp_run / f"{name}.safetensors")
        losses = json.loads((fsdp_run / f"{name}.json").read_text())["losses"]
        assert losses == pytest.approx(single_losses, rel=1e-5, abs=1e-6), name
        assert max(float((sharded[k] - start[k]).abs().max()) for k in start) > 1e-3, f"{name}: nothing trained"
        _assert_same_weights(sharded, single, name)


def test_fsdp_checkpoint_has_the_single_process_format_and_resumes(fsdp_run: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    full = read_safetensors(fsdp_run / "full4.safetensors")
    # resuming under FSDP re-shards the full tensors: the same run, bit for bit
    resumed = read_safetensors(fsdp_run / "resumed4.safetensors")
    assert all(torch.equal(resumed[k], v) for k, v in full.items())
    # the files hold full tensors with the single-process keys, shapes and optimiser layout
    ckpt = fsdp_run / "run" / "checkpoints" / "step-00000002"
    single_run = tmp_path / "single"
    run_method("flow_matching", 2, False, steps=4, out=single_run, checkpoint_every=2)
    reference = single_run / "checkpoints" / "step-00000002"
    for file in ("model.safetensors", "training_state.safetensors"):
        got, want = read_safetensors(ckpt / file), read_safetensors(reference / file)
        assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in want.items()}, file
    skeleton = json.loads((ckpt / "training_state.json").read_text())["skeleton"]
    assert skeleton == json.loads((reference / "training_state.json").read_text())["skeleton"]
    # and one unsharded process continues the FSDP checkpoint to the same weights
    (tmp_path / "continue").mkdir()
    shutil.copytree(ckpt, tmp_path / "continue" / "checkpoints" / ckpt.name)
    write_json(tmp_path / "continue" / "checkpoints" / "latest.json", {"step": 2, "folder": ckpt.name})
    continued, _ = run_method(
        "flow_matching", 2, False, steps=4, out=tmp_path / "continue", resume=True, checkpoint_every=2
    )
    _assert_same_weights(continued, full, "unsharded resume of an FSDP checkpoint")


def _unit_params(model: torch.nn.Module) -> list[set[int]]:
    return [{id(p) for p in unit.module.parameters()} for unit in fsdp.units_of(model)]


@pytest.mark.parametrize("cls", [Pi0Policy, Pi05Policy, SmolVLA])
def test_units_are_the_call_sites_of_every_layer(cls: type) -> None:
    with torch.device("meta"):  # the full-size model, without allocating its weights
        model = cls.from_preset("full")
    units = fsdp.units_of(model)
    modules = {id(u.module) for u in units}
    assert all(id(layer) in modules for layer in model.vision.encoder.layers)
    assert id(model.embed_tokens) in modules
    if cls is SmolVLA:
        layers = [*model.vlm_layers, *model.expert_layers]
        parts = [
            (lay.self_attn.q_proj, lay.self_attn.k_proj, lay.self_attn.v_proj, lay.self_attn.o_proj, lay.mlp)
            for lay in layers
        ]
    else:
        layers = [*model.vlm.layers, *model.expert.layers]
        parts = [(lay.self_attn.o_proj, lay.self_attn, lay.mlp) for lay in layers]
        attention = [u for u in units if u.module is layers[0].self_attn]
        assert attention[0].methods == ("qkv", "kv")  # kv() reads qkv_proj.weight outside any forward
    assert all(id(m) in modules for group in parts for m in group)
    if cls is Pi05Policy:  # adaRMS modulation layers of the expert are units too
        assert id(model.expert.layers[0].input_layernorm.dense) in modules
    # the root (norms, small projections, target-time branch; gathered for all of encode / flow) holds
    # a sliver of the weights: pi0 6.4 M of 3.24 B in 137 units, SmolVLA 4.1 M of 404 M in 174 units
    in_units = set().union(*_unit_params(model))
    root = sum(p.numel() for p in model.parameters() if id(p) not in in_units)
    assert root < 0.02 * sum(p.numel() for p in model.parameters())


def test_fsdp_refuses_to_start_without_torchrun_or_with_a_double_backward_jvp() -> None:
    with pytest.raises(ValueError, match="jvp=fd"):
        fsdp.check_ready(make_method("lsd"))
    with pytest.raises(RuntimeError, match="torchrun"):  # finite differences pass the method check
        fsdp.check_ready(make_method("lsd", jvp="fd"))
    with pytest.raises(RuntimeError, match="torchrun"):
        run_method("snapflow", micro_batches=1, sharded=True)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
