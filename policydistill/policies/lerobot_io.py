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
from .base import SINGLE_IMAGE_CAMERA, SINGLE_IMAGE_KEY

IMAGE_PREFIX = "observation.images."


def camera_names(input_features: dict[str, Any]) -> list[str]:
    """The camera names of lerobot ``input_features``: ``observation.images.<cam>`` -> ``cam`` and
    lerobot's single ``observation.image`` (its Meta-World env and datasets) -> ``image``."""
    out = []
    for key, feature in input_features.items():
        if not isinstance(feature, dict) or feature.get("type") != "VISUAL":
            continue
        if key.startswith(IMAGE_PREFIX):
            out.append(key[len(IMAGE_PREFIX) :])
        elif key == SINGLE_IMAGE_KEY:
            out.append(SINGLE_IMAGE_CAMERA)
    return out


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
        return camera_names(self.config.get("input_features", {}))

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

    def step(self, name: str, post: bool = False) -> dict[str, Any] | None:
        """The first processor step registered as ``name`` (pre- or postprocessor)."""
        for step in ((self.postprocessor if post else self.preprocessor) or {}).get("steps", []):
            if step.get("registry_name") == name:
                return step
        return None

    def tokenizer_name(self) -> str | None:
        """The tokenizer the preprocessor names. A tokenizer saved inside the checkpoint (lerobot's
        ``"artifacts"``, ``"tokenizer_name": "tokenizer"``) or any name that is a folder beside
        config.json resolves to that folder, as lerobot resolves it — never against the working
        directory. Hub ids are returned as they are (``load_tokenizer`` finds them in the cache)."""
        step = self.step("tokenizer_processor")
        if step is None:
            return None
        name = (step.get("artifacts") or {}).get("tokenizer_name") or step.get("config", {}).get("tokenizer_name")
        if name is None:
            return None
        local = self.path / name
        if not Path(name).is_absolute() and ".." not in Path(name).parts and local.exists():
            return str(local.resolve())
        if step.get("artifacts"):
            raise CheckpointError(
                f"{self.path}/policy_preprocessor.json declares the tokenizer artifact {name!r} but "
                f"{local} is missing: the checkpoint was copied incompletely"
            )
        return str(name)

    def relative_action_mask(self) -> list[bool] | None:
        """lerobot's relative actions (≥ 0.5.1) as a mask over the action dims, or None when the
        policy predicts absolute actions. The preprocessor's ``relative_actions_processor`` step is
        what lerobot runs; config.json's ``use_relative_actions`` is the fallback. The mask is built
        as lerobot builds it: an action dim stays absolute when an ``exclude_joints`` entry equals or
        is contained in its (lower-cased) name."""
        step = self.step("relative_actions_processor")
        if step is not None:
            c = step.get("config", {})
            enabled, exclude, names = c.get("enabled", False), c.get("exclude_joints") or [], c.get("action_names")
        else:
            enabled = self.config.get("use_relative_actions", False)
            exclude = self.config.get("relative_exclude_joints") or []
            names = self.config.get("action_feature_names")
        if not enabled:
            return None
        dim = self.action_dim()
        tokens = [str(x).lower() for x in exclude if x]
        if not tokens or names is None:
            return [True] * dim
        mask = [not any(t == str(n).lower() or t in str(n).lower() for t in tokens) for n in list(names)[:dim]]
        return mask + [True] * (dim - len(mask))

    def check_supported(self) -> None:
        """Refuse what we would otherwise run differently from lerobot, naming the field."""
        for key in ("use_visual_memory", "use_proprioceptive_memory"):
            if self.config.get(key):
                raise CheckpointError(
                    f"{self.path}/config.json sets {key}=true (pi0.5 short-horizon memory): the policy conditions on "
                    "past frames/states, which policydistill does not implement, and running it single-frame would "
                    "give different actions. Use a checkpoint trained without memory."
                )
        rel = self.step("relative_actions_processor")
        absolute = self.step("absolute_actions_processor", post=True)
        if (rel is not None and rel.get("config", {}).get("enabled")) != (
            absolute is not None and absolute.get("config", {}).get("enabled")
        ) and (rel or absolute):
            raise CheckpointError(
                f"{self.path}: the relative_actions_processor and absolute_actions_processor steps "
                "disagree (one enabled, one not); lerobot would not return the actions it trained on"
            )

    def lerobot_version_hint(self) -> str | None:
        """ "0.4" / "0.5+" when the files tell which lerobot wrote them, else None.

        config.json alone cannot tell 0.4.x from 0.5.x (same fields). Signs of ≥ 0.5: fields added
        in 0.5.1 (pi0/pi0.5 ``use_relative_actions``) and 0.6.0 (``pretrained_revision``, every
        policy), the relative/absolute action steps, tokenizer ``artifacts`` (0.6.2), and
        ``cudnn_deterministic`` in train_config.json (0.5.0); a train_config.json without it was
        written by 0.4.x. A ``reference.json`` that records the lerobot version (our parity fixtures)
        is believed."""
        ref = self.path / "reference.json"
        if ref.is_file():
            version = str(((_read_json(ref) or {}).get("versions") or {}).get("lerobot", ""))
            if version:
                return "0.4" if version.startswith(("0.3", "0.4")) else "0.5+"
        if any(
            k in self.config
            for k in ("use_relative_actions", "pretrained_revision", "use_visual_memory", "rtc_training_max_delay")
        ):
            return "0.5+"
        if self.step("relative_actions_processor") or self.step("absolute_actions_processor", post=True):
            return "0.5+"
        tok = self.step("tokenizer_processor")
        if tok is not None and tok.get("artifacts"):
            return "0.5+"
        train = self.path / "train_config.json"
        if train.is_file():
            data = _read_json(train) or {}
            return "0.5+" if "cudnn_deterministic" in data else "0.4"
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


def read_lerobot_folder(path: str | Path, weights: bool = True) -> LerobotFolder:
    """Read config, weights (safetensors only), pre/post-processor json and normaliser stats.

    ``path`` is a folder or a Hub id (``org/name``) in the local Hugging Face cache (``hub.resolve``)."""
    from .hub import resolve

    path = resolve(path, what="checkpoint")
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a folder; pass a lerobot policy folder (config.json + model.safetensors)")
    config = _read_json(path / "config.json")
    if config is None:
        raise CheckpointError(f"{path} has no config.json; is it a lerobot policy folder (save_pretrained output)?")
    if not weights:  # config and processors only
        return LerobotFolder(
            path,
            config,
            {},
            preprocessor=_read_json(path / "policy_preprocessor.json"),
            postprocessor=_read_json(path / "policy_postprocessor.json"),
        )
    weights_file = path / "model.safetensors"
    if not weights_file.exists():
        if (path / "adapter_config.json").exists() or config.get("use_peft"):
            raise CheckpointError(
                f"{path} holds PEFT adapters only (no model.safetensors): merge the adapters into "
                "the base policy with lerobot first and pass the merged folder"
            )
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        raise CheckpointError(
            f"{path} has no model.safetensors"
            + (
                f" (found {pickles}: pickles are never loaded; convert them to safetensors in a trusted environment)"
                if pickles
                else ""
            )
        )
    folder = LerobotFolder(
        path,
        config,
        read_safetensors(weights_file),
        preprocessor=_read_json(path / "policy_preprocessor.json"),
        postprocessor=_read_json(path / "policy_postprocessor.json"),
    )
    for proc in (folder.preprocessor, folder.postprocessor):
        for step in (proc or {}).get("steps", []):
            if step.get("registry_name") in ("normalizer_processor", "unnormalizer_processor") and step.get(
                "state_file"
            ):
                # the processor json names the file; it may only name one inside this folder
                # (checked as written, without following links, like lerobot's own layout)
                rel = os.path.normpath(str(step["state_file"]))
                if os.path.isabs(rel) or rel == ".." or rel.startswith(".." + os.sep) or rel == ".":
                    raise CheckpointError(
                        f"{path}: a processor step's state_file {step['state_file']!r} points "
                        "outside the policy folder; it must name a .safetensors file inside it. "
                        "Re-save or re-download the policy."
                    )
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


def write_lerobot_folder(
    path: str | Path,
    config: dict[str, Any],
    state: dict[str, Tensor],
    stats: dict[str, dict[str, Tensor]],
    cameras: list[str],
    image_size: int,
    state_dim: int,
    action_dim: int,
    norm_map: dict[str, str],
    extra_pre_steps: list[dict] | None = None,
    pre_steps_after_norm: list[dict] | None = None,
    post_steps: list[dict] | None = None,
    rename_map: dict[str, str] | None = None,
) -> Path:
    """Write a folder lerobot's ``from_pretrained`` and processor loaders read (atomic files).

    ``config`` is the policy-specific part (``type``, sizes, ...); features, normalisation map
    and the processor pipelines (rename → batch → [extra] → normaliser → [after]; unnormaliser →
    [post] → device) are filled in here. ``rename_map`` goes into lerobot's rename step: the keys an
    environment or dataset sends (``observation.images.image``) → the policy's camera keys.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    inputs, outputs = _features(cameras, image_size, state_dim, action_dim)
    full = {**config, "input_features": inputs, "output_features": outputs, "normalization_mapping": norm_map}
    write_json(path / "config.json", full)
    write_safetensors(path / "model.safetensors", state, metadata={"format": "pt"})
    features = {**inputs, **outputs}
    steps: list[dict] = [
        {"registry_name": "rename_observations_processor", "config": {"rename_map": dict(rename_map or {})}},
        {"registry_name": "to_batch_processor", "config": {}},
    ]
    steps += extra_pre_steps or []
    norm_index = len(steps)
    norm_file = f"policy_preprocessor_step_{norm_index}_normalizer_processor.safetensors"
    steps.append(
        {
            "registry_name": "normalizer_processor",
            "config": {"eps": 1e-8, "features": features, "norm_map": norm_map},
            "state_file": norm_file,
        }
    )
    steps += pre_steps_after_norm or []
    if not any(st.get("registry_name") == "device_processor" for st in steps):
        steps.append({"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": None}})
    write_json(path / "policy_preprocessor.json", {"name": "policy_preprocessor", "steps": steps})
    flat = flat_stats(stats)
    write_safetensors(path / norm_file, flat)
    unnorm_file = "policy_postprocessor_step_0_unnormalizer_processor.safetensors"
    write_json(
        path / "policy_postprocessor.json",
        {
            "name": "policy_postprocessor",
            "steps": [
                {
                    "registry_name": "unnormalizer_processor",
                    "config": {"eps": 1e-8, "features": outputs, "norm_map": norm_map},
                    "state_file": unnorm_file,
                },
                *(post_steps or []),
                {"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": None}},
            ],
        },
    )
    write_safetensors(path / unnorm_file, flat)
    return path


def target_time_to_fold(policy: Any, fold_target_time: float | None = None) -> float | None:
    """The target time s* whose branch an export folds into lerobot's weights, or None when the policy
    has no trained target-time branch (a teacher, a reflow/naive student: nothing to fold).

    lerobot's samplers know only t: they run x ← x − Δt·v(x, t). A flow-map student's map F(x, t, s)
    equals such a velocity only for ONE fixed s, folded into a bias. A 1-step student jumps once from
    t = 1 to s = 0, so its whole map folds exactly (s* = 0 for "flowmap" and "consistency", s* = t = 1
    for "diagonal"); ``num_inference_steps`` is then written as 1. A multi-step student asks about a
    different s at every step, which no fixed bias represents: refused, unless the caller names
    ``fold_target_time`` (the 1-step map at that s)."""
    tt = getattr(policy, "target_time", None)
    if tt is None or all(float(p.detach().abs().max()) == 0 for p in tt.fc2.parameters()):
        return None
    if fold_target_time is not None:
        return float(fold_target_time)
    cfg = policy.config
    if cfg.num_inference_steps != 1:
        raise CheckpointError(
            f"this {cfg.num_inference_steps}-step {cfg.sampling_mode} student has a trained target-time branch: at each of "
            "its steps it jumps to a different target time s, and lerobot's sampler has no target time (it runs "
            "x - dt*v(x, t)), so it would run a different policy. Only a 1-step student folds exactly into lerobot's "
            "weights: distil with --steps 1, export our own programs (policydistill export) for the multi-step "
            "student, or pass fold_target_time=0.0 to export its 1-step map x0 = x1 - F(x1, 1, 0)."
        )
    return 1.0 if cfg.sampling_mode == "diagonal" else 0.0


_STANDARD_TOKENS = {f"{n}_token" for n in ("bos", "eos", "unk", "sep", "pad", "cls", "mask")}


def portable_tokenizer_config(path: Path) -> None:
    """Make a copied ``tokenizer_config.json`` load in transformers 4.5x (lerobot 0.4.x) as in 5.x:
    transformers 5 writes ``"tokenizer_class": "TokenizersBackend"`` (4.x: ``PreTrainedTokenizerFast``,
    which 5.x still reads) and ``extra_special_tokens`` as a list with the named extra tokens at the
    top level (4.x wants them as a dict)."""
    if not path.is_file():
        return
    data = json.loads(path.read_text())
    changed = False
    if data.get("tokenizer_class") == "TokenizersBackend":
        data["tokenizer_class"] = "PreTrainedTokenizerFast"
        changed = True
    if isinstance(data.get("extra_special_tokens"), list):
        named = {
            k: v for k, v in data.items() if k.endswith("_token") and k not in _STANDARD_TOKENS and isinstance(v, str)
        }
        data["extra_special_tokens"] = named
        changed = True
    if changed:
        write_json(path, data)
