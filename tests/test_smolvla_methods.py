"""Every registered distillation method runs on SmolVLA unchanged (it sees only the flow-map
contract): one step on a tiny SmolVLA gives a finite loss whose gradient reaches the expert, and the
method's sampler works at 1 and 2 NFE."""

from __future__ import annotations

import pytest
import torch

from policydistill.core import sample
from policydistill.core.flowmap import student_from_teacher
from policydistill.methods import METHODS, make_method
from policydistill.policies.smolvla import SmolVLA

pytestmark = pytest.mark.usefixtures("one_thread")


def window(b: int) -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "observation.images.base": torch.rand(b, 3, 32, 32, generator=g),
        "observation.images.wrist": torch.rand(b, 3, 32, 32, generator=g),
        "observation.state": torch.randn(b, 4, generator=g),
        "task": ["pick the cube"] * b,
        "action": torch.randn(b, 8, 3, generator=g),
        "action_is_pad": torch.zeros(b, 8, dtype=torch.bool),
    }


# The default (SnapFlow) and the teacher's objective run by default; every other method is slow-marked
# (several forward passes, JVPs) and runs with PD_RUN_SLOW=1 / -m slow.
FAST = ("flow_matching", "snapflow")


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in METHODS])
def test_method_runs_on_smolvla(name: str) -> None:
    torch.manual_seed(0)
    teacher = SmolVLA.from_preset("tiny").eval()
    student = student_from_teacher(teacher)
    try:
        method = make_method(name)
    except ModuleNotFoundError as exc:  # registered, file still being written by its owner
        pytest.skip(f"method {name} is registered but not importable yet: {exc}")
    method.setup(student, teacher if method.needs_teacher else None, total_steps=10)
    batch = student.make_flow_batch(window(4))
    loss, metrics = method.loss(student, teacher if method.needs_teacher else None, batch, 0)
    assert torch.isfinite(loss), metrics
    loss.backward()
    grads = [p.grad for p in student.expert_layers.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    model = method.sampling_model(student).eval()
    for nfe in (1, 2):
        x = sample(model, torch.randn(4, 8, 8), batch.cond, steps=nfe, mode=method.sampling)
        assert x.shape == (4, 8, 8) and torch.isfinite(x).all()
