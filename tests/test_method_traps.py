"""What an outside user of the API can get wrong is refused loudly or made impossible: a model
without a target-time branch, a student whose branch is frozen, a sampling mode forgotten after
training, a teacher silently switching a method's variant."""

from __future__ import annotations

import copy

import pytest
import torch

from policydistill.checkpoint import load_model, save_model
from policydistill.core import FlowBatch, FlowMapModel, sample, student_from_teacher
from policydistill.methods import METHODS, make_method, method_table
from policydistill.models.mlp import MLPFlowMap, MLPFlowMapConfig
from policydistill.train import TrainConfig, train


class Gaussian:
    def sample(self, batch_size: int, generator: torch.Generator) -> FlowBatch:
        return FlowBatch(torch.randn(batch_size, 3, generator=generator) * 0.5 + 1.0)


def _mlp() -> MLPFlowMap:
    torch.manual_seed(0)
    return MLPFlowMap(MLPFlowMapConfig(sample_shape=(3,), width=16, depth=1, time_dim=8))


def _cfg(steps: int = 3) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=16, progress=False, handle_signals=False, warmup_steps=1)


class NoBranch(FlowMapModel):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 3)

    def flow(self, x_t, t, s, ctx):
        return self.lin(x_t)


def test_train_refuses_a_model_without_a_target_time_branch():
    with pytest.raises(TypeError, match="TargetTimeEmbedding named `target_time`"):
        train(NoBranch(), make_method("flow_matching"), Gaussian(), _cfg())


def test_a_deepcopied_teacher_with_a_frozen_branch_is_refused_by_off_diagonal_methods():
    teacher = train(_mlp(), make_method("flow_matching"), Gaussian(), _cfg()).model
    assert not any(p.requires_grad for p in teacher.target_time.parameters())
    with pytest.raises(ValueError, match="student_from_teacher"):
        train(copy.deepcopy(teacher), make_method("psd"), Gaussian(), _cfg())
    # the documented way works, and diagonal-only methods accept the frozen branch
    train(student_from_teacher(teacher), make_method("psd"), Gaussian(), _cfg(1))
    train(copy.deepcopy(teacher), make_method("reflow", buffer_size=16), Gaussian(), _cfg(1), teacher=teacher)


def test_trained_model_keeps_its_sampling_mode_through_a_checkpoint(tmp_path):
    teacher = train(_mlp(), make_method("flow_matching"), Gaussian(), _cfg()).model
    assert teacher.sampling_mode == "diagonal"
    student = train(student_from_teacher(teacher), make_method("consistency_training"), Gaussian(), _cfg(2)).model
    assert student.sampling_mode == "consistency"
    save_model(tmp_path / "s", student)
    loaded = load_model(tmp_path / "s")
    assert loaded.sampling_mode == "consistency"
    noise = torch.randn(5, 3)
    # by default sample() uses the stored mode: the same as asking for it explicitly
    torch.manual_seed(3)
    default = sample(loaded, noise, steps=2)
    torch.manual_seed(3)
    torch.testing.assert_close(default, sample(loaded, noise, steps=2, mode="consistency"))
    torch.manual_seed(3)
    assert not torch.allclose(default, sample(loaded, noise, steps=2, mode="flowmap"))


def test_teacher_variants_are_an_explicit_listed_option():
    rows = {r["name"]: r for r in method_table()}
    for name in ("shortcut", "meanflow", "lsd", "psd"):
        assert rows[name]["teacher"].startswith("optional"), rows[name]
    for name in ("snapflow", "consistency_training"):
        assert rows[name]["teacher"] == "not used"
    for name in ("consistency_distillation", "progressive_distillation", "reflow"):
        assert rows[name]["teacher"] == "required"
    # use_teacher=False: a given teacher changes nothing
    teacher = _mlp()
    for name in ("shortcut", "meanflow", "lsd", "psd"):
        losses = []
        for t in (None, teacher):
            model = _mlp()
            method = make_method(name, use_teacher=False)
            method.setup(model, t, 10)
            torch.manual_seed(1)
            loss, _ = method.loss(model, t, Gaussian().sample(16, torch.Generator().manual_seed(0)), 0)
            losses.append(float(loss))
        assert losses[0] == losses[1], name
    assert all(METHODS.load(n).needs_teacher is False for n in ("shortcut", "meanflow", "lsd", "psd"))
