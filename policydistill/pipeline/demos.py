"""Demonstrations for a task list: reuse a dataset on disk, or generate the scripted
(multimodal) demonstrations once and cache them as a zarr store."""

from __future__ import annotations

from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def ensure_demos(
    tasks: list[str],
    path: Path,
    episodes_per_task: int,
    image_size: int,
    multimodal: bool = True,
    action_noise: float = 0.1,
    seed: int = 0,
) -> Path:
    """``path`` holds ``episodes_per_task`` successful demonstrations of every task in ``tasks``
    (generated and appended task by task if missing; a crash leaves the finished tasks)."""
    from ..data.zarr_store import ZarrEpisodeStore
    from ..envs.scripted import GenerateConfig, generate

    path = Path(path)
    have: dict[str, int] = {}
    if path.exists():
        store = ZarrEpisodeStore(path)
        for i in range(len(store)):
            task = store.episode_record(i)["task"]
            have[task] = have.get(task, 0) + 1
    for task in tasks:
        missing = episodes_per_task - have.get(task, 0)
        if missing <= 0:
            continue
        cfg = GenerateConfig(
            task=task,
            episodes=missing,
            multimodal=multimodal,
            action_noise=action_noise,
            seed=seed + have.get(task, 0),
            image_size=image_size,
        )
        columns = [
            TextColumn(f"[bold]demos {task}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        ]
        with Progress(*columns) as progress:  # rich's own console, which the CLI points at stderr
            bar = progress.add_task("demos", total=missing, info="")
            state = {"ok": 0}

            def on_attempt(res, attempt: int, state: dict = state, bar: int = bar) -> None:  # bound to this task
                state["ok"] += int(res.success)
                progress.update(bar, completed=state["ok"], info=f"{state['ok']}/{attempt} successful")

            ZarrEpisodeStore.write(path, generate(cfg, on_attempt), fps=80.0, mode="append")
    return path
