"""Distributed training: two gloo processes launched by the real ``torchrun`` train a
tiny MLPFlowMap and end with the same weights as one process with the same global batch.

With ``micro_batches = 2`` the global batch of a step is two seeded micro-batches; one process
computes both (gradient accumulation), two processes compute one each and sum their gradients
by hand — also for MeanFlow and LSD, whose ``torch.func.jvp`` would bypass a DDP wrapper.

This file is also the worker: ``torchrun ... tests/test_distributed.py OUT`` runs ``_worker``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from policydistill.checkpoint import read_safetensors, write_json, write_safetensors
from policydistill.core import FlowBatch
from policydistill.methods import make_method
from policydistill.models.mlp import MLPFlowMap
from policydistill.train import distributed
from policydistill.train.loop import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
# the default (snapflow: teacher + plain autograd) and two JVP methods (meanflow, lsd)
METHODS = ["snapflow", "meanflow", "lsd"]
STEPS, BATCH = 5, 32


class TwoModes:
    def sample(self, batch_size: int, generator: torch.Generator) -> FlowBatch:
        modes = torch.tensor([[1.5, 1.0], [-1.5, -1.0]])
        which = torch.randint(0, 2, (batch_size,), generator=generator)
        return FlowBatch(modes[which] + 0.1 * torch.randn(batch_size, 2, generator=generator))


def _model(seed: int) -> MLPFlowMap:
    torch.manual_seed(seed)
    return MLPFlowMap(sample_shape=(2,), width=32, depth=2, time_dim=16)


def run_method(name: str, micro_batches: int) -> tuple[dict[str, torch.Tensor], list[float]]:
    teacher = _model(99).eval().requires_grad_(False) if name == "snapflow" else None
    student = _model(1)
    if teacher is not None:
        student.load_state_dict(teacher.state_dict())
    cfg = TrainConfig(
        steps=STEPS, batch_size=BATCH, lr=3e-3, warmup_steps=1, seed=3, progress=False, micro_batches=micro_batches
    )
    result = train(student, make_method(name), TwoModes(), cfg, teacher=teacher)
    return result.model.state_dict(), [h["loss"] for h in result.history]


def _worker(out: Path) -> None:
    torch.set_num_threads(1)
    ctx = distributed.init_from_env()
    assert ctx.world_size == 2, ctx
    for name in METHODS:
        state, losses = run_method(name, micro_batches=0)  # 0 = one micro-batch per rank
        if ctx.is_main:
            write_safetensors(out / f"{name}.safetensors", state)
            write_json(out / f"{name}.json", {"losses": losses, "world_size": ctx.world_size})
    distributed.shutdown()


def test_two_gloo_processes_equal_one_process_same_global_batch(tmp_path: Path, torchrun) -> None:
    torchrun(Path(__file__), tmp_path, 120)
    torch.set_num_threads(1)
    for name in METHODS:
        single, single_losses = run_method(name, micro_batches=2)
        dist_state = read_safetensors(tmp_path / f"{name}.safetensors")
        dist_losses = json.loads((tmp_path / f"{name}.json").read_text())["losses"]
        assert dist_losses == pytest.approx(single_losses, rel=1e-5, abs=1e-6), name
        moved = (
            max(
                float((single[k] - _model(1).state_dict()[k]).abs().max())
                for k in single
                if k in _model(1).state_dict()
            )
            if name != "snapflow"
            else 1.0
        )
        assert moved > 1e-4, f"{name}: training did not move the weights"
        for k, v in single.items():
            torch.testing.assert_close(dist_state[k], v, rtol=1e-5, atol=1e-6, msg=f"{name}: {k}")


def test_micro_batch_split_rules() -> None:
    assert distributed.resolve_micro_batches(32, 0, 1) == 1
    assert distributed.resolve_micro_batches(32, 0, 4) == 4
    assert distributed.my_micro_batches(4, distributed.DistContext(rank=1, world_size=2)) == [1, 3]
    with pytest.raises(ValueError, match="multiple of 2"):
        distributed.resolve_micro_batches(32, 3, 2)
    with pytest.raises(ValueError, match="not divisible"):
        distributed.resolve_micro_batches(30, 4, 1)


def test_gradient_accumulation_matches_plain_step_on_one_process() -> None:
    """micro_batches=1 keeps the old single-batch step (bit for bit); 2 micro-batches of a mean
    loss are a different (but valid) draw of the same global batch size."""
    a, _ = run_method("flow_matching", micro_batches=1)
    b, _ = run_method("flow_matching", micro_batches=1)
    assert all(torch.equal(a[k], b[k]) for k in a)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))


@pytest.mark.sim
def test_sharded_evaluation_merges_to_the_single_process_report() -> None:
    """Episodes split over 2 ranks (rank/world_size of EvalConfig, as under torchrun) and merged
    with merge_results give the same report as one process on the same seeds."""
    import dataclasses

    from policydistill.eval import EvalConfig, ScriptedPolicy, evaluate_policy, merge_results

    # the scripted expert acts on the state: its successes and episode lengths depend on the initial states
    cfg = EvalConfig(
        tasks="metaworld/reach-v3", episodes=4, workers=0, image_size=32, max_episode_steps=60, progress=False, seed=4
    )
    single = evaluate_policy(ScriptedPolicy(multimodal=False, seed=0), cfg)
    assert single["success_rate"] > 0
    shards = [
        evaluate_policy(ScriptedPolicy(multimodal=False, seed=0), dataclasses.replace(cfg, rank=r, world_size=2))
        for r in (0, 1)
    ]
    assert [len(s["episodes_detail"]) for s in shards] == [2, 2]
    assert distributed.all_gather_objects(single) == [single]
    merged = merge_results(shards)
    timing = {"seconds", "steps_per_second", "config", "policy_calls"}
    assert {k: v for k, v in merged.items() if k not in timing} == {k: v for k, v in single.items() if k not in timing}
    assert [e["initial_state"] for e in merged["episodes_detail"]] == [
        e["initial_state"] for e in single["episodes_detail"]
    ]
    assert distributed.context().world_size == 1  # evaluate_sharded = evaluate_policy outside torchrun
