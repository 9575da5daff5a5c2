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

REALTIME = {
    "help": "Latency in the loop: the world moves on while the policy computes. zero | measured | a device "
    "profile (pi05-a800, pi0-4090, ...) | a profile or `policydistill latency` report JSON. Default: off "
    "(the world waits for the policy)."
}
EXECUTION = {
    "help": "With --realtime: sync (the robot holds while it waits), async (it keeps executing the "
    "current chunk; stale actions of the new one are dropped) or rtc (async, and the policy continues the "
    "actions committed while it computes: real-time chunking)."
}
