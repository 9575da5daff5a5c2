"""Find and load a teacher: a policydistill checkpoint, a lerobot policy folder, or the
bundled default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..checkpoint import CheckpointError, check_finite, check_provenance, load_model, read_model_config

#: the bundled default teacher (trained by the command in its README)
BUNDLED_TEACHER = Path(__file__).resolve().parent.parent / "assets" / "teacher"


def is_lerobot_folder(folder: Path) -> bool:
    cfg = folder / "config.json"
    if not cfg.exists():
        return False
    data = read_model_config(folder)  # a damaged config.json is a CheckpointError that says so
    return "architecture" not in data and data.get("type") in ("pi0", "pi05", "smolvla")


def load_teacher(checkpoint: str | Path | None, tokenizer: str | None = None) -> tuple[Any, Path]:
    """(policy, folder). ``None`` = the bundled teacher; a Hub id (``lerobot/pi05_base``) is looked up
    in the local Hugging Face cache (and downloaded when online, see ``policies.hub``)."""
    from ..policies.hub import resolve

    folder = resolve(checkpoint, what="checkpoint") if checkpoint else BUNDLED_TEACHER
    if checkpoint is None and not (folder / "model.safetensors").exists():
        raise CheckpointError(
            f"no bundled teacher at {folder}: this version does not ship one yet (docs/bundled_teacher.md). "
            "Train one with `policydistill train pi0 --preset small` and pass --checkpoint runs/teacher/teacher, "
            "or pass a lerobot pi0/pi0.5/SmolVLA folder"
        )
    if not folder.exists():
        raise CheckpointError(
            f"checkpoint folder {folder} does not exist: pass the folder that holds config.json and "
            "model.safetensors (e.g. runs/teacher/teacher), or leave --checkpoint out for the bundled teacher"
        )
    if is_lerobot_folder(folder):
        kind = read_model_config(folder)["type"]
        from ..zoo import ARCHITECTURES

        cls = ARCHITECTURES.load(kind)
        policy = cls.from_lerobot(folder, tokenizer=tokenizer)
        check_finite(policy.state_dict(), str(folder))  # stats files feed the normaliser too
        return policy, folder
    return load_model(folder), folder


def provenance(folder: Path) -> dict[str, Any]:
    """The ``policydistill`` record of a checkpoint's config.json (tasks, dataset, recipe); {} when
    the checkpoint has none (a lerobot folder). A record of the wrong shape is refused with the
    field named (``checkpoint.check_provenance``)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return {}
    return check_provenance(read_model_config(folder), path)


def resolve_data(spec: str | Path) -> Path:
    """``--data``: a local dataset path, or a Hub dataset id (``lerobot/pusht``) found in the Hugging Face
    cache or lerobot's (``$HF_LEROBOT_HOME``); a miss says which folders were searched."""
    from ..policies.hub import resolve

    return resolve(spec, repo_type="dataset", what="dataset")


def export_lerobot_student(student: Any, teacher_dir: Path, out: Path, report: dict[str, Any]) -> dict[str, Any]:
    """Write the student as a lerobot policy folder beside our own checkpoint (``<out>/student_lerobot``),
    with a model card, when the teacher was a lerobot checkpoint (then its sizes and tokenizer are ones
    lerobot builds). Returns what to record in the report: the folder, or why none was written (a
    multi-step flow-map student cannot be folded into lerobot's sampler; the reason is the export's)."""
    from ..checkpoint import CheckpointError

    if not is_lerobot_folder(Path(teacher_dir)):
        return {"written": False, "reason": "the teacher is not a lerobot checkpoint"}
    folder = out / "student_lerobot"
    try:
        student.to_lerobot(folder)
    except CheckpointError as exc:
        return {"written": False, "reason": str(exc)}
    (folder / "README.md").write_text(model_card(student, teacher_dir, report))
    return {"written": True, "path": str(folder)}


def model_card(student: Any, teacher_dir: Path, report: dict[str, Any]) -> str:
    """A short model card: what was distilled from what, how, and the report's numbers (same seeds)."""
    cfg = student.config
    lines = [
        "---",
        "library_name: lerobot",
        f"tags: [robotics, {student.architecture}, policydistill, distillation]",
        "---",
        "",
        f"# {student.architecture} student, {cfg.num_inference_steps}-step (policydistill)",
        "",
        f"Distilled from `{teacher_dir}` with **{report.get('method', '?')}** to **{report.get('steps', '?')} denoising "
        f"step(s)** (NFE). lerobot runs it unchanged: its own sampler with `num_inference_steps = 1` computes the "
        "student's 1-step map (the student's target-time branch is folded into the weights).",
        "",
        f"Command: `{report.get('command', '')}`",
        "",
        "| variant | NFE | success | action MSE | chunk distance to teacher | denoise p50 ms |",
        "|---|---|---|---|---|---|",
    ]
    for r in report.get("variants", []):
        lines.append(
            f"| {r['label']} | {r['nfe']} | {r['success_rate']:.3f} | {r['action_mse']:.4g} | "
            f"{r['teacher_chunk_distance']:.4g} | {r['latency_ms']['denoise_p50']:.2f} |"
        )
    if "denoise_speedup" in report:
        lines += [
            "",
            f"Denoising speedup teacher/student: {report['denoise_speedup']:.1f}x; end to end "
            f"{report.get('e2e_speedup', float('nan')):.1f}x (same machine, same run).",
        ]
    lines += [
        "",
        f"Tasks: {', '.join(report.get('tasks', []))}. Episodes and seeds are the same for every variant.",
        "",
    ]
    return "\n".join(lines)
