"""lerobot SmolVLA policy folders ↔ our :class:`SmolVLA`, without lerobot.

A lerobot (0.4.x) SmolVLA folder holds ``config.json`` (SmolVLAConfig), ``model.safetensors``
(``model.vlm_with_expert.…`` keys), ``policy_preprocessor.json`` / ``policy_postprocessor.json`` with
their normaliser ``*.safetensors``, and names the VLM in ``vlm_model_name``: a hub id or a folder with
the SmolVLM ``config.json`` and tokenizer. A relative ``vlm_model_name`` is resolved against the policy
folder (the parity fixture ships ``vlm/`` beside ``config.json``). Nothing is downloaded.

Only safetensors are read (``policydistill.checkpoint``); every key must be used, apart from lerobot's
two known leftovers (the VLM's ``lm_head`` and final text ``norm``, which SmolVLA never evaluates: they
are kept aside and written back by ``to_lerobot``). Older (0.3.x) files that carry the normalisation
buffers inside ``model.safetensors`` are accepted too.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...checkpoint import CheckpointError, load_state_checked, write_json
from ..lerobot_io import (
    camera_names,
    portable_tokenizer_config,
    read_lerobot_folder,
    target_time_to_fold,
    write_lerobot_folder,
)
from .configuration import SmolVLAConfig, preset

ROOT = "model.vlm_with_expert."
# our module prefix → lerobot key prefix (longest first when mapping back)
PREFIXES = [
    ("vision.", ROOT + "vlm.model.vision_model."),
    ("connector.", ROOT + "vlm.model.connector.modality_projection.proj."),
    ("embed_tokens.", ROOT + "vlm.model.text_model.embed_tokens."),
    ("vlm_layers.", ROOT + "vlm.model.text_model.layers."),
    ("expert_layers.", ROOT + "lm_expert.layers."),
    ("expert_norm.", ROOT + "lm_expert.norm."),
    ("state_proj.", "model.state_proj."),
    ("action_in_proj.", "model.action_in_proj."),
    ("action_out_proj.", "model.action_out_proj."),
    ("action_time_mlp_in.", "model.action_time_mlp_in."),
    ("action_time_mlp_out.", "model.action_time_mlp_out."),
]
LEFTOVERS = (ROOT + "vlm.lm_head.weight", ROOT + "vlm.model.text_model.norm.weight")
OLD_NORM_PREFIXES = ("normalize_inputs.", "normalize_targets.", "unnormalize_outputs.")
SMOLVLM2_500M = "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"
MARKER = "policydistill.json"  # in vlm/: which tokenizer an exported preset used ("builtin")


def to_lerobot_key(key: str) -> str | None:
    for ours, theirs in PREFIXES:
        if key.startswith(ours):
            return theirs + key[len(ours) :]
    return None  # ours only (target_time, normalizer)


def from_lerobot_key(key: str) -> str | None:
    for ours, theirs in PREFIXES:
        if key.startswith(theirs):
            return ours + key[len(theirs) :]
    return None


# ------------------------------------------------------------------------------------------ reading
def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; a lerobot SmolVLA folder needs it") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from None


def resolve_vlm(folder: Path, name: str) -> Path | None:
    """The local SmolVLM folder named by ``vlm_model_name``: relative to the policy folder first,
    then as a path, then as a Hub id in the local Hugging Face cache."""
    from ..hub import HubNotCached, is_repo_id, resolve

    for cand in (folder / name, Path(name).expanduser()):
        if (cand / "config.json").is_file():
            return cand
    if is_repo_id(name):
        try:
            cand = resolve(name, what="SmolVLA's vlm_model_name")
        except HubNotCached:
            return None
        if (cand / "config.json").is_file():
            return cand
    return None


def _vlm_sizes(folder: Path, name: str) -> tuple[dict[str, Any], Path | None]:
    vlm_dir = resolve_vlm(folder, name)
    if vlm_dir is not None:
        d = _read_json(vlm_dir / "config.json")
        return {
            "text": d.get("text_config", {}),
            "vision": d.get("vision_config", {}),
            "scale_factor": d.get("scale_factor", 2),
        }, vlm_dir
    if name.rstrip("/").endswith("SmolVLM2-500M-Video-Instruct"):
        full = preset("full")
        return {
            "text": {
                "vocab_size": full.vocab_size,
                "hidden_size": full.vlm_width,
                "intermediate_size": full.vlm_mlp,
                "num_hidden_layers": 32,
                "num_attention_heads": full.num_heads,
                "num_key_value_heads": full.num_kv_heads,
                "head_dim": full.head_dim,
                "rms_norm_eps": full.rms_eps,
            },
            "vision": {
                "hidden_size": full.vision_width,
                "num_hidden_layers": full.vision_depth,
                "num_attention_heads": full.vision_heads,
                "intermediate_size": full.vision_mlp,
                "patch_size": full.patch_size,
                "image_size": full.tower_image_size,
                "layer_norm_eps": full.vision_eps,
            },
            "scale_factor": full.scale_factor,
        }, None
    from ..hub import hub_cache

    raise CheckpointError(
        f"vlm_model_name {name!r} is neither a folder beside {folder / 'config.json'}, nor a local path with a "
        f"SmolVLM config.json, nor in the Hugging Face cache ({hub_cache()}). Fill the cache with `hf download {name}` "
        "while online, or copy the SmolVLM folder (config.json + tokenizer.json) next to the policy and set "
        "vlm_model_name to its relative name."
    )


def _default_tokenizer(vlm_dir: Path | None, name: str) -> str:
    """The vlm/ folder when it has a tokenizer.json; "builtin" for folders we exported from a preset
    with the built-in tokenizer (marked by vlm/policydistill.json); otherwise the (missing) location,
    so that tokenising a task raises an error naming it — never silently a different tokenizer."""
    if vlm_dir is not None:
        if (vlm_dir / "tokenizer.json").is_file():
            return str(vlm_dir)
        marker = vlm_dir / MARKER
        if marker.is_file() and _read_json(marker).get("tokenizer") == "builtin":
            return "builtin"
        return str(vlm_dir)
    return name


def config_from_lerobot(folder: Path, tokenizer: str | None = None) -> tuple[SmolVLAConfig, dict[str, Any]]:
    """SmolVLAConfig from a lerobot SmolVLA folder; also returns the raw lerobot config. The tokenizer is
    the one the preprocessor names when it lies inside the checkpoint (lerobot's saved ``tokenizer/``
    artifact), else the VLM folder's."""
    lr = _read_json(folder / "config.json")
    if tokenizer is None:
        named = read_lerobot_folder(folder, weights=False).tokenizer_name()
        if (
            named is not None
            and Path(named).is_absolute()
            and any((Path(named) / f).is_file() for f in ("tokenizer.json", "tokenizer.model"))
        ):
            tokenizer = named
    if lr.get("type", "smolvla") != "smolvla":
        raise CheckpointError(f"{folder} holds a lerobot {lr.get('type')!r} policy, not smolvla")
    if lr.get("add_image_special_tokens"):
        raise CheckpointError("add_image_special_tokens=True is not supported (lerobot's default is False)")
    sizes, vlm_dir = _vlm_sizes(folder, str(lr.get("vlm_model_name", SMOLVLM2_500M)))
    text, vision = sizes["text"], sizes["vision"]
    feats_in, feats_out = lr.get("input_features", {}), lr.get("output_features", {})
    cameras = camera_names(feats_in)
    state_dim = feats_in.get("observation.state", {}).get("shape", [lr.get("max_state_dim", 32)])[0]
    action_dim = feats_out.get("action", {}).get("shape", [lr.get("max_action_dim", 32)])[0]
    resize = lr.get("resize_imgs_with_padding") or [vision.get("image_size", 512)] * 2
    if resize[0] != resize[1]:
        raise CheckpointError(f"non-square resize_imgs_with_padding {resize} is not supported")
    norm = lr.get("normalization_mapping", {})
    n_layers = lr.get("num_vlm_layers", -1)
    heads = text.get("num_attention_heads", 15)
    if tokenizer is None:
        tokenizer = _default_tokenizer(vlm_dir, str(lr.get("vlm_model_name", SMOLVLM2_500M)))
    cfg = SmolVLAConfig(
        cameras=cameras or ["camera1"],
        image_size=int(resize[0]),
        state_dim=int(state_dim),
        action_dim=int(action_dim),
        max_state_dim=lr.get("max_state_dim", 32),
        max_action_dim=lr.get("max_action_dim", 32),
        chunk_size=lr.get("chunk_size", 50),
        n_action_steps=lr.get("n_action_steps", 50),
        num_inference_steps=lr.get("num_steps", 10),
        tokenizer_max_length=lr.get("tokenizer_max_length", 48),
        tokenizer=tokenizer,
        state_norm=norm.get("STATE", "MEAN_STD"),
        action_norm=norm.get("ACTION", "MEAN_STD"),
        vision_image_size=vision.get("image_size", 512),
        patch_size=vision.get("patch_size", 16),
        vision_width=vision.get("hidden_size", 768),
        vision_depth=vision.get("num_hidden_layers", 12),
        vision_heads=vision.get("num_attention_heads", 12),
        vision_mlp=vision.get("intermediate_size", 3072),
        vision_eps=vision.get("layer_norm_eps", 1e-6),
        scale_factor=sizes["scale_factor"],
        vocab_size=text.get("vocab_size", 49280),
        vlm_width=text.get("hidden_size", 960),
        num_vlm_layers=n_layers if n_layers > 0 else text.get("num_hidden_layers", 32),
        num_heads=heads,
        num_kv_heads=text.get("num_key_value_heads", heads),
        head_dim=text.get("head_dim") or text.get("hidden_size", 960) // heads,
        vlm_mlp=text.get("intermediate_size", 2560),
        rms_eps=text.get("rms_norm_eps", 1e-5),
        expert_width_multiplier=lr.get("expert_width_multiplier", 0.75),
        num_expert_layers=lr.get("num_expert_layers", -1),
        attention_mode=lr.get("attention_mode", "cross_attn"),
        self_attn_every_n_layers=lr.get("self_attn_every_n_layers", 2),
        prefix_length=lr.get("prefix_length", -1),
        min_period=lr.get("min_period", 4e-3),
        max_period=lr.get("max_period", 4.0),
    )
    return cfg, lr


def _stats_from_old_buffers(old: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """lerobot 0.3.x: ``normalize_inputs.buffer_observation_state.mean`` etc. inside the weights."""
    stats: dict[str, dict[str, Tensor]] = {}
    for key, value in old.items():
        _, buf, stat = key.split(".", 2)
        feature = (
            buf.removeprefix("buffer_").replace("_", ".", 1)
            if buf.startswith("buffer_observation")
            else buf.removeprefix("buffer_")
        )
        stats.setdefault(feature, {}).setdefault(stat, value)
    return stats


def _recorded_origin(folder: Any) -> str | None:
    """The ``origin`` our ``to_lerobot`` recorded in vlm/policydistill.json (None for lerobot's folders)."""
    vlm = resolve_vlm(folder.path, str(folder.config.get("vlm_model_name", SMOLVLM2_500M)))
    if vlm is not None and (vlm / MARKER).is_file():
        origin = _read_json(vlm / MARKER).get("origin")
        return str(origin) if origin else None
    return None


def detect_vision_positions(folder: Any, cfg: SmolVLAConfig) -> str:
    """The SigLIP patch-position rule of the transformers that the checkpoint's lerobot ran with:
    "hf457" for lerobot 0.4.x (transformers 4.57), "hf5" for lerobot >= 0.5 (transformers 5). When the
    files do not tell, the current release's, with a warning naming the override. A folder we wrote
    records the rule in vlm/policydistill.json."""
    vlm = resolve_vlm(folder.path, str(folder.config.get("vlm_model_name", SMOLVLM2_500M)))
    if vlm is not None and (vlm / MARKER).is_file():
        recorded = _read_json(vlm / MARKER).get("vision_positions")
        if recorded:
            return str(recorded)
    hint = folder.lerobot_version_hint()
    if hint == "0.4":
        return "hf457"
    if hint is None:
        warnings.warn(
            f"{folder.path}: cannot tell which lerobot wrote this SmolVLA checkpoint; computing its patch "
            "positions as lerobot >= 0.5 (transformers 5) does. A checkpoint from lerobot 0.4.x needs "
            "overrides={'vision_positions': 'hf457'}.",
            stacklevel=3,
        )
    return "hf5"


def load_lerobot(path: str | Path, tokenizer: str | None = None, overrides: dict[str, Any] | None = None) -> Any:
    """Build our SmolVLA from a lerobot SmolVLA folder (weights, normaliser, tokenizer path)."""
    from .model import SmolVLA

    folder = read_lerobot_folder(path)  # config, safetensors weights, processors and their stats
    folder.check_supported()
    cfg, lr = config_from_lerobot(folder.path, tokenizer)
    cfg.relative_action_mask = folder.relative_action_mask()
    cfg.origin = _recorded_origin(folder) or "lerobot"  # a folder our to_lerobot wrote says whose it is
    if "vision_positions" not in (overrides or {}):
        cfg.vision_positions = detect_vision_positions(folder, cfg)
    for key, value in (overrides or {}).items():
        setattr(cfg, key, value)
    state: dict[str, Tensor] = {}
    extras: dict[str, Tensor] = {}
    old_norm: dict[str, Tensor] = {}
    for key, value in folder.state.items():
        key = key.replace("model._orig_mod.", "model.")  # torch.compile'd checkpoints
        if key in LEFTOVERS:
            extras[key] = value
        elif key.startswith(OLD_NORM_PREFIXES):
            old_norm[key] = value
        else:
            state[from_lerobot_key(key) or key] = value  # unknown keys stay as they are → reported
    policy = SmolVLA(cfg)
    load_state_checked(
        policy, state, source=str(folder.path / "model.safetensors"), ignore_missing=("target_time.", "normalizer.")
    )
    stats = folder.stats or _stats_from_old_buffers(old_norm)
    for proc in (folder.preprocessor or {}).get("steps", []):
        if proc.get("registry_name") == "normalizer_processor" and "eps" in proc.get("config", {}):
            policy.config.norm_eps = float(proc["config"]["eps"])
    if stats:
        policy.set_normalization(stats)
    policy.lerobot_extras = extras
    policy.lerobot_config = lr
    return policy


# ------------------------------------------------------------------------------------------ writing
def _stats_to_write(policy: Any) -> dict[str, dict[str, Tensor]]:
    """Normaliser stats in lerobot's layout, recovered from our affine buffers."""
    cfg, out = policy.config, {}
    for which, feature, mode in (("state", "observation.state", cfg.state_norm), ("action", "action", cfg.action_norm)):
        stats = policy.normalizer.stats(which, mode)
        if stats:
            out[feature] = stats
    return out


def _folded_target_time(policy: Any, fold_target_time: float | None) -> dict[str, Tensor]:
    """lerobot's SmolVLA has no target time. A zero branch needs nothing; a trained one is folded
    into action_time_mlp_in's bias for ONE fixed s (``lerobot_io.target_time_to_fold``), exactly,
    because the target-time output is added to the time embedding, which enters that layer linearly."""
    s_star = target_time_to_fold(policy, fold_target_time)
    if s_star is None:
        return {}
    tt = policy.target_time
    ew = policy.config.expert_width
    with torch.no_grad():
        s = torch.tensor([s_star], device=tt.fc2.weight.device)
        offset = tt(s)[0]
        w_time = policy.action_time_mlp_in.weight[:, ew:]
        bias = policy.action_time_mlp_in.bias + w_time @ offset.to(w_time.dtype)
    return {"action_time_mlp_in.bias": bias}


def lerobot_config_dict(policy: Any, num_steps: int, base: dict[str, Any] | None) -> dict[str, Any]:
    """The SmolVLA-specific part of lerobot's config.json (features are added by lerobot_io)."""
    cfg = policy.config
    ours = {
        "type": "smolvla",
        "n_obs_steps": 1,
        "chunk_size": cfg.chunk_size,
        "n_action_steps": cfg.n_action_steps,
        "max_state_dim": cfg.max_state_dim,
        "max_action_dim": cfg.max_action_dim,
        "resize_imgs_with_padding": [cfg.image_size, cfg.image_size],
        "empty_cameras": 0,
        "tokenizer_max_length": cfg.tokenizer_max_length,
        "num_steps": num_steps,
        "use_cache": True,
        "vlm_model_name": "vlm",
        "load_vlm_weights": False,
        "add_image_special_tokens": False,
        "attention_mode": cfg.attention_mode,
        "prefix_length": cfg.prefix_length,
        "pad_language_to": "longest",
        "num_expert_layers": cfg.num_expert_layers,
        "num_vlm_layers": cfg.num_vlm_layers,
        "self_attn_every_n_layers": cfg.self_attn_every_n_layers,
        "expert_width_multiplier": cfg.expert_width_multiplier,
        "min_period": cfg.min_period,
        "max_period": cfg.max_period,
    }
    # fields newer lerobot adds with a None default are left out when unset: older lerobot (0.4.x)
    # refuses unknown fields, newer lerobot fills the default back in
    base = {
        k: v
        for k, v in (base or {}).items()
        if k not in ("input_features", "output_features") and not (k in ("pretrained_revision",) and v is None)
    }
    return {**base, **ours}


def vlm_config_dict(cfg: SmolVLAConfig) -> dict[str, Any]:
    return {
        "model_type": "smolvlm",
        "scale_factor": cfg.scale_factor,
        "vocab_size": cfg.vocab_size,
        "pad_token_id": 0,
        "tie_word_embeddings": False,
        "text_config": {
            "model_type": "llama",
            "hidden_size": cfg.vlm_width,
            "intermediate_size": cfg.vlm_mlp,
            "num_hidden_layers": cfg.num_vlm_layers,
            "num_attention_heads": cfg.num_heads,
            "num_key_value_heads": cfg.num_kv_heads,
            "head_dim": cfg.head_dim,
            "vocab_size": cfg.vocab_size,
            "rms_norm_eps": cfg.rms_eps,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "pad_token_id": 0,
        },
        "vision_config": {
            "model_type": "smolvlm_vision",
            "hidden_size": cfg.vision_width,
            "intermediate_size": cfg.vision_mlp,
            "num_hidden_layers": cfg.vision_depth,
            "num_attention_heads": cfg.vision_heads,
            "patch_size": cfg.patch_size,
            "image_size": cfg.tower_image_size,
            "layer_norm_eps": cfg.vision_eps,
            "hidden_act": "gelu_pytorch_tanh",
            "num_channels": 3,
        },
    }


def save_lerobot(
    policy: Any, path: str | Path, fold_target_time: float | None = None, rename_map: dict[str, str] | None = None
) -> Path:
    """Write a lerobot SmolVLA folder (config, weights, processors with normaliser stats, vlm/)."""
    folder = Path(path)
    cfg = policy.config
    overrides = _folded_target_time(policy, fold_target_time)
    num_steps = 1 if overrides else cfg.num_inference_steps
    tensors: dict[str, Tensor] = {}
    for key, value in policy.state_dict().items():
        theirs = to_lerobot_key(key)
        if theirs is not None:
            tensors[theirs] = overrides.get(key, value)
    extras = getattr(policy, "lerobot_extras", {}) or {}
    g = torch.Generator().manual_seed(0)
    tensors[LEFTOVERS[0]] = extras.get(LEFTOVERS[0], torch.randn(cfg.vocab_size, cfg.vlm_width, generator=g) * 0.02)
    tensors[LEFTOVERS[1]] = extras.get(LEFTOVERS[1], torch.ones(cfg.vlm_width))
    norm_map = {"VISUAL": "IDENTITY", "STATE": cfg.state_norm, "ACTION": cfg.action_norm}
    write_lerobot_folder(
        folder,
        lerobot_config_dict(policy, num_steps, getattr(policy, "lerobot_config", None)),
        tensors,
        _stats_to_write(policy),
        cfg.cameras,
        cfg.image_size,
        cfg.state_dim,
        cfg.action_dim,
        norm_map,
        extra_pre_steps=[
            {"registry_name": "smolvla_new_line_processor", "config": {}},
            {
                "registry_name": "tokenizer_processor",
                "config": {
                    "max_length": cfg.tokenizer_max_length,
                    "task_key": "task",
                    "padding_side": "right",
                    "padding": "longest",
                    "truncation": True,
                    "tokenizer_name": "vlm",
                },
            },
        ],
        rename_map=rename_map,
    )
    # vlm/: the SmolVLM config and, when we have one, the tokenizer folder's files
    vlm = folder / "vlm"
    vlm.mkdir(exist_ok=True)
    tok = Path(cfg.tokenizer)
    if cfg.tokenizer != "builtin" and tok.is_dir() and tok.resolve() != vlm.resolve():
        for f in tok.iterdir():
            if f.is_file() and f.name != "config.json":
                shutil.copy2(f, vlm / f.name)
    portable_tokenizer_config(vlm / "tokenizer_config.json")
    write_json(vlm / "config.json", vlm_config_dict(cfg))
    marker = {"vision_positions": cfg.vision_positions, "origin": cfg.origin}
    if cfg.tokenizer == "builtin":
        marker.update(
            {
                "tokenizer": "builtin",
                "note": "policydistill's built-in word-level tokenizer; "
                "lerobot needs a real SmolVLM tokenizer.json here",
            }
        )
    write_json(vlm / MARKER, marker)
    return folder
