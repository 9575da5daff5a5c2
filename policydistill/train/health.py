"""Before blaming the optimiser: are the model and the data sound?

A non-finite loss has three usual causes, and only one of them is the learning rate. The loop
checks the weights, buffers and numeric config of every model it is handed before the first
step (a damaged checkpoint fails there, naming the tensor or field), and when a loss or gradient
norm turns non-finite it looks at the batch of that step and at whether the optimiser has
changed anything yet before suggesting a lower ``--lr``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..checkpoint import CheckpointError
from ..core.flowmap import FlowBatch, SharedPrefix

#: |value| beyond which a training batch entry is corrupt rather than large: its square, which
#: every flow-matching loss takes, overflows float32 (3.4e38) long before.
EXTREME = 1e15


def _bad_floats(obj: Any, prefix: str = "") -> list[str]:
    if isinstance(obj, bool):
        return []
    if isinstance(obj, float):
        return [] if math.isfinite(obj) else [f"{prefix} = {obj}"]
    if isinstance(obj, dict):
        return [b for k, v in obj.items() for b in _bad_floats(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(obj, (list, tuple)):
        return [b for i, v in enumerate(obj) for b in _bad_floats(v, f"{prefix}[{i}]")]
    return []


def check_model(model: nn.Module, role: str) -> None:
    """Every parameter and buffer finite, every float of the model's config finite; else a
    ``CheckpointError`` naming what is broken (a damaged checkpoint, not a training problem)."""
    config = getattr(model, "config_dict", None)
    if callable(config):
        try:
            bad = _bad_floats(config())
        except NotImplementedError:
            bad = []
        if bad:
            raise CheckpointError(
                f"the {role} model's config has non-finite values: {', '.join(bad[:5])}. Its config.json is damaged "
                "or was edited by hand: restore the value (e.g. from the preset) before training; nothing was trained."
            )
    for kind, items in (("weight", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in items:
            if t.is_floating_point() and t.device.type != "meta" and not bool(torch.isfinite(t).all()):
                n = int((~torch.isfinite(t)).sum())
                raise CheckpointError(
                    f"the {role} model's {kind} {name} holds {n} NaN/inf value(s) of {t.numel()}: its weights are "
                    "damaged. Re-copy the checkpoint or use an earlier one; nothing was trained."
                )


def _tensors(batch: FlowBatch) -> list[tuple[str, torch.Tensor]]:
    out = [("data (the training targets, e.g. action chunks)", batch.data)]
    cond = batch.cond.cond if isinstance(batch.cond, SharedPrefix) else batch.cond  # the raw observations
    if torch.is_tensor(cond):
        out.append(("cond", cond))
    elif isinstance(cond, dict):
        out += [(f"cond[{k!r}]", v) for k, v in cond.items() if torch.is_tensor(v)]
    return [(n, t) for n, t in out if t.is_floating_point()]


def batch_problem(batch: FlowBatch) -> str | None:
    """What is wrong with a training batch's values, or None."""
    for name, t in _tensors(batch):
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            return f"the batch's {name} holds {int((~finite).sum())} NaN/inf value(s)"
        peak = float(t.detach().abs().max()) if t.numel() else 0.0
        if peak > EXTREME:
            return f"the batch's {name} holds a value of magnitude {peak:.3g}"
    return None


def largest_weight(model: nn.Module) -> str:
    best, where = 0.0, "-"
    for name, p in model.named_parameters():
        if p.is_floating_point() and p.numel():
            m = float(p.detach().abs().max())
            if not math.isfinite(m) or m > best:
                best, where = m, name
                if not math.isfinite(m):
                    break
    return f"{where} (|w| up to {best:.3g})"


def explain_nonfinite(
    what: str, step: int, first_step: bool, batch: FlowBatch | None, model: nn.Module, where: str
) -> str:
    """The message for a loss/gradient that became non-finite at ``step``: the data first, then
    the model when the optimiser has not changed anything yet, the learning rate last."""
    problem = batch_problem(batch) if batch is not None else None
    if problem is not None:
        return (
            f"{what} at step {step} because {problem}: the training data is corrupt, not the learning rate. "
            "Check and fix the dataset (`policydistill data info`), then run again; " + where + "."
        )
    if first_step:
        return (
            f"{what} at step {step}, the first step of this run, before the optimiser changed any weight, and "
            f"the batch is sound: the model itself produces it (largest weight {largest_weight(model)}). Its "
            f"checkpoint or config is damaged; lowering --lr will not help. {where[0].upper() + where[1:]}."
        )
    return f"{what} at step {step}. Lower --lr or raise the warm-up; {where}."
