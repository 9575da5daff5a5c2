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
    """(policy, folder). ``None`` = the bundled teacher."""
    folder = Path(checkpoint) if checkpoint else BUNDLED_TEACHER
    if checkpoint is None and not (folder / "model.safetensors").exists():
        raise CheckpointError(
            f"no bundled teacher at {folder}: this version does not ship one yet (docs/bundled_teacher.md). "
            "Train one with `policydistill train pi0 --preset small` and pass --checkpoint runs/teacher/teacher, "
            "or pass a lerobot pi0/pi0.5/SmolVLA folder")
    if not folder.exists():
        raise CheckpointError(f"checkpoint folder {folder} does not exist: pass the folder that holds config.json and "
                              "model.safetensors (e.g. runs/teacher/teacher), or leave --checkpoint out for the bundled teacher")
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
