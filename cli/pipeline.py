"""`policydistill train | distill | compare`: build a typed config from a named preset plus the
flags given, then call the library function. The config options are the fields of ``TeacherConfig``
and ``DistillConfig`` that carry command-line metadata (``config_options``); each command declares
only its own arguments (model, preset, --resume, ...)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from ..methods import DEFAULT_METHOD
from ..pipeline.distill import DistillConfig
from ..pipeline.teacher import TeacherConfig
from .config_options import config_command
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
        raise ValueError(
            f"method {method!r} has no option(s) {unknown}; valid options: "
            f"{', '.join(sorted(names)) or 'none'} (see `policydistill methods`)"
        )
    import typing

    from ..fields import field_problem

    hints = typing.get_type_hints(cls.Config) if dc.is_dataclass(cls.Config) else {}
    problems = [p for k, v in opts.items() if (p := field_problem(k, hints.get(k), v, ranges=False))]
    if problems:
        raise ValueError(
            f"method {method!r}: " + "; ".join(problems) + " (-o key=value takes JSON values: "
            "numbers, true/false, or text)"
        )
    return opts


def _apply(cfg, **flags):
    """Flags given on the command line (not None) override the preset's fields."""
    return dataclasses.replace(cfg, **{k: v for k, v in flags.items() if v is not None})


def _sweep(text: str | None) -> tuple[int, ...] | None:
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


def _threads(value: int | None) -> int | None:
    """--threads N: 1..(CPU cores); leaving it out keeps torch's default."""
    from ..pipeline.run_options import check_threads, cpu_cores

    if value is None:
        return None
    if value == 0:
        raise typer.BadParameter(
            f"--threads 0 is not a thread count: pass 1 to {cpu_cores()} (this machine's CPU "
            "cores), or leave --threads out to keep torch's default."
        )
    try:
        check_threads(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


def _log(value: str | None) -> str | None:
    """--log tensorboard|wandb: checked (name, installed extra) before any work."""
    from ..train.runlog import parse_backends

    if value is None:
        return None
    parse_backends(value)  # unknown name: ValueError; package missing: MissingExtra naming the extra
    return value


def _realtime(value: str | None) -> str | None:
    """--realtime PROFILE: resolved (name, file) before any work, so a typo costs no training."""
    if value is None:
        return None
    from ..eval.realtime import load_profile

    try:
        load_profile(value)
    except (ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


def _execution(value: str | None) -> str | None:
    from ..eval.realtime import check_execution

    try:
        return None if value is None else check_execution(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


#: fields whose command-line text is parsed (and checked) before it becomes the field's value
_PARSERS = {
    "sweep_n_action_steps": _sweep,
    "threads": _threads,
    "log": _log,
    "realtime": _realtime,
    "execution": _execution,
}


def _parsed(fields: dict) -> dict:
    """The command-line values of config fields, each through its parser (in field order)."""
    return {k: (_PARSERS[k](v) if k in _PARSERS else v) for k, v in fields.items()}


EXTEND_HELP = "With --resume: continue the run to a larger step count than it was started with."


@config_command(TeacherConfig, after=("resume", "extend", "option"))
def train_cmd(
    model: str = typer.Argument("pi0", help="Policy architecture: pi0, pi05 or smolvla."),
    preset: str = typer.Option("small", help="Model size preset (tiny, small, ...); also picks the recipe."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in --out."),
    extend: bool = typer.Option(False, "--extend", help=EXTEND_HELP),
    option: list[str] = typer.Option([], "--option", "-o", help="Model config override key=value (repeatable)."),
    *,
    fields: dict,
) -> None:
    """Train a flow-matching teacher policy on scripted (multimodal) Meta-World demonstrations."""
    from ..pipeline.teacher import TEACHER_PRESETS, train_teacher

    base = TEACHER_PRESETS.get(preset, TeacherConfig(preset=preset))
    cfg = _apply(base, **_parsed(fields), model=model, preset=preset)
    if option:
        cfg = dataclasses.replace(cfg, overrides={**cfg.overrides, **_options(option)})
    from .app import console

    train_teacher(cfg, resume=resume, extend=extend, console=console)


@config_command(DistillConfig, after=("preset", "resume", "extend", "option"))
def distill_cmd(
    model: str = typer.Argument("pi0", help="pi0 | pi05 | smolvla (policies) or image-dit | video-dit (media)."),
    preset: str = typer.Option("default", help="Recipe preset: default or tiny (seconds-long smoke run)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the distillation from the last checkpoint in --out."),
    extend: bool = typer.Option(False, "--extend", help=EXTEND_HELP),
    option: list[str] = typer.Option([], "--option", "-o", help="Method option key=value (repeatable)."),
    *,
    fields: dict,
) -> None:
    """Distil a teacher into an N-step student and evaluate teacher / naive / student on the same seeds."""
    method, steps, out = fields["method"], fields["steps"], fields["out"]
    if model in ("image-dit", "video-dit"):
        from .media import distill_cmd as media_distill

        media_distill(
            model=model,
            method=method,
            steps=steps,
            dataset=None,
            train_steps=fields["iters"],
            preset=None if preset == "default" else preset,
            option=option,
            run_dir=Path(out or "runs/media"),
            as_json=False,
        )
        return
    from ..pipeline.distill import DISTILL_PRESETS, distill_policy

    method = method or DEFAULT_METHOD

    if preset not in DISTILL_PRESETS:
        raise typer.BadParameter(f"unknown preset {preset!r}; valid: {', '.join(DISTILL_PRESETS)}")
    cfg = _apply(
        DISTILL_PRESETS[preset],
        **{**_parsed(fields), "model": model, "method": method, "out": out or f"runs/distill-{model}-{method}-{steps}"},
    )
    options = _method_options(method, option)
    if options:
        cfg = dataclasses.replace(cfg, method_options=options)
    from .app import console

    distill_policy(cfg, resume=resume, extend=extend, console=console)


#: compare runs every method at every NFE of its own --steps list on the teacher's data and horizon
_COMPARE_FIELDS = dict(
    exclude=(
        "tokenizer",
        "method",
        "steps",
        "data",
        "n_action_steps",
        "sweep_episodes",
        "video",
        "micro_batches",
        "fsdp",
        "ignore_memory_plan",
    ),
    overrides={
        "checkpoint": {
            "name": "teacher",
            "flags": ("--teacher",),
            "help": "Teacher checkpoint (default: the bundled one).",
        },
        "iters": {"help": "Distillation steps per student (same for all)."},
        "task": {"help": None},
        "workers": {"help": None},
        "max_episode_steps": {"help": None},
        "sweep_n_action_steps": {
            "default": "none",
            "help": "n_action_steps values to also evaluate (e.g. "
            "8,12,16); off by default: every variant runs again per value.",
        },
        "out": {"default": "runs/compare", "help": "Output folder."},
    },
)


@config_command(DistillConfig, after=("preset", "resume", "extend"), **_COMPARE_FIELDS)
def compare_cmd(
    model: str = typer.Option("pi0", help="Architecture of the teacher."),
    methods: str = typer.Option(
        "snapflow,shortcut,meanflow,lsd,psd,consistency_distillation,progressive_distillation,reflow",
        help="Comma-separated registered methods.",
    ),
    steps: str = typer.Option("1,2,4", help="Comma-separated student NFEs."),
    preset: str = typer.Option("default", help="Recipe preset: default or tiny."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue every student's distillation from its last checkpoint."
    ),
    extend: bool = typer.Option(False, "--extend", help=EXTEND_HELP),
    *,
    fields: dict,
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
    cfg = _apply(DISTILL_PRESETS[preset], **_parsed(fields), model=model)
    from .app import console

    compare_methods(
        cfg, [m.strip() for m in methods.split(",") if m.strip()], nfes, resume=resume, extend=extend, console=console
    )
