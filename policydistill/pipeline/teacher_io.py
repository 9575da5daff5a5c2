"""Find and load a teacher: a policydistill checkpoint, a lerobot policy folder, or the
bundled default."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..checkpoint import CheckpointError, load_model, read_model_config

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
            "or pass a lerobot pi0/pi0.5/SmolVLA folder")
    if not folder.exists():
        raise CheckpointError(f"checkpoint folder {folder} does not exist: pass the folder that holds config.json and "
                              "model.safetensors (e.g. runs/teacher/teacher), or leave --checkpoint out for the bundled teacher")
    if is_lerobot_folder(folder):
        kind = json.loads((folder / "config.json").read_text())["type"]
        from ..zoo import ARCHITECTURES

        cls = ARCHITECTURES.load(kind)
        return cls.from_lerobot(folder, tokenizer=tokenizer), folder
    return load_model(folder), folder


def provenance(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "config.json").read_text()).get("policydistill", {}) or {}
    except (OSError, json.JSONDecodeError):
        return {}


def resolve_data(spec: str | Path) -> Path:
    """``--data``: a local dataset path, or a Hub dataset id (``lerobot/pusht``) found in the Hugging Face
    cache or lerobot's (``$HF_LEROBOT_HOME``); a miss says which folders were searched."""
    from ..policies.hub import resolve

    return resolve(spec, repo_type="dataset", what="dataset")
