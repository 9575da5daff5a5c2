"""``policydistill eval``: closed-loop success of a checkpoint (or the scripted experts) in sim."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

console = Console(width=None if sys.stdout.isatty() else 130)

BUILTIN = {
    "scripted": "Meta-World scripted experts (privileged state, one mode)",
    "scripted-multimodal": "multimodal scripted experts (privileged state, mode drawn per episode)",
    "random": "uniform random actions",
}


def _action_dim(task: str) -> int:
    """The action size of the task family (all tasks of one evaluation share it)."""
    from ..envs import expand

    ids = expand(task)
    families = {i.split("/")[0] for i in ids}
    if len(families) > 1:
        raise ValueError(f"a random policy needs one action size, but {task!r} mixes {sorted(families)} tasks")
    return 7 if families == {"libero"} else 4  # LIBERO: 6-D pose delta + gripper; Meta-World: xyz + gripper


def _load_policy(spec: str, seed: int, task: str) -> tuple[Any, str]:
    from ..eval import RandomPolicy, ScriptedPolicy

    if spec == "scripted":
        return ScriptedPolicy(multimodal=False, seed=seed), spec
    if spec == "scripted-multimodal":
        return ScriptedPolicy(multimodal=True, seed=seed), spec
    if spec == "random":
        return RandomPolicy(action_dim=_action_dim(task), seed=seed), spec
    folder = Path(spec)
    if not folder.is_dir():
        raise FileNotFoundError(f"{spec!r} is neither a checkpoint folder nor one of {', '.join(BUILTIN)}")
    try:  # a policydistill checkpoint or a lerobot policy folder
        from ..pipeline.teacher_io import load_teacher

        policy, _ = load_teacher(folder)
    except ImportError:
        from ..checkpoint import load_model

        policy = load_model(folder)
    if hasattr(policy, "eval"):
        policy.eval()
    return policy, folder.name


def eval_cmd(
    policy: str = typer.Argument(
        ..., help="Checkpoint folder (policydistill or lerobot), or 'scripted', 'scripted-multimodal', 'random'."
    ),
    task: str = typer.Option(
        "metaworld/push-v3",
        "--task",
        "-t",
        help="Env ids / suites, comma-separated (metaworld/mt10, push-v3,reach-v3, libero/libero_spatial...).",
    ),
    nfe: str = typer.Option(
        "",
        "--nfe",
        help="Denoising steps to evaluate, comma-separated (e.g. 1,10); "
        "default: the policy's own. Ignored by scripted/random policies.",
    ),
    mode: str = typer.Option(
        "",
        "--mode",
        help="Sampling mode for flow policies: flowmap | diagonal | consistency | "
        "consistency_deterministic (default: the one stored in the checkpoint).",
    ),
    episodes: int = typer.Option(10, "--episodes", "-n", help="Episodes per task."),
    workers: int = typer.Option(1, "--workers", "-w", help="Env worker processes (0: in this process)."),
    batch_size: int = typer.Option(0, "--batch-size", help="Concurrent episodes (policy batch); 0: 4 per worker."),
    n_action_steps: int = typer.Option(0, "--n-action-steps", help="Actions executed per chunk; 0: the policy's own."),
    seed: int = typer.Option(0, "--seed", help="Base of the episode seeds (same seed = same initial states)."),
    image_size: int = typer.Option(
        0, "--image-size", help="Camera size the env renders; 0: the policy's input size (config.image_size), else 96."
    ),
    max_steps: int = typer.Option(0, "--max-steps", help="Episode limit; 0: the env's default."),
    convention: str = typer.Option(
        "auto",
        "--convention",
        help="Env observation convention: lerobot (lerobot's camera names, image sizes, rendering, state and "
        "instructions), policydistill (ours), or auto: lerobot for policies converted from lerobot, ours otherwise.",
    ),
    camera_map: str = typer.Option(
        "",
        "--camera-map",
        help="Env camera -> policy camera, e.g. agentview=image,wrist=image2; default: matched by name and view.",
    ),
    json_out: Path = typer.Option(None, "--json", help="Write the results JSON here."),
    png: Path = typer.Option(None, "--png", help="Write a success plot here (default: next to --json)."),
    video_dir: Path = typer.Option(None, "--video-dir", help="Write MP4s of the first episodes of each task here."),
    videos_per_task: int = typer.Option(2, "--videos-per-task"),
    realtime: str = typer.Option(
        None,
        "--realtime",
        help="Latency in the loop (chunk policies): the world keeps moving while the policy computes. zero | "
        "measured | a device profile (pi05-a800, pi0-4090, ...) | a profile or `policydistill latency` report "
        "JSON. Default: off.",
    ),
    execution: str = typer.Option(
        "sync",
        "--execution",
        help="With --realtime: sync (hold while waiting), async (keep executing the chunk) or rtc (async, and the "
        "policy continues the actions committed while it computes: real-time chunking).",
    ),
    threads: int = typer.Option(
        None,
        "--threads",
        help="Torch CPU threads, 1..(CPU cores) (default: torch's own choice). On a machine running other "
        "jobs, 1 keeps torch's threads from spinning against them.",
    ),
) -> None:
    """Evaluate a policy for N episodes per task on fixed seeds; prints a table with Wilson 95% intervals."""
    from ..eval import EvalConfig, evaluate_policy
    from ..eval.conventions import CONVENTIONS, parse_camera_map
    from ..eval.report import plot_runs, results_table, write_json
    from ..pipeline.run_options import apply_threads
    from .options import check_output_file

    apply_threads(threads)

    if convention not in ("auto", *CONVENTIONS):
        raise ValueError(f"--convention {convention!r}: use auto, {' or '.join(CONVENTIONS)}")
    cameras = parse_camera_map(camera_map) or None
    check_output_file(json_out, "--json")
    check_output_file(png, "--png")
    if realtime is not None:
        from ..eval.realtime import check_execution, load_profile

        load_profile(realtime)  # a typo or a profile without numbers fails before the policy loads
        check_execution(execution)
        if policy in BUILTIN:
            raise ValueError(f"--realtime needs a chunk policy (a checkpoint); {policy!r} acts one step at a time")
    model, name = _load_policy(policy, seed, task)
    nfes: list[int | None] = [int(x) for x in nfe.split(",") if x.strip()] or [None]
    if policy in BUILTIN and nfes != [None]:
        console.print(f"[yellow]--nfe is ignored for the {policy!r} policy[/]")
        nfes = [None]
    runs = []
    for k in nfes:
        cfg = EvalConfig(
            tasks=task,
            episodes=episodes,
            nfe=k,
            mode=mode or None,
            workers=workers,
            batch_size=batch_size or None,
            n_action_steps=n_action_steps or None,
            seed=seed,
            image_size=image_size or None,
            max_episode_steps=max_steps or None,
            video_dir=str(video_dir / (f"nfe{k}" if k else name)) if video_dir else None,
            videos_per_task=videos_per_task,
            realtime=realtime,
            execution=execution,
            convention=None if convention == "auto" else convention,
            camera_map=cameras,
        )
        res = evaluate_policy(model, cfg)
        res["policy"] = name
        runs.append(res)
    first = runs[0]
    console.print(
        f"env convention: {first['convention']} ({first['convention_reason']})"
        + (f"; cameras env -> policy: {first['camera_map']}" if first.get("camera_map") else "")
    )
    title = f"{name}: {episodes} episodes per task, seed {seed}"
    if realtime is not None:
        title += f", latency in the loop: {realtime} ({execution})"
    console.print(results_table(runs, title=title))
    payload = {"policy": name, "source": policy, "tasks": runs[0]["tasks"], "runs": runs}
    if json_out:
        write_json(json_out, payload)
        png = png or json_out.with_suffix(".png")
        console.print(f"[green]wrote[/] {json_out}")
    if png:
        plot_runs(runs, png)
        console.print(f"[green]wrote[/] {png}")


def bench_rollouts_cmd(
    task: str = typer.Option("metaworld/push-v3", "--task", "-t"),
    workers: str = typer.Option("1,2", "--workers", "-w", help="Worker counts to compare, comma-separated."),
    steps: int = typer.Option(400, "--steps", help="Env steps per measurement."),
    image_size: int = typer.Option(96, "--image-size"),
    slots_per_worker: int = typer.Option(2, "--slots-per-worker", help="Envs stepped per worker per round trip."),
    json_out: Path = typer.Option(Path("runs/bench_rollouts.json"), "--json"),
) -> None:
    """Env steps/s including rendering, 1 vs 2 workers (plus a state-only row): table + JSON."""
    from rich.table import Table

    from ..bench.rollouts import RolloutBenchConfig, run
    from ..eval.report import write_json
    from .options import check_output_file

    check_output_file(json_out, "--json")
    cfg = RolloutBenchConfig(
        task=task,
        workers=tuple(int(w) for w in workers.split(",")),
        steps=steps,
        image_size=image_size,
        slots_per_worker=slots_per_worker,
    )
    rows = run(
        cfg,
        progress=lambda r: console.print(
            f"workers={r['workers']} render={r['render']}: {r['steps_per_second']:.1f} steps/s"
        ),
    )
    table = Table(title=f"rollout throughput: {task}, {image_size} px corner2, random actions")
    for col in (
        "workers",
        "slots",
        "render",
        "steps",
        "seconds",
        "steps/s",
        "speedup",
        "env CPU ms/step",
        "steps/s on idle cores",
        "load avg (1 min)",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            str(r["workers"]),
            str(r["slots"]),
            "yes" if r["render"] else "no (state only)",
            str(r["steps"]),
            f"{r['seconds']:.1f}",
            f"{r['steps_per_second']:.1f}",
            f"{r['speedup_vs_first']:.2f}×",
            f"{r['worker_cpu_ms_per_step']:.1f}",
            f"{r['idle_machine_steps_per_second']:.0f}",
            f"{r['load_average_1min']:.1f} / {r['cpu_count']} cores",
        )
    console.print(table)
    write_json(
        json_out,
        {
            "config": {
                "task": task,
                "workers": cfg.workers,
                "steps": steps,
                "image_size": image_size,
                "slots_per_worker": slots_per_worker,
            },
            "rows": rows,
        },
    )
    console.print(f"[green]wrote[/] {json_out}")


def bench_realtime_cmd(
    teacher: str = typer.Option("", "--teacher", help="Teacher checkpoint (default: the bundled one)."),
    student: str = typer.Option(
        "", "--student", help="Distilled student checkpoint (omitted: teacher and naive only)."
    ),
    rtc_student: str = typer.Option(
        "",
        "--rtc-student",
        help="A student distilled with training-time real-time chunking (--rtc-max-delay), shown as student-rtc@N.",
    ),
    task: str = typer.Option(
        "metaworld/moving", "--task", "-t", help="Env ids / suites (the dynamic tasks by default)."
    ),
    episodes: int = typer.Option(50, "--episodes", "-n", help="Paired episodes per task and point."),
    profiles: str = typer.Option(
        "zero,measured,pi05-a800,pi0-4090",
        "--profiles",
        help="Comma-separated latency profiles: zero, measured, device profiles, profile/latency-report JSON files.",
    ),
    execution: str = typer.Option(
        "sync,async",
        "--execution",
        "--executions",
        help="Comma-separated execution modes: sync, async, rtc (real-time chunking).",
    ),
    teacher_nfe: int = typer.Option(10, "--teacher-nfe"),
    student_nfe: int = typer.Option(1, "--student-nfe", help="NFE of the student and of the naive teacher."),
    n_action_steps: int = typer.Option(0, "--n-action-steps", help="Actions executed per chunk; 0: the policy's own."),
    seed: int = typer.Option(0, "--seed"),
    workers: int = typer.Option(1, "--workers", "-w", help="Env worker processes (0: in this process)."),
    max_steps: int = typer.Option(0, "--max-steps", help="Episode limit; 0: the task's."),
    threads: int = typer.Option(1, "--threads", help="Torch CPU threads (measured latency depends on it)."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --out: the points it finished are kept, the rest run."
    ),
    out: Path = typer.Option(Path("runs/bench_realtime"), "--out", help="Folder for results.json and the PNG."),
) -> None:
    """Success vs latency: teacher@10, naive@1, student@1 (+ student-rtc@1), sync/async (+ rtc), same seeds."""
    from rich.table import Table

    from ..bench.realtime import RealtimeBenchConfig, default_variants, run_realtime_bench
    from ..pipeline.teacher_io import BUNDLED_TEACHER

    def split(text: str) -> tuple[str, ...]:
        return tuple(x.strip() for x in text.split(",") if x.strip())

    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    cfg = RealtimeBenchConfig(
        tasks=task,
        episodes=episodes,
        profiles=split(profiles),
        executions=split(execution),
        teacher_nfe=teacher_nfe,
        student_nfe=student_nfe,
        n_action_steps=n_action_steps or None,
        seed=seed,
        workers=workers,
        max_episode_steps=max_steps or None,
    )
    import torch

    torch.set_num_threads(threads)
    teacher_policy, _ = _load_policy(teacher or str(BUNDLED_TEACHER), seed, task)
    student_policy = _load_policy(student, seed, task)[0] if student else None
    rtc_policy = _load_policy(rtc_student, seed, task)[0] if rtc_student else None
    if student_policy is None and rtc_policy is None:
        console.print("[yellow]no --student: running the teacher and the naive teacher only[/]")
    if rtc_policy is not None and not getattr(getattr(rtc_policy, "config", None), "rtc_training_max_delay", 0):
        console.print(
            f"[yellow]--rtc-student {rtc_student} was not distilled with training-time RTC (no --rtc-max-delay): "
            "in rtc execution it is guided like the others[/]"
        )
    variants = default_variants(teacher_policy, student_policy, cfg, rtc_student=rtc_policy)
    payload = run_realtime_bench(
        variants,
        cfg,
        out,
        resume=resume,
        on_point=lambda r: console.print(
            f"{r['profile']:>12} {r['execution']:>5} {r['variant']:>14}: success {r['success_rate']:.1%} "
            f"({r['seconds']:.0f} s)"
        ),
    )
    table = Table(title=f"bench realtime: {task}, {episodes} paired episodes per task and point, seed {seed}")
    for col in (
        "profile",
        "execution",
        "variant",
        "inference ms",
        "success",
        "95% CI",
        "steps to success",
        "holding",
        "chunk jump",
        "jerk",
    ):
        table.add_column(col, justify="left" if col in ("profile", "execution", "variant") else "right")

    def fmt(x: Any, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    for r in payload["rows"]:
        lo, hi = r["success_ci95"]
        table.add_row(
            r["profile"],
            r["execution"],
            r["variant"],
            fmt(r["inference_ms"], ".0f"),
            f"{r['success_rate']:.1%}",
            f"[{lo:.2f}, {hi:.2f}]",
            fmt(r["steps_to_success"], ".1f"),
            fmt(r["hold_fraction"], ".0%"),
            fmt(r["chunk_jump"], ".3f"),
            fmt(r["jerk"], ".3f"),
        )
    console.print(table)
    for name, p in payload["profiles"].items():
        if p.get("lower_bound"):
            console.print(f"[yellow]{name}: its source gives no prefix time; denoising only (a lower bound)[/]")
    console.print(f"[green]wrote[/] {payload['json']} and {payload['png']}")
