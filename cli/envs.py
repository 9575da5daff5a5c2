"""``policydistill envs``: list the registered env ids and suites, run the env checker."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.table import Table

envs_app = typer.Typer(no_args_is_help=True, help="Simulation tasks: registered env ids, suites, env checker.")
console = Console(width=None if sys.stdout.isatty() else 130)


@envs_app.command("list")
def list_cmd(suites: bool = typer.Option(False, "--suites", help="List the suites and their ids instead.")) -> None:
    """Registered env ids with their instruction (or the suites)."""
    from ..envs import SUITES, expand, registered_ids, suite_names

    if suites:
        table = Table(title="suites")
        table.add_column("suite")
        table.add_column("env ids")
        for name in suite_names():
            ids = expand(name) if name not in SUITES else SUITES[name]
            table.add_row(name, f"{len(ids)}: " + ", ".join(i.split("/", 1)[1] for i in ids))
        console.print(table)
        return
    from ..envs.metaworld_env import INSTRUCTIONS

    table = Table(title="registered env ids")
    table.add_column("env id")
    table.add_column("instruction")
    for eid in registered_ids():
        name = eid.split("/", 1)[1]
        table.add_row(eid, INSTRUCTIONS.get(name, "(per task: see the suite)") if eid.startswith("metaworld/") else "-")
    console.print(table)


@envs_app.command("check")
def check_cmd(
    task: str = typer.Argument("metaworld/mt10", help="Env ids or suites, comma-separated."),
    image_size: int = typer.Option(64, "--image-size"),
    steps: int = typer.Option(5, "--steps"),
    gym_check: bool = typer.Option(False, "--gym-check", help="Also run gymnasium's check_env."),
    convention: str = typer.Option(
        "policydistill", "--convention", help="Observation convention: policydistill (ours) or lerobot."
    ),
) -> None:
    """Run the env checker (spaces, seeding determinism, render shape, info keys) on each id."""
    from ..envs import expand
    from ..envs.checker import check

    table = Table(title="env checker")
    for col in ("env id", "result", "state dim", "images", "instruction"):
        table.add_column(col)
    failed = 0
    for eid in expand(task):
        try:
            rep = check(eid, image_size=image_size, steps=steps, gym_check=gym_check, convention=convention)
            table.add_row(
                eid,
                "[green]ok[/] " + ", ".join(rep.passed),
                str(rep.state_dim),
                ", ".join(f"{c} {s}" for c, s in rep.image_shapes.items()),
                rep.instruction,
            )
        except AssertionError as exc:
            failed += 1
            table.add_row(eid, f"[red]FAIL[/] {exc}", "", "", "")
    console.print(table)
    if failed:
        raise typer.Exit(1)
