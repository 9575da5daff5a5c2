"""lerobot policy folders without lerobot: what ``save_pretrained`` writes, read and written natively.

A lerobot (0.4.x) policy folder holds ``config.json`` (the policy config, with
``input_features`` / ``output_features`` / ``normalization_mapping``), ``model.safetensors``,
``policy_preprocessor.json`` + ``policy_preprocessor_step_N_normalizer_processor.safetensors``
and ``policy_postprocessor.json`` + ``..._unnormalizer_processor.safetensors``. The normaliser
files store flat keys ``"<feature>.<stat>"`` (``observation.state.mean``, ``action.q01``, ...).

Architecture-specific key mapping lives with each policy (``pi0/convert.py``, ``smolvla/``);
this module only does the folder, the features and the stats. Safetensors only: a pickle is
refused (``checkpoint.read_safetensors``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..checkpoint import CheckpointError, read_safetensors, write_json, write_safetensors

IMAGE_PREFIX = "observation.images."


@dataclass
class LerobotFolder:
    path: Path
    config: dict[str, Any]
    state: dict[str, Tensor]
    stats: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    preprocessor: dict[str, Any] | None = None
    postprocessor: dict[str, Any] | None = None

    # -------------------------------------------------------------- features
    @property
    def policy_type(self) -> str:
        return str(self.config.get("type", ""))

    def cameras(self) -> list[str]:
        feats = self.config.get("input_features", {})
        return [k[len(IMAGE_PREFIX):] for k, v in feats.items() if v.get("type") == "VISUAL" and k.startswith(IMAGE_PREFIX)]

    def image_shape(self) -> list[int] | None:
        for k, v in self.config.get("input_features", {}).items():
            if v.get("type") == "VISUAL":
                return list(v["shape"])
        return None

    def state_dim(self) -> int:
        f = self.config.get("input_features", {}).get("observation.state")
        return int(f["shape"][0]) if f else 0

    def action_dim(self) -> int:
        f = self.config.get("output_features", {}).get("action")
        if not f:
            raise CheckpointError(f"{self.path}/config.json has no output feature 'action'")
        return int(f["shape"][0])

    def norm_mode(self, kind: str) -> str:
        return str(self.config.get("normalization_mapping", {}).get(kind, "MEAN_STD"))

    def tokenizer_name(self) -> str | None:
        for step in (self.preprocessor or {}).get("steps", []):
            if step.get("registry_name") == "tokenizer_processor":
                return step.get("config", {}).get("tokenizer_name")
        return None


def split_stats(flat: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """{"observation.state.mean": t} → {"observation.state": {"mean": t}} (stat = after the last dot)."""
    out: dict[str, dict[str, Tensor]] = {}
    for key, value in flat.items():
        feature, _, stat = key.rpartition(".")
        out.setdefault(feature, {})[stat] = value
    return out


def flat_stats(stats: dict[str, dict[str, Tensor]]) -> dict[str, Tensor]:
    return {f"{feature}.{stat}": torch.as_tensor(v).float() for feature, d in stats.items() for stat, v in d.items()}


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from None


def read_lerobot_folder(path: str | Path) -> LerobotFolder:
    """Read config, weights (safetensors only), pre/post-processor json and normaliser stats."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a folder; pass a lerobot policy folder (config.json + model.safetensors)")
    config = _read_json(path / "config.json")
    if config is None:
        raise CheckpointError(f"{path} has no config.json; is it a lerobot policy folder (save_pretrained output)?")
    weights = path / "model.safetensors"
    if not weights.exists():
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        raise CheckpointError(f"{path} has no model.safetensors" + (f" (found {pickles}: pickles are never loaded; "
                              "convert them to safetensors in a trusted environment)" if pickles else ""))
    folder = LerobotFolder(path, config, read_safetensors(weights),
                           preprocessor=_read_json(path / "policy_preprocessor.json"),
                           postprocessor=_read_json(path / "policy_postprocessor.json"))
    for proc in (folder.preprocessor, folder.postprocessor):
        for step in (proc or {}).get("steps", []):
            if step.get("registry_name") in ("normalizer_processor", "unnormalizer_processor") and step.get("state_file"):
                # the processor json names the file; it may only name one inside this folder
                # (checked as written, without following links, like lerobot's own layout)
                rel = os.path.normpath(str(step["state_file"]))
                if os.path.isabs(rel) or rel == ".." or rel.startswith(".." + os.sep) or rel == ".":
                    raise CheckpointError(f"{path}: a processor step's state_file {step['state_file']!r} points "
                                          "outside the policy folder; it must name a .safetensors file inside it. "
                                          "Re-save or re-download the policy.")
                for feature, d in split_stats(read_safetensors(path / rel)).items():
                    folder.stats.setdefault(feature, {}).update(d)
    return folder


def _features(cameras: list[str], image_size: int, state_dim: int, action_dim: int) -> tuple[dict, dict]:
    inputs: dict[str, Any] = {}
    if state_dim:
        inputs["observation.state"] = {"type": "STATE", "shape": [state_dim]}
    for cam in cameras:
        inputs[IMAGE_PREFIX + cam] = {"type": "VISUAL", "shape": [3, image_size, image_size]}
    return inputs, {"action": {"type": "ACTION", "shape": [action_dim]}}


def write_lerobot_folder(path: str | Path, config: dict[str, Any], state: dict[str, Tensor],
                         stats: dict[str, dict[str, Tensor]], cameras: list[str], image_size: int, state_dim: int,
                         action_dim: int, norm_map: dict[str, str], extra_pre_steps: list[dict] | None = None,
                         pre_steps_after_norm: list[dict] | None = None) -> Path:
    """Write a folder lerobot's ``from_pretrained`` and processor loaders read (atomic files).

    ``config`` is the policy-specific part (``type``, sizes, ...); features, normalisation map
    and the processor pipelines (rename → batch → [extra] → normaliser → [after]; unnormaliser →
    device) are filled in here.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    inputs, outputs = _features(cameras, image_size, state_dim, action_dim)
    full = {**config, "input_features": inputs, "output_features": outputs, "normalization_mapping": norm_map}
    write_json(path / "config.json", full)
    write_safetensors(path / "model.safetensors", state, metadata={"format": "pt"})
    features = {**inputs, **outputs}
    steps: list[dict] = [{"registry_name": "rename_observations_processor", "config": {"rename_map": {}}},
                         {"registry_name": "to_batch_processor", "config": {}}]
    steps += extra_pre_steps or []
    norm_index = len(steps)
    norm_file = f"policy_preprocessor_step_{norm_index}_normalizer_processor.safetensors"
    steps.append({"registry_name": "normalizer_processor",
                  "config": {"eps": 1e-8, "features": features, "norm_map": norm_map}, "state_file": norm_file})
    steps += pre_steps_after_norm or []
    steps.append({"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": None}})
    write_json(path / "policy_preprocessor.json", {"name": "policy_preprocessor", "steps": steps})
    flat = flat_stats(stats)
    write_safetensors(path / norm_file, flat)
    unnorm_file = "policy_postprocessor_step_0_unnormalizer_processor.safetensors"
    write_json(path / "policy_postprocessor.json", {"name": "policy_postprocessor", "steps": [
        {"registry_name": "unnormalizer_processor", "config": {"eps": 1e-8, "features": outputs, "norm_map": norm_map},
         "state_file": unnorm_file},
        {"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": None}}]})
    write_safetensors(path / unnorm_file, flat)
    return path
