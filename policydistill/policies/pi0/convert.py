"""lerobot 0.4.4 pi0 / pi0.5 checkpoints ⇄ our Pi0Policy, without lerobot.

Key layout of lerobot 0.4.4 (the openpi port) and our names:
  model.paligemma_with_expert.paligemma.model.vision_tower.vision_model.*  ⇄ vision.*
  model.paligemma_with_expert.paligemma.model.multi_modal_projector.linear.* ⇄ projector.*
  model.paligemma_with_expert.paligemma.lm_head.weight (tied embedding)    ⇄ embed_tokens.weight
  model.paligemma_with_expert.paligemma.model.language_model.{layers,norm}.* ⇄ vlm.*
  model.paligemma_with_expert.gemma_expert.model.{layers,norm}.*          ⇄ expert.*
  model.{action_in_proj,action_out_proj,state_proj,action_time_mlp_*,time_mlp_*}.* ⇄ same names

Remapping applied on read, as lerobot's ``_fix_pytorch_state_dict_keys`` + ``from_pretrained``:
``model.`` prefix added where missing (openpi-style hub files), ``time_mlp_*`` ↔
``action_time_mlp_*`` by variant, ``state_proj`` dropped for pi0.5, plain expert norm weights
dropped when the expert uses adaRMS, the tied ``embed_tokens`` taken from ``lm_head`` (safetensors
keeps only one of them), the unused ``gemma_expert.lm_head`` dropped.

Sizes: config.json names the variants (gemma_2b / gemma_300m) but tiny test checkpoints are
smaller, so every size is inferred from tensor shapes. Two numbers are not in any shape: the
number of attention heads (lerobot hard-codes 8 in ``compute_layer_complete``) and the SigLIP
head count (So400m: 16). Both can be overridden; a ``reference.json`` with
``architecture_overrides_NOT_in_config_json`` (the parity fixtures) is honoured.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...checkpoint import CheckpointError, load_state_checked, read_safetensors, write_json, write_safetensors
from ..lerobot_io import read_lerobot_folder, write_lerobot_folder
from .configuration import Pi0Config

PG = "model.paligemma_with_expert.paligemma."
EX = "model.paligemma_with_expert.gemma_expert."
OURS_TO_LEROBOT = [
    ("vision.", PG + "model.vision_tower.vision_model."),
    ("projector.", PG + "model.multi_modal_projector.linear."),
    ("vlm.", PG + "model.language_model."),
    ("expert.", EX + "model."),
]
LEROBOT_HEADS = 8  # lerobot 0.4.4 compute_layer_complete reshapes to 1 * 8 * head_dim
EXTRA_CONFIG = "policydistill.json"
EXTRA_TENSORS = "policydistill_extra.safetensors"


def fix_lerobot_keys(state: dict[str, Tensor], variant: str) -> dict[str, Tensor]:
    """lerobot 0.4.4's key fixes (see module docstring), returning a new dict."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if not key.startswith("model."):
            key = "model." + key
        if variant == "pi0":
            key = re.sub(r"^model\.time_mlp_(in|out)\.", r"model.action_time_mlp_\1.", key)
        else:
            key = re.sub(r"^model\.action_time_mlp_(in|out)\.", r"model.time_mlp_\1.", key)
            if key.startswith("model.state_proj."):
                continue
            if re.match(re.escape(EX) + r"model\.(layers\.\d+\.(input|post_attention)_layernorm|norm)\.weight$", key):
                continue
        if key == EX + "lm_head.weight":
            continue  # the expert has no token embedding; its lm_head is never used
        if key == PG + "lm_head.weight":
            out.setdefault(PG + "model.language_model.embed_tokens.weight", value)
            continue
        out[key] = value
    return out


_GEMMA = re.compile(r"^(vlm|expert)\.layers\.\d+\.")


def _fuse(ours: dict[str, Tensor]) -> dict[str, Tensor]:
    """Separate q/k/v and gate/up tensors (HF layout) → our fused qkv_proj / gate_up_proj."""
    out: dict[str, Tensor] = {}
    for key, value in ours.items():
        if _GEMMA.match(key) and key.endswith(("self_attn.k_proj.weight", "self_attn.v_proj.weight",
                                                "mlp.up_proj.weight")):
            continue
        if _GEMMA.match(key) and key.endswith("self_attn.q_proj.weight"):
            base = key[: -len("q_proj.weight")]
            parts = [ours.get(base + n + ".weight") for n in ("q_proj", "k_proj", "v_proj")]
            if any(p is None for p in parts):
                raise CheckpointError(f"{base}: q/k/v projections incomplete in the checkpoint")
            out[base + "qkv_proj.weight"] = torch.cat(parts, 0)
        elif _GEMMA.match(key) and key.endswith("mlp.gate_proj.weight"):
            base = key[: -len("gate_proj.weight")]
            if base + "up_proj.weight" not in ours:
                raise CheckpointError(f"{base}: up_proj missing in the checkpoint")
            out[base + "gate_up_proj.weight"] = torch.cat([value, ours[base + "up_proj.weight"]], 0)
        else:
            out[key] = value
    return out


def _unfuse(ours: dict[str, Tensor], cfg: Pi0Config) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    q_rows, kv_rows = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    for key, value in ours.items():
        if _GEMMA.match(key) and key.endswith("self_attn.qkv_proj.weight"):
            base = key[: -len("qkv_proj.weight")]
            q, k, v = value.split([q_rows, kv_rows, kv_rows], 0)
            out.update({base + "q_proj.weight": q, base + "k_proj.weight": k, base + "v_proj.weight": v})
        elif _GEMMA.match(key) and key.endswith("mlp.gate_up_proj.weight"):
            base = key[: -len("gate_up_proj.weight")]
            gate, up = value.chunk(2, 0)
            out.update({base + "gate_proj.weight": gate, base + "up_proj.weight": up})
        else:
            out[key] = value
    return out


def lerobot_to_ours(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """lerobot key names → ours (HF-style separate projections are kept; see ``_fuse``)."""
    ours: dict[str, Tensor] = {}
    for key, value in state.items():
        if key == PG + "model.language_model.embed_tokens.weight":
            ours["embed_tokens.weight"] = value
            continue
        for mine, theirs in OURS_TO_LEROBOT:
            if key.startswith(theirs):
                ours[mine + key[len(theirs):]] = value
                break
        else:
            ours[key[len("model."):] if key.startswith("model.") else key] = value
    return ours


def ours_to_lerobot(state: dict[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith(("target_time.", "normalizer.")):
            continue
        if key == "embed_tokens.weight":
            out[PG + "lm_head.weight"] = value  # tied: lerobot's files keep only lm_head
            continue
        for mine, theirs in OURS_TO_LEROBOT:
            if key.startswith(mine):
                out[theirs + key[len(mine):]] = value
                break
        else:
            out["model." + key] = value
    return out


def _count_layers(state: dict[str, Tensor], prefix: str) -> int:
    idx = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def infer_config(state: dict[str, Tensor], lr_config: dict[str, Any], variant: str, cameras: list[str],
                 state_dim: int, action_dim: int, overrides: dict[str, Any]) -> Pi0Config:
    """Sizes from tensor shapes (our key names), everything else from lerobot's config.json."""
    def shape(k: str) -> tuple[int, ...]:
        if k not in state:
            raise CheckpointError(f"checkpoint has no tensor {k!r}; it is not a lerobot 0.4.x {variant} checkpoint")
        return tuple(state[k].shape)

    vocab, vlm_width = shape("embed_tokens.weight")
    heads = int(overrides.get("num_heads", LEROBOT_HEADS))
    q_rows = shape("vlm.layers.0.self_attn.q_proj.weight")[0]
    head_dim = int(overrides.get("head_dim", q_rows // heads))
    kv_heads = shape("vlm.layers.0.self_attn.k_proj.weight")[0] // head_dim
    vis_width, _, patch, _ = shape("vision.embeddings.patch_embedding.weight")
    n_patches = shape("vision.embeddings.position_embedding.weight")[0]
    image_size = int(round(n_patches ** 0.5)) * patch
    vis_heads = overrides.get("vision_heads")
    if vis_heads is None:
        if vis_width == 1152:
            vis_heads = 16  # SigLIP So400m (PaliGemma's default vision config)
        else:
            raise CheckpointError(
                f"cannot infer the SigLIP head count for vision width {vis_width} from tensor shapes; "
                "pass overrides={'vision_heads': N} (or put reference.json with the architecture overrides in the folder)")
    expert_width = shape("expert.layers.0.self_attn.q_proj.weight")[1]
    res = lr_config.get("image_resolution") or [image_size, image_size]
    if int(res[0]) != image_size:
        raise CheckpointError(f"config.json image_resolution {res} disagrees with the vision tower ({image_size} px)")
    fields: dict[str, Any] = dict(
        variant=variant, cameras=cameras, image_size=image_size, state_dim=state_dim, action_dim=action_dim,
        max_state_dim=int(lr_config.get("max_state_dim", 32)), max_action_dim=shape("action_in_proj.weight")[1],
        chunk_size=int(lr_config.get("chunk_size", 50)), n_action_steps=int(lr_config.get("n_action_steps", 50)),
        num_inference_steps=int(lr_config.get("num_inference_steps", 10)),
        tokenizer_max_length=int(lr_config.get("tokenizer_max_length", 48)), vocab_size=vocab,
        vlm_width=vlm_width, vlm_depth=_count_layers(state, "vlm.layers."),
        vlm_mlp_dim=shape("vlm.layers.0.mlp.gate_proj.weight")[0], num_heads=heads, num_kv_heads=kv_heads,
        head_dim=head_dim, expert_width=expert_width, expert_mlp_dim=shape("expert.layers.0.mlp.gate_proj.weight")[0],
        vision_width=vis_width, vision_depth=_count_layers(state, "vision.encoder.layers."), vision_heads=int(vis_heads),
        vision_mlp_dim=shape("vision.encoder.layers.0.mlp.fc1.weight")[0], patch_size=patch,
        min_period=float(lr_config.get("min_period", 4e-3)), max_period=float(lr_config.get("max_period", 4.0)),
    )
    if _count_layers(state, "expert.layers.") != fields["vlm_depth"]:
        raise CheckpointError("the expert and the VLM have different depths; pi0 runs them layer by layer")
    fields.update({k: v for k, v in overrides.items() if k not in ("vision_heads",)})
    fields["vision_heads"] = int(vis_heads)
    return Pi0Config(**fields).validate()


def _fixture_overrides(path: Path) -> dict[str, Any]:
    """The parity fixtures record the sizes config.json does not tell (see fixtures README)."""
    ref = path / "reference.json"
    if not ref.exists():
        return {}
    arch = json.loads(ref.read_text()).get("architecture_overrides_NOT_in_config_json", {})
    vis = arch.get("siglip_vision", {})
    vlm = arch.get("paligemma(gemma_2b)", {})
    out: dict[str, Any] = {}
    if "num_attention_heads" in vis:
        out["vision_heads"] = int(vis["num_attention_heads"])
    if "num_heads" in vlm:
        out["num_heads"] = int(vlm["num_heads"])
    return out


def from_lerobot(path: str | Path, tokenizer: str | None = None, overrides: dict[str, Any] | None = None):
    """Build a Pi0Policy (pi0 or pi0.5 by config.json "type") from a lerobot policy folder."""
    from .model import Pi0Policy, Pi05Policy

    path = Path(path)
    folder = read_lerobot_folder(path)
    variant = folder.policy_type
    if variant not in ("pi0", "pi05"):
        raise CheckpointError(f"{path}/config.json has type {variant!r}; from_lerobot here reads 'pi0' or 'pi05'")
    state = lerobot_to_ours(fix_lerobot_keys(folder.state, variant))
    extra_cfg = path / EXTRA_CONFIG
    if extra_cfg.exists():  # written by our to_lerobot: exact config, target-time branch
        cfg = Pi0Policy.config_from_dict(Pi0Config, json.loads(extra_cfg.read_text())).validate()
    else:
        ovr = {**_fixture_overrides(path), **(overrides or {})}
        cfg = infer_config(state, folder.config, variant, folder.cameras(), folder.state_dim(), folder.action_dim(), ovr)
        cfg.state_norm = folder.norm_mode("STATE")
        cfg.action_norm = folder.norm_mode("ACTION")
        cfg.tokenizer = tokenizer or folder.tokenizer_name() or "builtin"
    if tokenizer is not None:
        cfg.tokenizer = tokenizer
    state = _fuse(state)
    policy = (Pi05Policy if variant == "pi05" else Pi0Policy)(cfg)
    if (path / EXTRA_TENSORS).exists():
        state.update(read_safetensors(path / EXTRA_TENSORS))
    policy.set_normalization(folder.stats)
    own = policy.state_dict()
    for k in own:  # tensors lerobot does not store: our target-time branch and the normaliser
        if k.startswith(("target_time.", "normalizer.")) and k not in state:
            state[k] = own[k]
    load_state_checked(policy, state, source=f"{path}/model.safetensors")
    return policy.eval()


def to_lerobot(policy, path: str | Path) -> Path:
    """Write ``policy`` as a lerobot 0.4.4 folder; our exact config and the target-time branch go
    into ``policydistill.json`` / ``policydistill_extra.safetensors`` beside it (lerobot ignores them,
    and would run the policy on the diagonal only: Euler with the teacher's velocity)."""
    cfg: Pi0Config = policy.config
    path = Path(path)
    state = {k: v.float() for k, v in policy.state_dict().items()}
    lr_state = ours_to_lerobot(_unfuse(state, cfg))
    modes = {"VISUAL": "IDENTITY", "STATE": cfg.state_norm, "ACTION": cfg.action_norm}
    stats = {"observation.state": _stats_from_affine(policy.normalizer, "state", cfg.state_norm, cfg.norm_eps),
             "action": _stats_from_affine(policy.normalizer, "action", cfg.action_norm, cfg.norm_eps)}
    stats = {k: v for k, v in stats.items() if v}
    full = cfg.vlm_width == 2048 and cfg.expert_width == 1024
    config = {"type": cfg.variant, "n_obs_steps": 1, "device": "cpu", "use_amp": False,
              "paligemma_variant": "gemma_2b" if full else "custom", "action_expert_variant": "gemma_300m" if full else "custom",
              "dtype": "float32", "chunk_size": cfg.chunk_size, "n_action_steps": cfg.n_action_steps,
              "max_state_dim": cfg.max_state_dim, "max_action_dim": cfg.max_action_dim,
              "num_inference_steps": cfg.num_inference_steps, "time_sampling_beta_alpha": 1.5,
              "time_sampling_beta_beta": 1.0, "time_sampling_scale": 0.999, "time_sampling_offset": 0.001,
              "min_period": cfg.min_period, "max_period": cfg.max_period,
              "image_resolution": [cfg.image_size, cfg.image_size], "empty_cameras": 0,
              "tokenizer_max_length": cfg.tokenizer_max_length}
    tok = {"registry_name": "tokenizer_processor", "config": {
        "max_length": cfg.tokenizer_max_length, "task_key": "task", "padding_side": "right", "padding": "max_length",
        "truncation": True, "tokenizer_name": cfg.tokenizer if cfg.tokenizer != "builtin" else "google/paligemma-3b-pt-224"}}
    if cfg.variant == "pi0":
        before, after = [{"registry_name": "pi0_new_line_processor", "config": {}}, tok], []
    else:
        before, after = [], [{"registry_name": "pi05_prepare_state_tokenizer_processor_step", "config": {}}, tok]
    write_lerobot_folder(path, config, lr_state, stats, cfg.cameras, cfg.image_size, cfg.state_dim, cfg.action_dim,
                         modes, before, after)
    write_json(path / EXTRA_CONFIG, policy.config_dict())
    write_safetensors(path / EXTRA_TENSORS, {k: v for k, v in state.items() if k.startswith("target_time.")})
    return path


def _stats_from_affine(norm, which: str, mode: str, eps: float) -> dict[str, Tensor]:
    shift, scale = getattr(norm, f"{which}_shift").float(), getattr(norm, f"{which}_scale").float()
    if mode == "MEAN_STD":
        return {"mean": shift.clone(), "std": scale - eps}
    if mode == "QUANTILES":
        return {"q01": shift - scale, "q99": shift + scale}
    if mode == "MIN_MAX":
        return {"min": shift - scale, "max": shift + scale}
    return {}


__all__ = ["from_lerobot", "to_lerobot", "fix_lerobot_keys", "lerobot_to_ours", "ours_to_lerobot", "infer_config"]
