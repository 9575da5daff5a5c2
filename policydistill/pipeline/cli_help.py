"""Command-line forms shared by several run configs' fields (``dataclasses.field`` metadata: the
CLI builds its options from it; see ``policydistill.cli.config_options``)."""

from __future__ import annotations

THREADS = {"help": "Torch CPU threads, 1..(CPU cores) (default: torch's own choice)."}
LOG = {
    "flags": ("--log",),
    "help": "Also log the run to tensorboard or wandb (offline unless WANDB_MODE says "
    "otherwise); needs the extra of that name. metrics.jsonl is always written.",
}
FSDP = {
    "flags": ("--fsdp/--no-fsdp",),
    "help": "Shard the model's weights, gradients and optimiser state over "
    "the torchrun ranks (FSDP2; for full-size pi0).",
}
