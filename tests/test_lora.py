"""Optional LoRA adapters (peft) on the action expert: trained, then folded into a plain student."""

from __future__ import annotations

import sys

import pytest
import torch

from policydistill.core import student_from_teacher
from policydistill.methods import make_method
from policydistill.policies.pi0 import Pi0Policy, preset
from policydistill.train import TrainConfig, train
from policydistill.train.lora import add_lora, merge_lora
from policydistill.train.runlog import MissingExtra


def test_missing_peft_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft → ImportError
    student = student_from_teacher(Pi0Policy(preset("tiny", "pi0")), "expert")
    with pytest.raises(MissingExtra, match=r"policydistill\[lora\]"):
        add_lora(student, 4)


def test_distill_refuses_lora_without_peft_before_any_work(monkeypatch):
    import dataclasses

    from policydistill.pipeline.distill import DistillConfig
    from policydistill.pipeline.run_options import check_distill_options

    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(MissingExtra, match="--lora-rank"):
        check_distill_options(dataclasses.replace(DistillConfig(), lora_rank=8))


def test_lora_adapters_train_and_fold_into_a_plain_student(tmp_path):
    pytest.importorskip("peft")
    from policydistill.checkpoint import load_model, save_model

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from test_train_modes import Windows

    torch.manual_seed(0)
    teacher = Pi0Policy(preset("tiny", "pi0", cameras=["corner2"])).eval()
    plain_keys = set(teacher.state_dict())
    student = student_from_teacher(teacher, "expert")
    n = add_lora(student, 2)
    assert n > 0
    trainable = {k for k, p in student.named_parameters() if p.requires_grad}
    assert any("lora_" in k for k in trainable)
    assert not any(k.startswith("expert.") and "lora_" not in k and "proj" in k and "qkv" not in k for k in trainable)
    cfg = TrainConfig(steps=3, batch_size=4, lr=1e-2, warmup_steps=0, progress=False, handle_signals=False)
    result = train(student, make_method("snapflow"), Windows(student), cfg, teacher=teacher)
    model = result.model.eval()
    cond = Windows(model).sample(2, torch.Generator().manual_seed(5)).cond
    x, t = torch.randn(2, *model.sample_shape()), torch.tensor([1.0, 0.4])
    with torch.no_grad():
        before = model.flow(x, t, torch.zeros(2), model.encode(cond))
        merge_lora(model)
        after = model.flow(x, t, torch.zeros(2), model.encode(cond))
    assert torch.allclose(before, after, atol=1e-5)
    assert set(model.state_dict()) == plain_keys
    save_model(tmp_path / "s", model)
    with torch.no_grad():
        again = load_model(tmp_path / "s").eval()
        assert torch.allclose(again.flow(x, t, torch.zeros(2), again.encode(cond)), after, atol=1e-6)
