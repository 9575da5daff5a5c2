"""--train expert: the frozen vision-language prefix is declared by the model, held once by the
teacher, the student and every copy of them, and encoded once per training step."""

from __future__ import annotations

import pytest
import torch

from policydistill.core import SharedPrefix, copy_model, share_prefix, student_from_teacher, tree_cat, tree_slice
from policydistill.core.flowmap import FlowBatch
from policydistill.methods import make_method
from policydistill.policies.pi0 import Pi0Policy, preset
from policydistill.policies.smolvla.model import SmolVLA
from policydistill.train import TrainConfig, train

ARCHS = ["pi0", "pi05", "smolvla"]


def _policy(arch: str):
    torch.manual_seed(0)
    if arch == "smolvla":
        return SmolVLA.from_preset("tiny").eval()
    return Pi0Policy(preset("tiny", arch, cameras=["corner2"])).eval()


class Windows:
    """Random training windows of the policy's shapes (a DataSource)."""

    def __init__(self, policy) -> None:
        self.policy = policy

    def sample(self, batch_size: int, generator: torch.Generator) -> FlowBatch:
        cfg = self.policy.config
        size = cfg.image_size
        words = ["pick", "up", "the", "red", "cube", "open", "drawer"]
        n = torch.randint(1, 6, (batch_size,), generator=generator).tolist()
        window = {
            f"observation.images.{cfg.cameras[0]}": torch.rand(batch_size, 3, size, size, generator=generator),
            "observation.state": torch.randn(batch_size, cfg.state_dim, generator=generator),
            "action": torch.randn(batch_size, cfg.chunk_size, cfg.action_dim, generator=generator),
            "task": [" ".join(words[:k]) for k in n],  # prompts of different lengths: padded tokens
        }
        return self.policy.make_flow_batch(window)


def _cfg(steps: int = 2, **kw) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=4, lr=1e-3, warmup_steps=0, progress=False, handle_signals=False, **kw)


def _frozen_ptrs(model) -> dict[str, int]:
    names = set(model.shared_frozen)
    return {n: p.data_ptr() for n, p in model.named_parameters() if any(n == m or n.startswith(m + ".") for m in names)}


@pytest.mark.parametrize("arch", ARCHS)
def test_expert_mode_freezes_the_prefix_and_trains_the_rest(arch):
    teacher = _policy(arch)
    student = student_from_teacher(teacher, "expert")
    frozen = {n for n, p in student.named_parameters() if not p.requires_grad}
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    prefix = ("vision.", "embed_tokens.", "vlm")
    assert frozen and all(n.startswith(prefix + ("projector.", "connector.", "state_proj.")) for n in frozen)
    assert any(n.startswith("vision.") for n in frozen) and any(n.startswith("vlm") for n in frozen)
    assert any(n.startswith("target_time.") for n in trainable) and any(
        n.startswith("action_in_proj") for n in trainable
    )
    assert any(n.startswith("expert") for n in trainable)
    if arch == "pi0":
        assert "state_proj.weight" in trainable  # pi0's state token runs through the expert, not the VLM
    # --train all: today's behaviour, every weight trains and nothing is shared
    everything = student_from_teacher(_policy(arch), "all")
    assert all(p.requires_grad for p in everything.parameters()) and not everything.shared_frozen


def test_models_without_a_prefix_refuse_expert_mode():
    from policydistill.models.mlp import MLPFlowMap

    with pytest.raises(ValueError, match="--train all"):
        student_from_teacher(MLPFlowMap(sample_shape=(2,), width=16, depth=1), "expert")
    with pytest.raises(ValueError, match="training mode"):
        student_from_teacher(_policy("pi0"), "vlm")


@pytest.mark.parametrize("method", ["shortcut", "progressive_distillation", "consistency_distillation"])
def test_one_copy_of_the_frozen_prefix_across_teacher_student_ema_and_method_copies(method):
    teacher = _policy("pi0")
    student = student_from_teacher(teacher, "expert")
    m = make_method(method)
    result = train(student, m, Windows(student), _cfg(1, ema_decay=0.9), teacher=teacher)
    copies = [result.model, result.ema] + [c for c in m.children() if hasattr(c, "shared_frozen")]
    assert len(copies) == 3
    want = _frozen_ptrs(teacher)
    assert want and all(_frozen_ptrs(c) == want for c in copies)
    # the trainable part is each copy's own
    trainable = {p.data_ptr() for p in result.model.parameters() if p.requires_grad}
    assert not trainable & {p.data_ptr() for p in result.ema.parameters()}

    # unique parameter storage = one prefix + one expert per model
    def nbytes(models):
        seen = {}
        for mod in models:
            for p in mod.parameters():
                seen[p.data_ptr()] = p.numel() * p.element_size()
        return sum(seen.values())

    prefix = sum(p.numel() * p.element_size() for p in teacher.parameters() if p.data_ptr() in set(want.values()))
    one = nbytes([teacher])
    assert nbytes([teacher, *copies]) == one + 3 * (one - prefix)


def test_copy_model_does_not_grow_memory_by_the_prefix():
    """RSS grows by the trainable part per copy, not by the (much larger) frozen prefix."""
    torch.manual_seed(0)
    teacher = Pi0Policy(preset("tiny", "pi0", vlm_width=512, vlm_mlp_dim=2048, vision_width=256, vision_mlp_dim=1024))
    student = student_from_teacher(teacher, "expert")
    prefix = sum(p.numel() * 4 for p in student.parameters() if not p.requires_grad)
    rest = sum(p.numel() * 4 for p in student.parameters() if p.requires_grad)
    assert prefix > 10 * rest and prefix > 20e6

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    before = rss()
    copies = [copy_model(student) for _ in range(4)]
    grown = rss() - before
    assert grown < prefix, f"4 copies grew RSS by {grown / 1e6:.1f} MB; the prefix alone is {prefix / 1e6:.1f} MB"
    assert all(c.vlm is student.vlm and c.expert is not student.expert for c in copies)


class Counter:
    def __init__(self, module) -> None:
        self.calls = 0
        module.register_forward_hook(self._hook)

    def _hook(self, *args) -> None:
        self.calls += 1


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", ["snapflow", "shortcut", "consistency_distillation", "meanflow"])
def test_prefix_encoded_once_per_step(arch, method):
    """Every flow call of a step — student, teacher, EMA target — reuses one prefix pass; with
    --train all each of them encodes for itself (today's behaviour)."""
    steps = 2
    counts = {}
    for mode in ("expert", "all"):
        teacher = _policy(arch)
        student = student_from_teacher(teacher, mode)
        hooks = [Counter(teacher.embed_tokens)] + ([] if mode == "expert" else [Counter(student.embed_tokens)])
        m = make_method(method)
        m.setup(student, teacher, steps)
        for c in m.children():
            if hasattr(c, "embed_tokens") and c.embed_tokens not in (teacher.embed_tokens, student.embed_tokens):
                hooks.append(Counter(c.embed_tokens))
        for step in range(steps):
            batch = Windows(student).sample(4, torch.Generator().manual_seed(step))
            batch.cond = share_prefix(student, batch.cond)
            loss, _ = m.loss(student, teacher, batch, step)
            loss.backward()
        counts[mode] = sum(h.calls for h in hooks)
    assert counts["expert"] == steps
    assert counts["all"] > steps


@pytest.mark.parametrize("arch", ARCHS)
def test_shared_prefix_gives_the_same_loss_and_gradients(arch):
    teacher = _policy(arch)
    student = student_from_teacher(teacher, "expert")
    with torch.no_grad():
        student.target_time.fc2.weight.normal_(0, 0.1)  # off-diagonal answers differ from the teacher's
    batch = Windows(student).sample(4, torch.Generator().manual_seed(0))
    results = []
    for cond in (batch.cond, share_prefix(student, batch.cond)):
        student.zero_grad()
        m = make_method("shortcut")
        m.setup(student, teacher, 10)
        torch.manual_seed(3)
        loss, _ = m.loss(student, teacher, FlowBatch(batch.data, cond, batch.mask), 0)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in student.parameters() if p.requires_grad]))
    (l0, g0), (l1, g1) = results
    assert torch.allclose(l0, l1, rtol=1e-5, atol=1e-7)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(g0, g1))
    assert all(p.grad is None for p in student.parameters() if not p.requires_grad)


def test_a_model_with_another_prefix_never_accepts_it():
    a = student_from_teacher(_policy("pi0"), "expert")
    other = student_from_teacher(_policy("pi0"), "expert")  # equal weights, different modules
    with torch.no_grad():
        other.vlm.layers[0].mlp.down_proj.weight.mul_(2.0)
    cond = Windows(a).sample(2, torch.Generator().manual_seed(0)).cond
    shared = share_prefix(a, cond)
    assert shared.frozen_for(other) is None and shared.frozen_for(a) is not None
    x, t = torch.randn(2, *a.sample_shape()), torch.tensor([0.7, 0.2])
    with torch.no_grad():
        assert torch.equal(other.flow(x, t, t, other.encode(shared)), other.flow(x, t, t, other.encode(cond)))
    # a model trained with --train all shares nothing: no wrapping at all
    everything = student_from_teacher(_policy("pi0"), "all")
    assert share_prefix(everything, cond) is cond


def test_shared_prefix_slices_and_joins_like_its_conditioning():
    student = student_from_teacher(_policy("pi05"), "expert")
    cond = Windows(student).sample(4, torch.Generator().manual_seed(0)).cond
    shared = share_prefix(student, cond)
    part = tree_slice(shared, slice(1, 3), 4)
    assert isinstance(part, SharedPrefix) and part.frozen.keys[0].shape[0] == 2
    assert torch.equal(part.cond["state"], cond["state"][1:3])
    joined = tree_cat([part, tree_slice(shared, slice(0, 1), 4)])  # a pair buffer keeps raw observations
    assert isinstance(joined, dict) and joined["state"].shape[0] == 3
    again = tree_cat([joined, tree_slice(shared, slice(3, 4), 4)])  # raw and wrapped parts side by side
    assert isinstance(again, dict) and torch.equal(again["state"][-1], cond["state"][3])


def test_reflow_fills_its_pair_buffer_over_several_steps_in_expert_mode():
    teacher = _policy("pi0")
    student = student_from_teacher(teacher, "expert")
    m = make_method("reflow", buffer_size=12)
    result = train(student, m, Windows(student), _cfg(5), teacher=teacher)  # 3 fills, then 2 steady steps
    assert m.filled == 12 and isinstance(m._cond, dict) and len(result.history) == 5


def test_frozen_prefix_is_unchanged_by_training_and_the_rest_learns():
    teacher = _policy("pi0")
    student = student_from_teacher(teacher, "expert")
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    result = train(student, make_method("snapflow"), Windows(student), _cfg(2), teacher=teacher)
    after = dict(result.model.named_parameters())
    for name, p in after.items():
        changed = not torch.equal(p, before[name])
        assert changed == p.requires_grad or "target_time.fc1" in name, name


def test_frozen_prefix_stored_in_bf16_computes_in_float32_and_saves_plain(tmp_path):
    from policydistill.checkpoint import load_model, save_model

    teacher = _policy("pi0")
    reference = _policy("pi0")
    student = student_from_teacher(teacher, "expert", torch.bfloat16)
    frozen = [p for p in student.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    assert all(p.dtype == torch.float32 for p in student.parameters() if p.requires_grad)
    assert student.dtype == torch.float32
    cond = Windows(student).sample(2, torch.Generator().manual_seed(0)).cond
    x, t = torch.randn(2, *student.sample_shape()), torch.tensor([0.8, 0.3])
    with torch.no_grad():
        out = student.flow(x, t, t, student.encode(cond))
        assert out.dtype == torch.float32
        assert torch.equal(out, student.flow(x, t, t, student.encode(share_prefix(student, cond))))
        # the same function as the float32 model, up to bf16 rounding of the frozen weights
        exact = reference.flow(x, t, t, reference.encode(cond))
        assert 0 < (out - exact).abs().max() < 0.05 * exact.abs().max()
    # checkpoints keep the usual keys, in float32, and reload into a plain model with the same outputs
    state = student.state_dict()
    assert set(state) == set(reference.state_dict()) and all(v.dtype == torch.float32 for v in state.values())
    save_model(tmp_path / "s", student)
    with torch.no_grad():
        again = load_model(tmp_path / "s").eval()
        assert torch.equal(again.flow(x, t, t, again.encode(cond)), out)
    student.load_state_dict(reference.state_dict())  # a resume loads float32 weights back into bf16 storage
    assert all(p.dtype == torch.bfloat16 for p in student.parameters() if not p.requires_grad)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"train": "vlm"}, "--train 'vlm' is not a training mode"),
        ({"train": "all", "frozen_dtype": "bf16"}, "--train all freezes nothing"),
        ({"frozen_dtype": "fp16"}, "--frozen-dtype 'fp16'"),
        ({"train": "expert", "fsdp": True}, "use --train all with --fsdp"),
        ({"precision": "half"}, "--precision 'half'"),
    ],
)
def test_train_options_are_checked_before_any_work(changes, message):
    import dataclasses

    from policydistill.pipeline.distill import DistillConfig
    from policydistill.pipeline.run_options import check_distill_options

    with pytest.raises(ValueError, match=message):
        check_distill_options(dataclasses.replace(DistillConfig(), **changes))


def test_train_mode_defaults():
    import dataclasses

    from policydistill.pipeline.distill import DistillConfig, train_mode

    policy = _policy("pi0")
    assert train_mode(DistillConfig(), policy) == "expert"
    assert train_mode(dataclasses.replace(DistillConfig(), fsdp=True), policy) == "all"
    assert train_mode(dataclasses.replace(DistillConfig(), train="all"), policy) == "all"


def test_a_nan_observation_is_named_under_a_shared_prefix():
    from policydistill.train.loop import TrainingDiverged

    class Broken(Windows):
        def sample(self, batch_size, generator):
            batch = super().sample(batch_size, generator)
            batch.cond["state"][0, 0] = float("nan")
            return batch

    teacher = _policy("pi0")
    student = student_from_teacher(teacher, "expert")
    with pytest.raises(TrainingDiverged, match="cond\\['state'\\]"):
        train(student, make_method("snapflow"), Broken(student), _cfg(1), teacher=teacher)
