"""Method-specific checks for consistency distillation, consistency training, progressive
distillation and reflow (the shared contract lives in test_methods_contract.py)."""

from __future__ import annotations

import pytest
import torch

from policydistill.bench.gaussian import ExactGaussianFlowMap, make_wide_gaussian
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
    """From round 1 on, part of the batch keeps training the EARLIER step counts, split evenly
    between them, round 0's count (N/2) first; without the term a later round overwrites them."""
    teacher = AnalyticGMMTeacher(make_mixture(2))
    student = tiny()
    method = make_method("progressive_distillation", teacher_steps=8)
    method.setup(student, teacher, 30)
    assert method.levels(0, 8).tolist() == [0] * 8
    assert method.levels(2, 8).tolist() == [0, 1, 2, 2, 2, 2, 2, 2]  # 1/4 of 8 kept, rounds 0 and 1
    batch = MixtureData(make_mixture(2)).sample(64, torch.Generator().manual_seed(0))
    _, metrics = method.loss(student, teacher, batch, 15)
    assert metrics["student_steps"] == 2.0 and "keep_loss" in metrics
    _, metrics = method.loss(student, teacher, batch, 0)  # round 0 has no earlier count to keep
    assert "keep_loss" not in metrics
    none = make_method("progressive_distillation", teacher_steps=8, keep_fraction=0.0)
    none.setup(student, teacher, 30)
    assert "keep_loss" not in none.loss(student, teacher, batch, 15)[1]


class _LostLongJumps(ExactGaussianFlowMap):
    """The exact Gaussian flow map, except that jumps longer than 0.3 are off by 0.5: a round
    teacher that lost the 2-step count (as later rounds of progressive distillation did)."""

    def flow(self, x_t, t, s, ctx):
        return super().flow(x_t, t, s, ctx) + 0.5 * ((t - s) > 0.3).to(x_t.dtype).reshape(-1, 1)


def test_progressive_distillation_trains_earlier_counts_on_their_own_targets():
    """The earlier counts are regressed on their ORIGINAL targets (two half-size steps: of the
    velocity teacher for N/2 steps, of the round teacher's shorter jumps below), not on the round
    teacher's own jump at that count: copying that jump only preserves, and its error grew from
    round to round. An exact student in the last round (8 → 4 → 2 → 1) with a round teacher whose
    long jumps are wrong: the 2- and 4-step samples' targets are still (nearly) exact."""
    mix = make_wide_gaussian(4)
    mean, std = mix.means[0], mix.stds[0]
    exact = ExactGaussianFlowMap(mean, std)
    method = make_method("progressive_distillation", teacher_steps=8, teacher_solver="heun", keep_fraction=0.5)
    method.setup(exact, AnalyticGMMTeacher(mix), 30)
    method.round_teacher = _LostLongJumps(mean, std)
    batch = MixtureData(mix).sample(512, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    _, metrics = method.loss(exact, AnalyticGMMTeacher(mix), batch, 29)
    assert metrics["student_steps"] == 1.0
    # the 1-step samples learn from the round teacher's two (wrong) half jumps, the kept ones do not
    assert metrics["pd_loss"] > 0.2
    assert metrics["keep_loss"] < 1e-3, metrics


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
