"""The ``policydistill`` command: thin typer wrappers that build a config and call the library."""

from __future__ import annotations

import json
import sys

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Distil flow-matching robot policies into 1-step policies, and prove it.",
)
console = Console(width=None if sys.stdout.isatty() else 160)


@app.callback()
def _root() -> None:
    """policydistill: distil flow-matching robot policies into 1-step policies, and prove it."""


@app.command("methods")
def methods_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the registered distillation methods."""
    from ..methods import method_table

    rows = method_table()
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table(title="policydistill methods")
    for col in ("name", "teacher", "sampling", "extra networks", "NFE supported", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["name"],
            r["teacher"],
            r["sampling"],
            ", ".join(r["extra_networks"]) or "-",
            r["nfe_supported"],
            r["description"],
        )
    console.print(table)


from .deploy import export as _export  # noqa: E402
from .deploy import latency as _latency

app.command("latency")(_latency)
app.command("export")(_export)

from .pipeline import compare_cmd as _compare  # noqa: E402
from .pipeline import distill_cmd as _distill
from .pipeline import train_cmd as _train

app.command("train")(_train)
app.command("distill")(_distill)
app.command("compare")(_compare)

from .media import bench_media_cmd as _bench_media  # noqa: E402
from .media import media_app as _media_app

app.add_typer(_media_app, name="media")
bench_app = typer.Typer(no_args_is_help=True, help="Shipped benchmarks (rich table + JSON + PNG).")
app.add_typer(bench_app, name="bench")
bench_app.command("media")(_bench_media)
from .bench import bench_methods_cmd as _bench_methods  # noqa: E402

bench_app.command("methods")(_bench_methods)
from .policies import bench_policies_cmd as _bench_policies  # noqa: E402

bench_app.command("policies")(_bench_policies)
from .bench_distill import bench_distill_cmd as _bench_distill  # noqa: E402

bench_app.command("distill")(_bench_distill)
from .peer import bench_peer_cmd as _bench_peer  # noqa: E402

bench_app.command("peer")(_bench_peer)

from .data_io import data_app as _data_app  # noqa: E402  (`data` sub-app; other data commands register on it)

app.add_typer(_data_app, name="data")
from . import data as _data_generate  # noqa: E402,F401  (registers `data generate` on the data sub-app)
from .data_io import bench_data_cmd as _bench_data  # noqa: E402

bench_app.command("data")(_bench_data)
from .eval import eval_cmd as _eval_cmd  # noqa: E402

app.command("eval")(_eval_cmd)
from .eval import bench_rollouts_cmd as _bench_rollouts  # noqa: E402

bench_app.command("rollouts")(_bench_rollouts)
from .eval import bench_realtime_cmd as _bench_realtime  # noqa: E402

bench_app.command("realtime")(_bench_realtime)
from .envs import envs_app as _envs_app  # noqa: E402

app.add_typer(_envs_app, name="envs")


from .plan import bench_distill_memory_cmd as _bench_distill_memory  # noqa: E402
from .plan import plan_app as _plan_app  # noqa: E402
from .runs import runs_app as _runs_app  # noqa: E402

app.add_typer(_plan_app, name="plan")
bench_app.command("distill-memory")(_bench_distill_memory)

app.add_typer(_runs_app, name="runs")


def main() -> None:
    from .errors import run_app

    run_app(app)


if __name__ == "__main__":
    main()
