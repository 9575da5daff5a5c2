"""Checkpoints on disk: safetensors for every tensor, JSON for everything else, written
atomically (temporary file in the same folder, fsync, rename). Never unpickles anything.

A model folder holds ``config.json`` (``architecture`` + hyper-parameters, rebuildable by
``zoo.build_model``) and ``model.safetensors``. A training checkpoint adds
``training_state.safetensors`` (optimiser moments, EMA weights, method networks) and
``training_state.json`` (step, scheduler, optimiser hyper-parameters).
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
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


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc/self/status``);
    elsewhere set and restored at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates 0600 (and a writer may replace the file): a file we publish gets the mode
        # open() would give it, 0666 less the umask, so a robot runner under another account can
        # read a student checkpoint or a report.
        os.chmod(tmp, 0o666 & ~current_umask())
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


#: the key a JSON object written by ``write_json`` gets when some of its numbers were NaN or inf
NON_FINITE_KEY = "null_values"


def _replace_non_finite(obj: Any, where: str, found: dict[str, str]) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        found[where or "(top level)"] = str(obj)  # "nan", "inf", "-inf"
        return None
    if isinstance(obj, dict):
        return {k: _replace_non_finite(v, f"{where}.{k}" if where else str(k), found) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_replace_non_finite(v, f"{where}[{i}]", found) for i, v in enumerate(obj)]
    return obj


def strict_json(obj: Any) -> tuple[Any, dict[str, str]]:
    """``obj`` as plain JSON types with every NaN/inf replaced by None (bare ``NaN`` is not JSON:
    strict parsers refuse the whole file), and {path: "nan" | "inf" | "-inf"} of what was replaced."""
    plain = json.loads(json.dumps(obj, default=_json_default))
    found: dict[str, str] = {}
    return _replace_non_finite(plain, "", found), found


def write_json(path: str | Path, obj: Any) -> None:
    """Write strict JSON atomically. A value that is NaN or infinite is written as ``null``, and a
    JSON object gets a ``null_values`` entry saying which fields those are and what they were, so a
    reader can tell "not measured" from "the measurement was NaN"."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a folder; give a file path to write the JSON to, e.g. {path / 'results.json'}"
        )
    obj, found = strict_json(obj)
    if found and isinstance(obj, dict):
        obj[NON_FINITE_KEY] = {
            "why": "these values were NaN or infinite (not a number JSON can hold) and are written as null",
            "fields": found,
        }

    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=False, allow_nan=False)
            fh.write("\n")

    _atomic_write(path, write)


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

    def write(tmp: str) -> None:
        try:
            save_file(flat, tmp, metadata=metadata)
        except SafetensorError as exc:  # its I/O errors arrive as text: a full disk must read as one
            if "code: 28" in str(exc) or "StorageFull" in str(exc):
                raise OSError(errno.ENOSPC, "No space left on device", str(path)) from None
            raise

    _atomic_write(Path(path), write)


def require_regular_file(path: str | Path, what: str = "file") -> Path:
    """``path`` if it is a regular file (symlinks followed); otherwise a CheckpointError that says
    what it is. Opening a FIFO would block forever and a device would be read without end, so
    nothing else is ever opened."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist; the {what} is missing: re-copy the checkpoint folder.") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path} ({exc.strerror}).") from None
    if stat.S_ISREG(mode):
        return path
    kind = (
        "a folder"
        if stat.S_ISDIR(mode)
        else "a FIFO (named pipe)"
        if stat.S_ISFIFO(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "a device"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "not a regular file"
    )
    raise CheckpointError(
        f"{path} is {kind}, not a file; the {what} must be a regular file: "
        "replace it with the real file (re-copy the checkpoint folder)."
    )


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Parse a small JSON file we wrote, with errors that name the file (missing, not a regular
    file, unreadable, truncated or not UTF-8)."""
    path = require_regular_file(path, what)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{path} is not valid JSON ({exc}); the file is damaged (truncated by a full disk "
            "or an interrupted copy?): re-copy it, or use an earlier checkpoint."
        ) from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path} ({exc.strerror}).") from None


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
    require_regular_file(path, "weights file")
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


def load_state_checked(
    module: nn.Module, state: dict[str, Tensor], source: str = "checkpoint", ignore_missing: tuple[str, ...] = ()
) -> None:
    """load_state_dict with an error that lists every missing, unexpected and mis-shaped key."""
    own = module.state_dict()
    missing = [k for k in own if k not in state and not any(k.startswith(p) for p in ignore_missing)]
    unexpected = [k for k in state if k not in own]
    shapes = [
        (k, tuple(state[k].shape), tuple(own[k].shape))
        for k in state
        if k in own and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    kinds = [
        (k, state[k].dtype, own[k].dtype)
        for k in state
        if k in own and _dtype_kind(state[k].dtype) != _dtype_kind(own[k].dtype)
    ]
    if missing or unexpected or shapes or kinds:
        lines = [f"{source} does not fit {type(module).__name__}:"]
        if missing:
            lines.append(
                f"  missing keys ({len(missing)}): "
                + ", ".join(f"{k} {tuple(own[k].shape)}" for k in missing[:20])
                + (" ..." if len(missing) > 20 else "")
            )
        if unexpected:
            lines.append(
                f"  unexpected keys ({len(unexpected)}): "
                + ", ".join(f"{k} {tuple(state[k].shape)}" for k in unexpected[:20])
                + (" ..." if len(unexpected) > 20 else "")
            )
        for k, got, want in shapes[:20]:
            lines.append(f"  shape mismatch: {k} is {got} in the file but {want} in the model")
        for k, got, want in kinds[:20]:
            lines.append(
                f"  dtype mismatch: {k} is {str(got).replace('torch.', '')} in the file but the model "
                f"holds {str(want).replace('torch.', '')} ({_dtype_kind(got)} tensors are never cast to "
                f"{_dtype_kind(want)} ones)"
            )
        lines.append("  Check that the config matches the weights (same preset / architecture).")
        raise CheckpointError("\n".join(lines))
    check_finite(state, source)
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)


def _dtype_kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "boolean"
    if dtype.is_complex:
        return "complex"
    return "floating-point" if dtype.is_floating_point else "integer"


def check_finite(tensors: dict[str, Tensor], source: str) -> None:
    """Refuse tensors holding NaN or inf (weights and buffers alike: a NaN in a normaliser's
    scale makes every action NaN), naming each and how many of its values are bad."""
    bad = []
    for k, v in tensors.items():
        if v.dtype.is_floating_point or v.dtype.is_complex:
            n = int((~torch.isfinite(v)).sum())
            if n:
                bad.append(f"{k} ({n} of {v.numel()} values)")
    if bad:
        raise CheckpointError(
            f"{source} holds NaN or inf in {len(bad)} tensor(s): {', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''}. "
            "A policy with non-finite weights or normalisation statistics outputs NaN actions; it was not loaded. "
            "Use an earlier checkpoint (a run that diverged), or recompute the statistics it was built with."
        )


def save_model(
    folder: str | Path, model: nn.Module, extra: dict[str, Any] | None = None, state: dict[str, Tensor] | None = None
) -> Path:
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
    write_safetensors(
        folder / "model.safetensors", model.state_dict() if state is None else state, metadata={"format": "pt"}
    )
    write_json(folder / "config.json", config)
    return folder


def read_model_config(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not folder.is_dir():
        raise CheckpointError(
            f"{folder} is not a folder. Pass the checkpoint folder (config.json + model.safetensors)."
        )
    if not cfg_path.exists() and not cfg_path.is_symlink():
        raise CheckpointError(f"{folder} has no config.json; is it a policydistill or lerobot checkpoint folder?")
    config = read_json(cfg_path, "model config")
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{cfg_path} holds {json.dumps(config)[:40]} ({type(config).__name__}) where a JSON object "
            'of settings ({"architecture": ..., ...}) belongs; the file was overwritten or edited '
            "by hand: re-copy the checkpoint."
        )
    return config


#: what the ``policydistill`` record of a config.json holds, by type (written by ``save_model(extra=...)``)
PROVENANCE_TYPES: dict[str, tuple[type, ...]] = {
    "role": (str,),
    "tasks": (list,),
    "dataset": (str,),
    "teacher_config": (dict,),
    "seed": (int,),
}


def check_provenance(config: dict[str, Any], source: str | Path) -> dict[str, Any]:
    """The ``policydistill`` record of a model config ({} when absent), refused with the field named
    when it has the wrong shape: a ``tasks`` string would otherwise be read letter by letter."""
    record = config.get("policydistill")
    if record is None:
        return {}
    if not isinstance(record, dict):
        raise CheckpointError(
            f"{source}: field 'policydistill' must be an object (tasks, dataset, ...), got "
            f"{json.dumps(record)[:40]}; re-copy the checkpoint or remove the field."
        )
    for key, types in PROVENANCE_TYPES.items():
        value = record.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            what = "a list of task ids" if key == "tasks" else f"a {types[0].__name__}"
            hint = f' such as ["{value}"]' if key == "tasks" and isinstance(value, str) else ""
            raise CheckpointError(
                f"{source}: field 'policydistill.{key}' must be {what}{hint}, got "
                f"{json.dumps(value)[:60]}; fix it or re-copy the checkpoint."
            )
    tasks = record.get("tasks") or []
    if any(not isinstance(t, str) or not t for t in tasks):
        raise CheckpointError(
            f"{source}: field 'policydistill.tasks' must list task ids (strings) such as "
            f'"metaworld/push-v3", got {json.dumps(tasks)[:60]}'
        )
    return record


def load_model(folder: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model from ``config.json`` and load ``model.safetensors`` (strictly)."""

    folder = Path(folder)
    config = read_model_config(folder)
    check_provenance(config, folder / "config.json")
    model = build_from_config(config, folder / "config.json")
    weights = folder / "model.safetensors"
    if not weights.exists() and not weights.is_symlink():
        pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
        hint = f" Found {pickles}: convert to safetensors first." if pickles else ""
        raise CheckpointError(f"{folder} has no model.safetensors.{hint}")
    load_state_checked(model, read_safetensors(weights), source=str(weights))
    mode = (config.get("policydistill") or {}).get("sampling_mode")
    if mode is not None and "sampling_mode" not in config:
        model.sampling_mode = mode
    return model.to(map_location)


def build_from_config(config: dict[str, Any], source: str | Path) -> nn.Module:
    """``zoo.build_model`` with errors that name the config file: a wrong field (type, range,
    unknown name) or sizes too large to allocate are the file's fault, not a crash."""
    from .registry import RegistryError
    from .zoo import build_model

    arch = config.get("architecture")
    if "architecture" in config and not isinstance(arch, str):
        raise CheckpointError(f"{source}: 'architecture' must be a name such as \"pi0\", got {json.dumps(arch)[:40]}")
    try:
        _check_fits_in_memory(config, source)
        return build_model(config)
    except RegistryError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(
            f"{source} describes a model that cannot be built: {exc}. Fix the field(s) named "
            "(or re-copy the checkpoint folder)."
        ) from None
    except (MemoryError, RuntimeError) as exc:
        if not isinstance(exc, MemoryError) and "alloc" not in str(exc).lower():
            raise
        raise CheckpointError(
            f"{source} describes a model too large to allocate on this machine ("
            f"{' '.join(str(exc).split())[:160]}). Check its sizes (widths, depths, vocab_size, "
            "chunk_size): a typo here makes a model of terabytes."
        ) from None


def _check_fits_in_memory(config: dict[str, Any], source: str | Path) -> None:
    """Build the model on the meta device first (no memory, milliseconds) and refuse sizes whose
    weights alone exceed this machine's RAM: a typo'd width would otherwise allocate until the
    kernel kills the process, or fail with the allocator's own text."""
    from .zoo import build_model

    try:
        with torch.device("meta"):
            model = build_model(config)
    except Exception:  # noqa: BLE001 - the real build below reports what is wrong with the config
        return
    need = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > ram:
        raise MemoryError(f"its weights alone need {need / 2**30:.1f} GiB but this machine has {ram / 2**30:.1f} GiB")


def flatten_state(prefix: str, obj: Any, tensors: dict[str, Tensor]) -> Any:
    """Split a nested state dict into tensors (stored in safetensors) and a JSON skeleton."""
    if torch.is_tensor(obj):
        tensors[prefix] = obj
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {
            "__dict__": [
                [flatten_state(f"{prefix}.{i}", k, tensors), flatten_state(f"{prefix}.{i}v", v, tensors)]
                for i, (k, v) in enumerate(obj.items())
            ]
        }
    if isinstance(obj, (list, tuple)):
        return {
            "__list__": [flatten_state(f"{prefix}.{i}", v, tensors) for i, v in enumerate(obj)],
            "tuple": isinstance(obj, tuple),
        }
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
