"""`policydistill train | distill | compare`: build a typed config from a named preset plus the
flags given, then call the library function."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer

from ..methods import DEFAULT_METHOD


from .options import parse_options as _options  # noqa: E402


def _method_options(method: str, items: list[str]) -> dict:
    """Parse --option key=value for ``method`` and check the keys against its config, before any
    loading or training (a typo fails in a second, not after the teacher is loaded)."""
    import dataclasses as dc

    from ..methods import METHODS

    cls = METHODS.load(method)  # unknown method -> RegistryError listing the valid names
    opts = _options(items)
    names = {f.name for f in dc.fields(cls.Config)} if dc.is_dataclass(cls.Config) else set()
    unknown = sorted(set(opts) - names)
    if unknown:
        raise ValueError(f"method {method!r} has no option(s) {unknown}; valid options: "
                         f"{', '.join(sorted(names)) or 'none'} (see `policydistill methods`)")
    import typing

    from ..fields import field_problem

    hints = typing.get_type_hints(cls.Config) if dc.is_dataclass(cls.Config) else {}
    problems = [p for k, v in opts.items() if (p := field_problem(k, hints.get(k), v, ranges=False))]
    if problems:
        raise ValueError(f"method {method!r}: " + "; ".join(problems) + " (-o key=value takes JSON values: "
                         "numbers, true/false, or text)")
    return opts


def _apply(cfg, **flags):
    """Flags given on the command line (not None) override the preset's fields."""
    return dataclasses.replace(cfg, **{k: v for k, v in flags.items() if v is not None})


def _sweep(text: Optional[str]) -> Optional[tuple[int, ...]]:
    """--sweep "8,12,16" → (8, 12, 16); "none" → () (off); None → the preset's choice."""
    from ..pipeline.run_options import check_sweep

    if text is None:
        return None
    if text.strip().lower() in ("none", "off", ""):
        return ()
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"--sweep takes comma-separated integers or 'none', got {text!r}") from None
    try:
        check_sweep(values)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return values


def _threads(value: Optional[int]) -> Optional[int]:
    """--threads N: 1..(CPU cores); leaving it out keeps torch's default."""
    from ..pipeline.run_options import check_threads, cpu_cores

    if value is None:
        return None
    if value == 0:
        raise typer.BadParameter(f"--threads 0 is not a thread count: pass 1 to {cpu_cores()} (this machine's CPU "
                                 "cores), or leave --threads out to keep torch's default.")
    try:
        check_threads(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


def _log(value: Optional[str]) -> Optional[str]:
    """--log tensorboard|wandb: checked (name, installed extra) before any work."""
    from ..train.runlog import parse_backends

    if value is None:
        return None
    parse_backends(value)  # unknown name: ValueError; package missing: MissingExtra naming the extra
    return value


THREADS_HELP = "Torch CPU threads, 1..(CPU cores) (default: torch's own choice)."
LOG_HELP = ("Also log the run to tensorboard or wandb (offline unless WANDB_MODE says otherwise); needs the "
            "extra of that name. metrics.jsonl is always written.")
EXTEND_HELP = "With --resume: continue the run to a larger step count than it was started with."


def train_cmd(
    model: str = typer.Argument("pi0", help="Policy architecture: pi0, pi05 or smolvla."),
    preset: str = typer.Option("small", help="Model size preset (tiny, small, ...); also picks the recipe."),
    task: Optional[str] = typer.Option(None, help="Task id or suite, e.g. metaworld/mt10 or metaworld/push-v3."),
    data: Optional[str] = typer.Option(None, help="Existing dataset (zarr or LeRobot v3 folder) instead of generated demos."),
    episodes: Optional[int] = typer.Option(None, min=1, help="Demonstrations per task to generate."),
    multimodal: Optional[bool] = typer.Option(None, "--multimodal/--no-multimodal", help="Multimodal demonstrations."),
    steps: Optional[int] = typer.Option(None, min=1, help="Optimiser steps."),
    batch_size: Optional[int] = typer.Option(None, min=1),
    lr: Optional[float] = typer.Option(None, min=0.0),
    seed: Optional[int] = typer.Option(None),
    threads: Optional[int] = typer.Option(None, help=THREADS_HELP),
    out: Optional[str] = typer.Option(None, help="Run folder (default runs/teacher)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in --out."),
    extend: bool = typer.Option(False, "--extend", help=EXTEND_HELP),
    log: Optional[str] = typer.Option(None, "--log", help=LOG_HELP),
    option: list[str] = typer.Option([], "--option", "-o", help="Model config override key=value (repeatable)."),
    micro_batches: Optional[int] = typer.Option(None, "--micro-batches", min=0, help="Seeded micro-batches per "
                                                "step (0 = one per torchrun rank; the result depends on this, not on the rank count)."),
    fsdp: Optional[bool] = typer.Option(None, "--fsdp/--no-fsdp", help="Shard the model's weights, gradients and "
                                        "optimiser state over the torchrun ranks (FSDP2; for full-size pi0)."),
) -> None:
    """Train a flow-matching teacher policy on scripted (multimodal) Meta-World demonstrations."""
    from ..pipeline.teacher import TEACHER_PRESETS, TeacherConfig, train_teacher

    base = TEACHER_PRESETS.get(preset, TeacherConfig(preset=preset))
    cfg = _apply(base, model=model, preset=preset, task=task, data=data, episodes_per_task=episodes,
                 multimodal=multimodal, steps=steps, batch_size=batch_size, lr=lr, seed=seed, threads=_threads(threads),
                 out=out, micro_batches=micro_batches, fsdp=fsdp, log=_log(log))
    if option:
        cfg = dataclasses.replace(cfg, overrides={**cfg.overrides, **_options(option)})
    from .app import console

    train_teacher(cfg, resume=resume, extend=extend, console=console)


def distill_cmd(
    model: str = typer.Argument("pi0", help="pi0 | pi05 | smolvla (policies) or image-dit | video-dit (media)."),
    steps: int = typer.Option(1, "--steps", min=1, help="NFE of the student."),
    method: Optional[str] = typer.Option(None, "--method", "-m", help="Any registered method (policydistill methods; "
                                         f"default: {DEFAULT_METHOD} for policies, the domain's for media)."),
    checkpoint: Optional[str] = typer.Option(None, help="Teacher: policydistill checkpoint or lerobot policy folder."),
    tokenizer: Optional[str] = typer.Option(None, help="Local tokenizer folder for lerobot checkpoints."),
    task: Optional[str] = typer.Option(None, help="Tasks to evaluate (default: the teacher's)."),
    data: Optional[str] = typer.Option(None, help="Demonstrations (default: the teacher's)."),
    iters: Optional[int] = typer.Option(None, min=1, help="Distillation optimiser steps."),
    episodes: Optional[int] = typer.Option(None, min=1, help="Evaluation episodes per task and variant."),
    n_action_steps: Optional[int] = typer.Option(None, min=1, help="Actions executed per chunk in closed loop."),
    sweep: Optional[str] = typer.Option(None, help="n_action_steps values to also evaluate, e.g. 8,12,16 "
                                        "(default: 8, midpoint, chunk length; 'none' = off)."),
    sweep_episodes: Optional[int] = typer.Option(None, min=1, help="Episodes per task at each extra sweep value."),
    workers: Optional[int] = typer.Option(None, min=0, help="Simulator worker processes (0 = in this process)."),
    max_episode_steps: Optional[int] = typer.Option(None, min=1, help="Episode step limit (default: the task's)."),
    preset: str = typer.Option("default", help="Recipe preset: default or tiny (seconds-long smoke run)."),
    seed: Optional[int] = typer.Option(None),
    threads: Optional[int] = typer.Option(None, help=THREADS_HELP),
    out: Optional[str] = typer.Option(None, help="Output folder (default runs/distill-<model>-<method>-<steps>)."),
    video: bool = typer.Option(False, "--video", help="Save rollout videos."),
    resume: bool = typer.Option(False, "--resume", help="Continue the distillation from the last checkpoint in --out."),
    extend: bool = typer.Option(False, "--extend", help=EXTEND_HELP),
    log: Optional[str] = typer.Option(None, "--log", help=LOG_HELP),
    option: list[str] = typer.Option([], "--option", "-o", help="Method option key=value (repeatable)."),
    micro_batches: Optional[int] = typer.Option(None, "--micro-batches", min=0, help="Seeded micro-batches per "
                                                "step (0 = one per torchrun rank)."),
    fsdp: Optional[bool] = typer.Option(None, "--fsdp/--no-fsdp", help="Shard the model's weights, gradients and "
                                        "optimiser state over the torchrun ranks (FSDP2; for full-size pi0)."),
) -> None:
    """Distil a teacher into an N-step student and evaluate teacher / naive / student on the same seeds."""
    if model in ("image-dit", "video-dit"):
        from .media import distill_cmd as media_distill

        media_distill(model=model, method=method, steps=steps, dataset=None, train_steps=iters,
                      preset=None if preset == "default" else preset, option=option,
                      run_dir=Path(out or "runs/media"), as_json=False)
        return
    from ..pipeline.distill import DISTILL_PRESETS, distill_policy

    method = method or DEFAULT_METHOD

    if preset not in DISTILL_PRESETS:
        raise typer.BadParameter(f"unknown preset {preset!r}; valid: {', '.join(DISTILL_PRESETS)}")
    cfg = _apply(DISTILL_PRESETS[preset], model=model, steps=steps, method=method, checkpoint=checkpoint,
                 tokenizer=tokenizer, task=task, data=data, iters=iters, episodes=episodes,
                 n_action_steps=n_action_steps, sweep_n_action_steps=_sweep(sweep), sweep_episodes=sweep_episodes,
                 workers=workers, max_episode_steps=max_episode_steps, seed=seed, threads=_threads(threads),
                 out=out or f"runs/distill-{model}-{method}-{steps}", video=video, micro_batches=micro_batches, fsdp=fsdp,
                 log=_log(log))
    options = _method_options(method, option)
    if options:
        cfg = dataclasses.replace(cfg, method_options=options)
    from .app import console

    distill_policy(cfg, resume=resume, extend=extend, console=console)


def compare_cmd(
    teacher: Optional[str] = typer.Option(None, help="Teacher checkpoint (default: the bundled one)."),
    model: str = typer.Option("pi0", help="Architecture of the teacher."),
    methods: str = typer.Option("snapflow,shortcut,meanflow,lsd,psd,consistency_distillation,"
                                "progressive_distillation,reflow", help="Comma-separated registered methods."),
    steps: str = typer.Option("1,2,4", help="Comma-separated student NFEs."),
    iters: Optional[int] = typer.Option(None, min=1, help="Distillation steps per student (same for all)."),
    episodes: Optional[int] = typer.Option(None, min=1, help="Evaluation episodes per task and variant."),
    task: Optional[str] = typer.Option(None),
    workers: Optional[int] = typer.Option(None, min=0),
    max_episode_steps: Optional[int] = typer.Option(None, min=1),
    sweep: str = typer.Option("none", help="n_action_steps values to also evaluate (e.g. 8,12,16); off by "
                              "default: every variant runs again per value."),
    preset: str = typer.Option("default", help="Recipe preset: default or tiny."),
    seed: Optional[int] = typer.Option(None),
    threads: Optional[int] = typer.Option(None, help=THREADS_HELP),
    out: str = typer.Option("runs/compare", help="Output folder."),
    resume: bool = typer.Option(False, "--resume", help="Continue every student's distillation from its last checkpoint."),
    extend: bool = typer.Option(False, "--extend", help=EXTEND_HELP),
    log: Optional[str] = typer.Option(None, "--log", help=LOG_HELP),
) -> None:
    """Distil the same teacher with several methods and NFEs (same budget) and compare them."""
    from ..pipeline.compare import compare_methods
    from ..pipeline.distill import DISTILL_PRESETS

    if preset not in DISTILL_PRESETS:
        raise typer.BadParameter(f"unknown preset {preset!r}; valid: {', '.join(DISTILL_PRESETS)}")
    try:
        nfes = sorted({int(x) for x in steps.split(",") if x.strip()})
    except ValueError:
        nfes = []
    if not nfes or min(nfes) < 1:
        raise typer.BadParameter(f"--steps must list comma-separated NFEs >= 1 (e.g. 1,2,4), got {steps!r}")
    cfg = _apply(DISTILL_PRESETS[preset], model=model, checkpoint=teacher, iters=iters, episodes=episodes, task=task,
                 workers=workers, max_episode_steps=max_episode_steps, seed=seed, threads=_threads(threads), out=out,
                 sweep_n_action_steps=_sweep(sweep), log=_log(log))
    from .app import console

    compare_methods(cfg, [m.strip() for m in methods.split(",") if m.strip()], nfes, resume=resume, extend=extend,
                    console=console)
