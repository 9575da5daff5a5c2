"""Method-specific checks for consistency distillation, consistency training, progressive
distillation and reflow (the shared contract lives in test_methods_contract.py)."""

from __future__ import annotations

import pytest
import torch

from policydistill.bench.mixture import AnalyticGMMTeacher, MixtureData, make_mixture
from policydistill.core import FlowBatch, sample
from policydistill.methods import make_method
from policydistill.methods.consistency_distillation import consistency_function
from policydistill.methods.consistency_training import karras_sigmas
from policydistill.models.mlp import MLPFlowMap

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(dim: int = 2) -> MLPFlowMap:
    return MLPFlowMap(sample_shape=(dim,), width=16, depth=1, time_dim=8)


def test_consistency_function_meets_the_boundary_condition():
    model = tiny()
    x = torch.randn(5, 2)
    zero = torch.zeros(5)
    torch.testing.assert_close(consistency_function(model, x, zero, None), x, rtol=0, atol=0)
    # and the consistency sampler's one step to s = 0 is that function
    t = torch.ones(5)
    torch.testing.assert_close(sample(model, x, None, 1, "consistency"), consistency_function(model, x, t, None))


def test_consistency_distillation_target_net_follows_by_ema():
    teacher = AnalyticGMMTeacher(make_mixture(2))
    student = tiny()
    method = make_method("consistency_distillation", target_ema=0.5)
    method.setup(student, teacher, 10)
    before = [p.clone() for p in method.target_net.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    method.after_step(student, 0)
    for b, p in zip(before, method.target_net.parameters()):
        torch.testing.assert_close(p, b + 0.5)
    loss, _ = method.loss(student, teacher, MixtureData(make_mixture(2)).sample(16, torch.Generator()), 0)
    assert torch.isfinite(loss) and loss.requires_grad


def test_ict_curriculum_and_levels():
    method = make_method("consistency_training")
    method.setup(tiny(), None, 1000)
    # K' = 1000 // (log2(1280/10) + 1) = 125: N doubles every 125 steps from 10 + 1 to 1280 + 1
    assert [method.n_levels(k) for k in (0, 124, 125, 250, 999)] == [11, 11, 21, 41, 1281]
    t, sigmas, probs = method.levels(0)
    assert len(t) == 11 and t[-1] == 1.0 and torch.all(t[1:] > t[:-1])
    torch.testing.assert_close(sigmas, karras_sigmas(11, 0.002, 80.0, 7.0))
    assert abs(float(probs.sum()) - 1.0) < 1e-12 and len(probs) == 10
    # the log-normal weights (P_mean = −1.1) favour mid-low noise over the extremes
    assert probs.argmax() not in (0, len(probs) - 1)


def test_progressive_distillation_halves_steps_and_hands_over_the_teacher():
    teacher = AnalyticGMMTeacher(make_mixture(2))
    student = tiny()
    method = make_method("progressive_distillation", teacher_steps=8)
    method.setup(student, teacher, 30)
    assert [method.student_steps(method.round_of(k)) for k in (0, 9, 10, 19, 20, 29)] == [4, 4, 2, 2, 1, 1]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.25)
    method.after_step(student, 8)  # not a boundary: the round teacher is untouched
    assert not torch.equal(method.round_teacher.inp.weight, student.inp.weight)
    method.after_step(student, 9)  # step 9 → 10 changes round
    assert torch.equal(method.round_teacher.inp.weight, student.inp.weight)
    batch = MixtureData(make_mixture(2)).sample(16, torch.Generator())
    _, metrics = method.loss(student, teacher, batch, 25)
    assert metrics["student_steps"] == 1.0


def test_progressive_distillation_keeps_the_step_counts_of_earlier_rounds():
    """From round 1 on, part of the batch regresses the student's jumps at EARLIER step sizes on
    the round teacher's: a student equal to its round teacher has zero keep loss, one whose
    jumps of an earlier size moved does not (without the term a later round overwrites them)."""
    teacher = AnalyticGMMTeacher(make_mixture(2))
    student = tiny()
    method = make_method("progressive_distillation", teacher_steps=8)
    method.setup(student, teacher, 30)
    method.after_step(student, 9)  # round 1: the round teacher is a copy of the student
    batch = MixtureData(make_mixture(2)).sample(64, torch.Generator().manual_seed(0))
    _, metrics = method.loss(student, teacher, batch, 15)
    assert metrics["student_steps"] == 2.0 and metrics["keep_loss"] < 1e-12
    with torch.no_grad():
        student.out.bias.add_(0.5)
    _, metrics = method.loss(student, teacher, batch, 15)
    assert metrics["keep_loss"] == pytest.approx(0.25, rel=1e-4)
    _, metrics = method.loss(student, teacher, batch, 0)  # round 0 has no earlier count to keep
    assert "keep_loss" not in metrics
    none = make_method("progressive_distillation", teacher_steps=8, keep_fraction=0.0)
    none.setup(student, teacher, 30)
    assert "keep_loss" not in none.loss(student, teacher, batch, 15)[1]


def test_reflow_fills_a_fixed_buffer_of_teacher_pairs_and_restores_it():
    mix = make_mixture(2)
    teacher = AnalyticGMMTeacher(mix)
    data = MixtureData(mix)
    method = make_method("reflow", buffer_size=40, teacher_steps=4)
    student = tiny()
    method.setup(student, teacher, 10)
    g = torch.Generator().manual_seed(0)
    for step in range(4):
        method.loss(student, teacher, data.sample(16, g), step)
    assert method.filled == 40
    # each stored sample is the teacher's 4-step Euler map of its stored noise
    torch.testing.assert_close(method.pair_data, sample(teacher, method.pair_noise, None, 4, "diagonal"))
    frozen = method.pair_noise.clone()
    method.loss(student, teacher, data.sample(16, g), 5)
    assert torch.equal(method.pair_noise, frozen)
    fresh = make_method("reflow", buffer_size=40, teacher_steps=4)
    fresh.load_state_dict(method.state_dict())
    assert fresh.filled == 40 and torch.equal(fresh.pair_data, method.pair_data)


def test_reflow_keeps_tensor_conditioning_with_its_pairs():
    teacher = MLPFlowMap(sample_shape=(2,), cond_dim=3, width=16, depth=1, time_dim=8).eval()
    student = MLPFlowMap(sample_shape=(2,), cond_dim=3, width=16, depth=1, time_dim=8)
    method = make_method("reflow", buffer_size=8, teacher_steps=2)
    method.setup(student, teacher, 4)
    cond = torch.randn(8, 3)
    method.loss(student, teacher, FlowBatch(torch.randn(8, 2), cond), 0)
    assert torch.equal(method.pair_cond, cond)
    loss, _ = method.loss(student, teacher, FlowBatch(torch.randn(8, 2), torch.randn(8, 3)), 1)
    assert torch.isfinite(loss)
