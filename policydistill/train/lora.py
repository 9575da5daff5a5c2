"""Optional LoRA adapters on a student's trainable layers, through the ``peft`` library
(``pip install 'policydistill[lora]'``).

``add_lora`` injects rank-r adapters into the Linear layers a model names in ``lora_targets()``
(``{sub-module: regex of Linear names}``; pi0: the action expert's attention output and MLP
projections) and freezes those layers' base weights: the adapters train instead. ``merge_lora``
folds the adapters into the base weights and removes them, so that the saved student is a plain
model of its architecture (no peft needed to load, export or serve it).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .runlog import MissingExtra


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise MissingExtra(
            "--lora-rank needs the optional package 'peft', which is not installed: "
            "pip install 'policydistill[lora]' (or pip install peft)."
        ) from None
    return peft


def add_lora(model: nn.Module, rank: int, alpha: float | None = None) -> int:
    """Inject LoRA adapters of ``rank`` (scale ``alpha / rank``; default alpha = 2·rank) into the
    layers ``model.lora_targets()`` names; returns the number of adapter parameters."""
    if rank < 1:
        raise ValueError(f"the LoRA rank must be >= 1, got {rank}")
    targets = getattr(model, "lora_targets", lambda: {})()
    if not targets:
        raise ValueError(f"{type(model).__name__} names no layers for LoRA adapters; train without --lora-rank")
    peft = _peft()
    for name, pattern in targets.items():
        config = peft.LoraConfig(r=rank, lora_alpha=alpha or 2 * rank, target_modules=pattern, lora_dropout=0.0)
        peft.inject_adapter_in_model(config, model.get_submodule(name))
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA adapter into its base layer and put the base layer back in its place
    (in place; returns ``model``). A model without adapters is returned unchanged."""
    layers = [(n, m) for n, m in model.named_modules() if hasattr(m, "merge") and hasattr(m, "get_base_layer")]
    for name, layer in layers:
        layer.merge()
        parent, _, leaf = name.rpartition(".")
        base = layer.get_base_layer()
        base.requires_grad_(any(p.requires_grad for p in layer.parameters()))
        setattr(model.get_submodule(parent) if parent else model, leaf, base)
    return model
