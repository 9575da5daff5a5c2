"""Typer options built from config dataclass fields: a field with command-line metadata is an option
(flags, bounds, help, renamed parameter), a field without is not, and the commands' options are the
config's fields."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest
import typer
from typer.testing import CliRunner

from policydistill.cli.config_options import config_command


@dataclass
class _Config:
    steps: int = field(default=1, metadata={"flags": ("--steps", "-s"), "default": 1, "min": 1, "help": "Steps."})
    teacher_path: str | None = field(default=None, metadata={"name": "teacher", "flags": ("--teacher",)})
    fast: bool = field(default=False, metadata={"flags": ("--fast/--slow",), "help": "Go fast."})
    lr: float = field(default=1e-3, metadata={"min": 0.0})
    hidden: int = 7  # no metadata: not on the command line


def _app(**kw) -> tuple[typer.Typer, list]:
    seen = []

    @config_command(_Config, after=("verbose",), **kw)
    def cmd(name: str = typer.Argument("x"), verbose: bool = typer.Option(False, "--verbose"), *, fields: dict) -> None:
        seen.append((name, verbose, fields))

    app = typer.Typer()
    app.command()(cmd)
    app.command("other")(lambda: None)  # two commands: typer keeps `cmd` as a named sub-command
    return app, seen


def test_fields_become_options_with_their_flags_bounds_and_names():
    app, seen = _app()
    res = CliRunner().invoke(app, ["cmd", "y", "-s", "3", "--teacher", "t.pt", "--slow", "--lr", "0.5", "--verbose"])
    assert res.exit_code == 0, res.output
    assert seen == [("y", True, {"steps": 3, "teacher_path": "t.pt", "fast": False, "lr": 0.5})]
    res = CliRunner().invoke(app, ["cmd"])
    assert seen[-1] == ("x", False, {"steps": 1, "teacher_path": None, "fast": None, "lr": None})


def test_bounds_and_unexposed_fields_are_usage_errors():
    app, _ = _app()
    res = CliRunner().invoke(app, ["cmd", "--steps", "0"])
    assert res.exit_code == 2 and "--steps" in res.output
    assert CliRunner().invoke(app, ["cmd", "--hidden", "3"]).exit_code == 2


def test_overrides_and_exclude_are_per_command():
    app, seen = _app(exclude=("lr",), overrides={"steps": {"default": 5, "help": "Other."}})
    assert CliRunner().invoke(app, ["cmd", "--lr", "1"]).exit_code == 2
    assert CliRunner().invoke(app, ["cmd"]).exit_code == 0 and seen[-1][2]["steps"] == 5
    help_text = " ".join(CliRunner().invoke(app, ["cmd", "--help"], env={"COLUMNS": "200"}).output.split())
    assert "Other." in help_text and "Steps." not in help_text


def test_unknown_metadata_key_is_refused():
    @dataclass
    class Bad:
        x: int = field(default=0, metadata={"hepl": "typo"})

    with pytest.raises(TypeError, match=r"Bad.x: unknown command-line metadata \['hepl'\]"):
        config_command(Bad)(lambda *, fields: None)


@pytest.mark.parametrize(
    "command,cls_name", [("distill", "DistillConfig"), ("compare", "DistillConfig"), ("train", "TeacherConfig")]
)
def test_every_command_line_field_of_the_config_is_an_option(command, cls_name):
    """A config field given command-line metadata is an option of the commands built from it (unless the
    command excludes it): adding a field with its metadata is all it takes."""
    from policydistill.cli.app import app
    from policydistill.pipeline.distill import DistillConfig
    from policydistill.pipeline.teacher import TeacherConfig

    cls = {"DistillConfig": DistillConfig, "TeacherConfig": TeacherConfig}[cls_name]
    group = typer.main.get_command(app)
    cmd = group.commands[command]
    opts = {o for p in cmd.params if p.param_type_name == "option" for o in [*p.opts, *p.secondary_opts]}
    excluded = {
        "compare": {
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
        }
    }.get(command, set())
    for f in dataclasses.fields(cls):
        if f.metadata and f.name not in excluded:
            flags = f.metadata.get("flags") or ("--" + f.metadata.get("name", f.name).replace("_", "-"),)
            names = {n for decl in flags for n in decl.split("/")}
            if command == "compare" and f.name == "checkpoint":
                names = {"--teacher"}
            assert names <= opts, (command, f.name, names - opts)
