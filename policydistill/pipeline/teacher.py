"""Train a flow-matching teacher policy on (multimodal) scripted demonstrations.

    policydistill train pi0 --preset small --task metaworld/mt10

builds the architecture's preset sized to the data (state/action dims, cameras), sets its
normalisation from the dataset statistics, and runs the ONE training loop with the
``flow_matching`` method; checkpoints are atomic and ``--resume`` continues exactly.
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..checkpoint import save_model, write_json
from . import cli_help

if TYPE_CHECKING:
    from rich.console import Console

logger = logging.getLogger(__name__)


@dataclass
class TeacherConfig:
    """A teacher training run. A field with ``metadata`` is a ``policydistill train`` option (help
    text, flags, bounds: see ``policydistill.cli.config_options``)."""

    model: str = "pi0"  # architecture: pi0 | pi05 | smolvla
    preset: str = "small"
    task: str = field(
        default="metaworld/multimodal",
        metadata={  # a task id or suite name (comma-separated allowed)
            "help": "Task id or suite, e.g. metaworld/mt10 or metaworld/push-v3."
        },
    )
    data: str | None = field(
        default=None,
        metadata={  # an existing zarr / LeRobot v3 dataset; None = generate demos
            "help": "Existing dataset (zarr or LeRobot v3 folder) instead of generated demos."
        },
    )
    episodes_per_task: int = field(
        default=50,
        metadata={
            "name": "episodes",
            "flags": ("--episodes",),
            "min": 1,
            "help": "Demonstrations per task to generate.",
        },
    )
    multimodal: bool = field(
        default=True, metadata={"flags": ("--multimodal/--no-multimodal",), "help": "Multimodal demonstrations."}
    )
    action_noise: float = 0.1
    steps: int = field(default=20000, metadata={"min": 1, "help": "Optimiser steps."})
    batch_size: int = field(default=32, metadata={"min": 1, "help": None})
    lr: float = field(default=3e-4, metadata={"min": 0.0, "help": None})
    warmup_steps: int = 500
    weight_decay: float = 1e-4
    ema_decay: float = 0.0
    grad_clip: float = 1.0
    val_fraction: float = 0.1
    checkpoint_every: int = 1000
    seed: int = field(default=0, metadata={"help": None})
    threads: int = field(default=0, metadata=cli_help.THREADS)  # torch threads (0 = leave as is)
    out: str = field(default="runs/teacher", metadata={"help": "Run folder (default runs/teacher)."})
    eval_episodes: int = 0  # final closed-loop evaluation per task (0 = skip)
    # Episode limit the teacher is judged with (here and by `distill`/`compare` by default);
    # None = the task's own (500 steps in Meta-World).
    eval_max_steps: int | None = None
    progress: bool = True
    micro_batches: int = field(
        default=0,
        metadata={  # seeded micro-batches per step (0 = one per torchrun rank)
            "flags": ("--micro-batches",),
            "min": 0,
            "help": "Seeded micro-batches per step (0 = one per torchrun rank; the result depends on this, not on the rank count).",
        },
    )
    fsdp: bool = field(default=False, metadata=cli_help.FSDP)  # shard the policy over the torchrun ranks (FSDP2)
    rtc_max_delay: int = field(
        default=0,
        metadata={
            "flags": ("--rtc-max-delay",),
            "min": 0,
            "help": "Training-time real-time chunking: train with clean prefixes of 0..N committed actions "
            "(pi0 / pi0.5; 0 = off).",
        },
    )
    overrides: dict[str, Any] = field(default_factory=dict)  # architecture config overrides
    log: str = field(default="", metadata=cli_help.LOG)  # extra run logs besides metrics.jsonl: tensorboard, wandb


TEACHER_PRESETS: dict[str, TeacherConfig] = {
    # CI / unit tests: one task, a handful of demos, a few steps, tiny model.
    "tiny": TeacherConfig(
        preset="tiny",
        task="metaworld/reach-wall-v3",
        episodes_per_task=3,
        steps=20,
        batch_size=8,
        warmup_steps=2,
        checkpoint_every=10,
        eval_episodes=0,
        overrides={"image_size": 32},
    ),
    # The bundled default teacher's recipe (docs/bundled_teacher.md: measurements, status; the
    # shipped teacher's own README.md records its exact command, seed and results).
    # The three wall tasks (the average of the two routes fails there); 64 px images: the goal
    # is in the state, and 64 px trains ~1.5x faster than 96 px on CPU (docs/bundled_teacher.md).
    # torch's default threads (all cores): 6 it/s on 2 idle cores; pass --threads 1 on a busy box.
    # The demonstrations finish in <= 150 steps, so episodes are judged at 200 steps: a policy that
    # dithers for 500 steps is not a success a user would accept, and evaluation costs 2.5x less.
    "small": TeacherConfig(
        task="metaworld/walls",
        episodes_per_task=50,
        steps=6000,
        batch_size=32,
        lr=3e-4,
        warmup_steps=200,
        ema_decay=0.995,
        checkpoint_every=200,
        threads=0,
        eval_episodes=50,
        eval_max_steps=200,
        overrides={"image_size": 64},
    ),
}


def tasks_of(task: str) -> list[str]:
    from ..envs import expand

    return expand([t.strip() for t in task.split(",") if t.strip()])


def build_policy(model: str, preset: str, dataset: Any, overrides: dict[str, Any] | None = None) -> Any:
    """An untrained policy of ``model``/``preset`` sized to ``dataset`` (dims, cameras) and
    normalised with its statistics."""
    from ..zoo import ARCHITECTURES

    cls = ARCHITECTURES.load(model)
    if not hasattr(cls, "from_preset"):
        raise ValueError(f"{model!r} is not a policy architecture; use pi0, pi05 or smolvla")
    sizes = {
        "state_dim": dataset.state_dim,
        "action_dim": dataset.action_dim,
        "max_state_dim": dataset.state_dim,
        "max_action_dim": dataset.action_dim,
        "cameras": list(dataset.cameras),
    }
    policy = cls.from_preset(preset, **{**sizes, **(overrides or {})})
    policy.set_normalization(dataset.stats)
    return policy


def open_windows(path: str | Path, policy_chunk: int, split: str, val_fraction: float, seed: int) -> Any:
    from ..data.windows import FlowWindowDataset

    # Unnormalised windows: the policy's own buffers normalise (they travel with the checkpoint).
    return FlowWindowDataset(
        str(path), horizon=policy_chunk, split=split, val_fraction=val_fraction, seed=seed, normalize=False
    )


def train_teacher(
    cfg: TeacherConfig, resume: bool = False, extend: bool = False, console: Console | None = None
) -> Path:
    """Train and save a teacher; returns the folder of the final model (``<out>/teacher``); the final
    evaluation's table goes to ``console`` when one is given (messages go to ``logging``).
    ``<out>`` is locked for the run; ``resume`` continues only the same run (``extend``: to more
    steps)."""
    from ..train import distributed
    from ..train.runlog import parse_backends
    from .run_options import apply_threads, run_folder

    apply_threads(cfg.threads)
    parse_backends(cfg.log)
    if cfg.data is not None and not Path(cfg.data).exists():
        raise FileNotFoundError(
            f"--data {cfg.data} does not exist. Pass an existing dataset (zarr store or LeRobot "
            "v3 folder), or leave --data out to generate scripted demonstrations."
        )
    distributed.init_from_env()  # no-op unless launched by torchrun
    with run_folder(Path(cfg.out)):  # an unwritable --out fails here, before demos are generated
        return _train_teacher(cfg, resume, extend, console)


def _train_teacher(cfg: TeacherConfig, resume: bool, extend: bool, console: Console | None) -> Path:
    from ..methods import make_method
    from ..train import TrainConfig, distributed, train
    from .demos import ensure_demos
    from .policy_data import PolicyDataSource

    if cfg.fsdp:  # before the demonstrations are generated
        from ..train.fsdp import check_ready

        check_ready(make_method("flow_matching"))
    out = Path(cfg.out)
    tasks = tasks_of(cfg.task)
    from ..zoo import ARCHITECTURES

    if cfg.model not in ARCHITECTURES:
        raise ValueError(f"unknown model {cfg.model!r}; valid: pi0, pi05, smolvla")
    overrides = {**cfg.overrides, **({"rtc_training_max_delay": cfg.rtc_max_delay} if cfg.rtc_max_delay else {})}
    with torch.device("meta"):  # only the preset's input sizes are needed here: allocate no weights
        probe = ARCHITECTURES.load(cfg.model).from_preset(cfg.preset, **overrides)
    image_size, chunk = probe.config.image_size, probe.config.chunk_size
    from .teacher_io import resolve_data

    data_path = resolve_data(cfg.data) if cfg.data else out / "demos.zarr"
    if cfg.data is None:
        with distributed.main_first():  # rank 0 generates; the other ranks then find the demos on disk
            ensure_demos(
                tasks, data_path, cfg.episodes_per_task, image_size, cfg.multimodal, cfg.action_noise, cfg.seed
            )
    train_set = open_windows(data_path, chunk, "train", cfg.val_fraction, cfg.seed)
    torch.manual_seed(cfg.seed)  # the initial weights are a function of the run's seed (same on every rank)
    policy = build_policy(cfg.model, cfg.preset, train_set, overrides)
    n_params = sum(p.numel() for p in policy.parameters())
    logger.info(
        f"teacher {cfg.model}/{cfg.preset}: {n_params / 1e6:.2f} M parameters, "
        f"{len(train_set)} training windows from {data_path}"
    )

    command = " ".join(shlex.quote(a) for a in sys.argv)
    provenance = {
        "role": "teacher",
        "command": command,
        "seed": cfg.seed,
        "dataset": str(data_path),
        "tasks": tasks,
        "teacher_config": dataclasses.asdict(cfg),
    }
    tcfg = TrainConfig(
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps,
        grad_clip=cfg.grad_clip,
        ema_decay=cfg.ema_decay,
        checkpoint_every=cfg.checkpoint_every,
        seed=cfg.seed,
        progress=cfg.progress,
        micro_batches=cfg.micro_batches,
        fsdp=cfg.fsdp,
        log=cfg.log,
        description=f"train {cfg.model} (flow matching)",
    )
    identity = {
        "model": cfg.model,
        "preset": cfg.preset,
        "tasks": tasks,
        "data": str(data_path.resolve()),
        "overrides": cfg.overrides,
        "val_fraction": cfg.val_fraction,
    }
    t0 = time.perf_counter()
    result = train(
        policy,
        make_method("flow_matching"),
        PolicyDataSource(train_set, policy),
        tcfg,
        out_dir=out / "train",
        resume=resume,
        checkpoint_extra=provenance,
        identity=identity,
        extend=extend,
    )
    model = result.ema if result.ema is not None else result.model
    model.config.sampling_mode = "diagonal"
    if not distributed.is_main():  # under torchrun, rank 0 saves
        return out / "teacher"
    provenance["train_seconds"] = time.perf_counter() - t0
    provenance["final_loss"] = sum(h["loss"] for h in result.history[-50:]) / max(1, len(result.history[-50:]))
    folder = save_model(out / "teacher", model, extra=provenance)
    write_json(out / "teacher" / "history.json", result.history[-2000:])
    logger.info(f"saved the teacher to {folder} (final loss {provenance['final_loss']:.4f})")
    if cfg.eval_episodes:
        evaluate_teacher(model, tasks, cfg, folder, console)
    return folder


def evaluate_teacher(
    policy: Any, tasks: list[str], cfg: TeacherConfig, folder: Path, console: Console | None = None
) -> dict[str, Any]:
    """The final closed-loop evaluation (the policy's own NFE): ``<folder>/eval.json``, next to
    the weights it judges, so a shipped teacher carries its measured success with it. Its results
    table is printed to ``console`` when one is given."""
    from ..eval.report import results_table
    from ..eval.rollout import EvalConfig, evaluate_policy

    ecfg = EvalConfig(
        tasks=tasks,
        episodes=cfg.eval_episodes,
        workers=2,
        seed=cfg.seed,
        max_episode_steps=cfg.eval_max_steps,
        progress=cfg.progress,
    )
    result = evaluate_policy(policy, ecfg)
    write_json(folder / "eval.json", result)
    if console is not None:
        console.print(
            results_table(
                [{**result, "policy": "teacher", "nfe": policy.config.num_inference_steps}],
                title=f"teacher {cfg.model}/{cfg.preset}: {cfg.eval_episodes} episodes per task",
            )
        )
    return result
