"""Checkpoints on disk: safetensors for every tensor, JSON for everything else, written
atomically (temporary file in the same folder, fsync, rename). Never unpickles anything.

A model folder holds ``config.json`` (``architecture`` + hyper-parameters, rebuildable by
``zoo.build_model``) and ``model.safetensors``. A training checkpoint adds
``training_state.safetensors`` (optimiser moments, EMA weights, method networks) and
``training_state.json`` (step, scheduler, optimiser hyper-parameters).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as it is; the message says what to do."""


def _atomic_write(path: Path, write: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=False, default=_json_default)
            fh.write("\n")
    _atomic_write(Path(path), write)


def _json_default(o: Any) -> Any:
    if isinstance(o, (tuple, set)):
        return list(o)
    if torch.is_tensor(o):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_safetensors(path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    # safetensors refuses shared or non-contiguous storage: store independent contiguous copies.
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    _atomic_write(Path(path), lambda tmp: save_file(flat, tmp, metadata=metadata))


def _looks_like_pickle(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(9)
    # protocol-2+ pickles start with 0x80; torch zip checkpoints with "PK". A safetensors file
    # starts with its 8-byte little-endian header length (whose first byte may well be 0x80),
    # then the JSON header "{": never mistake that for a pickle.
    return head[8:9] != b"{" and (head[:1] == b"\x80" or head[:2] == b"PK")


def read_safetensors(path: str | Path) -> dict[str, Tensor]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist. Point at a folder with model.safetensors and config.json.")
    if path.suffix in PICKLE_SUFFIXES or _looks_like_pickle(path):
        raise CheckpointError(
            f"{path} is a pickle/torch.save file. policydistill never unpickles files it is handed "
            "(they can run arbitrary code). Convert it once, in an environment you trust, with "
            "`safetensors.torch.save_file(torch.load(path), 'model.safetensors')`."
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({exc}). It may be truncated or corrupted: "
            "re-copy it, or fall back to an earlier checkpoint."
        ) from None


def load_state_checked(module: nn.Module, state: dict[str, Tensor], source: str = "checkpoint",
                       ignore_missing: tuple[str, ...] = ()) -> None:
    """load_state_dict with an error that lists every missing, unexpected and mis-shaped key."""
    own = module.state_dict()
    missing = [k for k in own if k not in state and not any(k.startswith(p) for p in ignore_missing)]
    unexpected = [k for k in state if k not in own]
    shapes = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in state
              if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        lines = [f"{source} does not fit {type(module).__name__}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): " + ", ".join(f"{k} {tuple(own[k].shape)}" for k in missing[:20])
                         + (" ..." if len(missing) > 20 else ""))
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): " + ", ".join(
                f"{k} {tuple(state[k].shape)}" for k in unexpected[:20]) + (" ..." if len(unexpected) > 20 else ""))
        for k, got, want in shapes[:20]:
            lines.append(f"  shape mismatch: {k} is {got} in the file but {want} in the model")
        lines.append("  Check that the config matches the weights (same preset / architecture).")
        raise CheckpointError("\n".join(lines))
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)


def save_model(folder: str | Path, model: nn.Module, extra: dict[str, Any] | None = None,
               state: dict[str, Tensor] | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``folder`` (atomically, each).
    ``state`` replaces ``model.state_dict()`` (e.g. the full tensors gathered from FSDP shards)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = model.config_dict()  # type: ignore[operator]
    mode = getattr(model, "sampling_mode", None)
    if mode is not None and "sampling_mode" not in config:  # policies keep it in their own config
        extra = {**(extra or {}), "sampling_mode": mode}
    if extra:
        config = {**config, "policydistill": extra}
    write_safetensors(folder / "model.safetensors", model.state_dict() if state is None else state,
                      metadata={"format": "pt"})
    write_json(folder / "config.json", config)
    return folder


def read_model_config(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder. Pass the checkpoint folder (config.json + model.safetensors).")
    if not cfg_path.exists():
        raise CheckpointError(f"{folder} has no config.json; is it a policydistill or lerobot checkpoint folder?")
    try:
        return json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_path} is not valid JSON ({exc}); the file is damaged.") from None


def load_model(folder: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model from ``config.json`` and load ``model.safetensors`` (strictly)."""
    from .zoo import build_model

    folder = Path(folder)
    config = read_model_config(folder)
    model = build_model(config)
    weights = folder / "model.safetensors"
    if not weights.exists():
        pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
        hint = f" Found {pickles}: convert to safetensors first." if pickles else ""
        raise CheckpointError(f"{folder} has no model.safetensors.{hint}")
    load_state_checked(model, read_safetensors(weights), source=str(weights))
    mode = (config.get("policydistill") or {}).get("sampling_mode")
    if mode is not None and "sampling_mode" not in config:
        model.sampling_mode = mode
    return model.to(map_location)


def flatten_state(prefix: str, obj: Any, tensors: dict[str, Tensor]) -> Any:
    """Split a nested state dict into tensors (stored in safetensors) and a JSON skeleton."""
    if torch.is_tensor(obj):
        tensors[prefix] = obj
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[flatten_state(f"{prefix}.{i}", k, tensors), flatten_state(f"{prefix}.{i}v", v, tensors)]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [flatten_state(f"{prefix}.{i}", v, tensors) for i, v in enumerate(obj)],
                "tuple": isinstance(obj, tuple)}
    return obj


def unflatten_state(skeleton: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__dict__" in skeleton:
            return {unflatten_state(k, tensors): unflatten_state(v, tensors) for k, v in skeleton["__dict__"]}
        if "__list__" in skeleton:
            items = [unflatten_state(v, tensors) for v in skeleton["__list__"]]
            return tuple(items) if skeleton.get("tuple") else items
    return skeleton
