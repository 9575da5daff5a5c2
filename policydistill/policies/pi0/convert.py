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
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...checkpoint import CheckpointError, load_state_checked, read_safetensors, write_json, write_safetensors
from ..lerobot_io import portable_tokenizer_config, read_lerobot_folder, target_time_to_fold, write_lerobot_folder
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
        if _GEMMA.match(key) and key.endswith(
            ("self_attn.k_proj.weight", "self_attn.v_proj.weight", "mlp.up_proj.weight")
        ):
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
                ours[mine + key[len(theirs) :]] = value
                break
        else:
            ours[key[len("model.") :] if key.startswith("model.") else key] = value
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
                out[theirs + key[len(mine) :]] = value
                break
        else:
            out["model." + key] = value
    return out


def _count_layers(state: dict[str, Tensor], prefix: str) -> int:
    idx = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def infer_config(
    state: dict[str, Tensor],
    lr_config: dict[str, Any],
    variant: str,
    cameras: list[str],
    state_dim: int,
    action_dim: int,
    overrides: dict[str, Any],
) -> Pi0Config:
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
    image_size = int(round(n_patches**0.5)) * patch
    vis_heads = overrides.get("vision_heads")
    if vis_heads is None:
        if vis_width == 1152:
            vis_heads = 16  # SigLIP So400m (PaliGemma's default vision config)
        else:
            raise CheckpointError(
                f"cannot infer the SigLIP head count for vision width {vis_width} from tensor shapes; "
                "pass overrides={'vision_heads': N} (or put reference.json with the architecture overrides in the folder)"
            )
    expert_width = shape("expert.layers.0.self_attn.q_proj.weight")[1]
    res = lr_config.get("image_resolution") or [image_size, image_size]
    if int(res[0]) != image_size:
        raise CheckpointError(f"config.json image_resolution {res} disagrees with the vision tower ({image_size} px)")
    fields: dict[str, Any] = dict(
        variant=variant,
        cameras=cameras,
        image_size=image_size,
        state_dim=state_dim,
        action_dim=action_dim,
        max_state_dim=int(lr_config.get("max_state_dim", 32)),
        max_action_dim=shape("action_in_proj.weight")[1],
        chunk_size=int(lr_config.get("chunk_size", 50)),
        n_action_steps=int(lr_config.get("n_action_steps", 50)),
        num_inference_steps=int(lr_config.get("num_inference_steps", 10)),
        # lerobot's training-time RTC for pi0.5 (newer than 0.6.1): the same clean-prefix scheme as ours
        rtc_training_max_delay=int(lr_config.get("rtc_training_max_delay") or 0),
        tokenizer_max_length=int(lr_config.get("tokenizer_max_length", 48)),
        vocab_size=vocab,
        vlm_width=vlm_width,
        vlm_depth=_count_layers(state, "vlm.layers."),
        vlm_mlp_dim=shape("vlm.layers.0.mlp.gate_proj.weight")[0],
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        expert_width=expert_width,
        expert_mlp_dim=shape("expert.layers.0.mlp.gate_proj.weight")[0],
        vision_width=vis_width,
        vision_depth=_count_layers(state, "vision.encoder.layers."),
        vision_heads=int(vis_heads),
        vision_mlp_dim=shape("vision.encoder.layers.0.mlp.fc1.weight")[0],
        patch_size=patch,
        min_period=float(lr_config.get("min_period", 4e-3)),
        max_period=float(lr_config.get("max_period", 4.0)),
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


def detect_state_prompt(folder) -> str:
    """How the pi0.5 checkpoint in ``folder`` was trained to read the state in its prompt: "padded"
    for lerobot 0.4.x, "raw" for ≥ 0.5 (and openpi). When the files do not tell (0.4.4 and 0.5.0 write
    the same config.json and no train_config.json is beside it), "raw" — the current release and
    the published base checkpoints — with a warning naming the override."""
    hint = folder.lerobot_version_hint()
    if hint == "0.4":
        return "padded"
    if hint is None:
        warnings.warn(
            f"{folder.path}: cannot tell which lerobot wrote this pi0.5 checkpoint; reading its state prompt "
            "the lerobot >= 0.5 way (unpadded state). A checkpoint fine-tuned with lerobot 0.4.x needs "
            "overrides={'state_prompt': 'padded'}.",
            stacklevel=3,
        )
    return "raw"


def from_lerobot(path: str | Path, tokenizer: str | None = None, overrides: dict[str, Any] | None = None):
    """Build a Pi0Policy (pi0 or pi0.5 by config.json "type") from a lerobot policy folder or a cached
    Hub id. ``overrides`` sets config fields that the files do not tell (``num_heads``, ``vision_heads``)
    or that the caller knows better (``state_prompt``: "raw" | "padded", see ``detect_state_prompt``)."""
    from .model import Pi0Policy, Pi05Policy

    folder = read_lerobot_folder(path)  # a folder or a cached Hub id
    path = folder.path
    folder.check_supported()
    variant = folder.policy_type
    if variant not in ("pi0", "pi05"):
        raise CheckpointError(f"{path}/config.json has type {variant!r}; from_lerobot here reads 'pi0' or 'pi05'")
    state = lerobot_to_ours(fix_lerobot_keys(folder.state, variant))
    extra_cfg = path / EXTRA_CONFIG
    if extra_cfg.exists():  # written by our to_lerobot: exact config, target-time branch
        own = json.loads(extra_cfg.read_text())
        if own.get("variant") == "pi05" and "state_prompt" not in own:
            own["state_prompt"] = "padded"  # exported before the choice was recorded (lerobot 0.4.x prompts)
        cfg = Pi0Policy.config_from_dict(Pi0Config, own).validate()
        inside = folder.tokenizer_name()
        if cfg.tokenizer != "builtin" and inside and Path(inside).is_dir():
            cfg.tokenizer = inside  # the copy that travels with the folder
    else:
        ovr = {**_fixture_overrides(path), **(overrides or {})}
        cfg = infer_config(
            state, folder.config, variant, folder.cameras(), folder.state_dim(), folder.action_dim(), ovr
        )
        cfg.state_norm = folder.norm_mode("STATE")
        cfg.action_norm = folder.norm_mode("ACTION")
        cfg.tokenizer = tokenizer or folder.tokenizer_name() or "builtin"
        cfg.relative_action_mask = folder.relative_action_mask()
        if variant == "pi05" and "state_prompt" not in ovr:
            cfg.state_prompt = detect_state_prompt(folder)
        cfg.origin = "lerobot"  # a folder of ours carries its own origin in its exact config
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


#: The architectures stock lerobot builds for pi0 / pi0.5 (0.4.4 to 0.6.x; config.json cannot change them):
#: its config accepts only the variant names "gemma_2b" and "gemma_300m" (``PI0Config.__post_init__``),
#: ``get_gemma_config`` maps them to these Gemma shapes, and ``PaliGemmaWithExpertModel`` fixes the
#: vocabulary, the SigLIP So400m/14 tower (transformers' PaliGemma default) and its 2048-wide projection
#: — so the VLM must be Gemma-2B; the expert either shape. Only ``image_resolution`` is read from the config.
LEROBOT_GEMMA = {
    "gemma_2b": {"width": 2048, "mlp_dim": 16384},
    "gemma_300m": {"width": 1024, "mlp_dim": 4096},
}
LEROBOT_FIXED = {
    "vlm_depth": 18,
    "num_heads": 8,
    "num_kv_heads": 1,
    "head_dim": 256,
    "vocab_size": 257152,
    "vision_width": 1152,
    "vision_depth": 27,
    "vision_heads": 16,
    "vision_mlp_dim": 4304,
    "patch_size": 14,
}


def lerobot_variants(cfg: Pi0Config) -> tuple[str, str, list[str]]:
    """(paligemma_variant, action_expert_variant, what differs from what lerobot builds). A part that
    lerobot cannot build is named ``"custom"``, which lerobot's config refuses loudly: a folder is never
    loaded into a model of other sizes (lerobot would load the tensors that fit and run the rest random)."""
    diff = [f"{k} {getattr(cfg, k)} (lerobot: {v})" for k, v in LEROBOT_FIXED.items() if getattr(cfg, k) != v]
    # depth, heads and head size are the expert's too (the two stacks run layer by layer)
    shared = all(getattr(cfg, k) == LEROBOT_FIXED[k] for k in ("vlm_depth", "num_heads", "num_kv_heads", "head_dim"))
    g2b = LEROBOT_GEMMA["gemma_2b"]
    if (cfg.vlm_width, cfg.vlm_mlp_dim) != (g2b["width"], g2b["mlp_dim"]):
        diff.append(f"VLM width {cfg.vlm_width} / MLP {cfg.vlm_mlp_dim} (lerobot: gemma_2b, 2048 / 16384)")
    vlm = "custom" if diff else "gemma_2b"
    shape = (cfg.expert_width, cfg.expert_mlp_dim)
    exp = next((n for n, g in LEROBOT_GEMMA.items() if (g["width"], g["mlp_dim"]) == shape), None)
    if exp is None:
        diff.append(
            f"expert width {cfg.expert_width} / MLP {cfg.expert_mlp_dim} (lerobot: gemma_300m 1024 / 4096 or gemma_2b)"
        )
    return vlm, exp if exp is not None and shared else "custom", diff


def _size_name(cfg: Pi0Config) -> str:
    """The preset this architecture is (``small``, ``ref``…), or a one-line description of it."""
    from .configuration import PRESETS

    arch = ("vocab_size", "vlm_width", "vlm_depth", "vlm_mlp_dim", "num_heads", "num_kv_heads", "head_dim",
            "expert_width", "expert_mlp_dim", "vision_width", "vision_depth", "vision_heads", "vision_mlp_dim",
            "patch_size")  # fmt: skip
    for name, fields in PRESETS.items():
        if all(fields.get(k) == getattr(cfg, k) for k in arch):
            return f"the '{name}' preset"
    return (
        f"a custom size (VLM {cfg.vlm_width}x{cfg.vlm_depth}, expert {cfg.expert_width}, "
        f"SigLIP {cfg.vision_width}x{cfg.vision_depth}, vocabulary {cfg.vocab_size})"
    )


def fold_target_time(policy, s_star: float) -> dict[str, Tensor]:
    """Our tensors with the target-time branch evaluated at ``s_star`` and folded into the biases lerobot
    has, exactly (the branch's output enters those layers linearly):
      pi0:   target_time(s) is added to the time embedding, the second half of action_time_mlp_in's
             input → action_time_mlp_in.bias += W[:, width:] @ target_time(s*);
      pi0.5: target_time(s) is added to the adaRMS conditioning vector, which reaches the expert only
             through every adaRMS ``dense`` → dense.bias += dense.weight @ target_time(s*)."""
    cfg = policy.config
    with torch.no_grad():
        tt = policy.target_time
        offset = tt(torch.tensor([float(s_star)], device=tt.fc2.weight.device))[0].float()
        out: dict[str, Tensor] = {}
        if cfg.variant == "pi0":
            w = policy.action_time_mlp_in.weight.float()
            out["action_time_mlp_in.bias"] = policy.action_time_mlp_in.bias.float() + w[:, cfg.expert_width :] @ offset
        else:
            for name, module in policy.expert.named_modules():
                dense = getattr(module, "dense", None)
                if dense is not None:
                    out[f"expert.{name}.dense.bias"] = dense.bias.float() + dense.weight.float() @ offset
    return out


def _copy_tokenizer(cfg: Pi0Config, path: Path) -> str | None:
    """Copy the policy's tokenizer into ``<path>/tokenizer`` (lerobot's artifact folder); returns the
    name to write, or None for our built-in tokenizer (which lerobot cannot run) and for a Hub id that
    is not in the local cache (lerobot resolves the id itself)."""
    if cfg.tokenizer == "builtin":
        return None
    from ..hub import HubNotCached, resolve

    try:
        src = resolve(cfg.tokenizer, what="tokenizer")
    except HubNotCached:
        return None  # a Hub id we do not have: lerobot finds it by its id
    dst = path / "tokenizer"
    dst.mkdir(parents=True, exist_ok=True)
    files = [src] if src.is_file() else [f for f in src.iterdir() if f.is_file()]
    for f in files:
        if f.name in TOKENIZER_FILES and f.resolve() != (dst / f.name).resolve():
            shutil.copy2(f, dst / f.name)
    portable_tokenizer_config(dst / "tokenizer_config.json")
    return "tokenizer"


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)


def to_lerobot(
    policy,
    path: str | Path,
    fold_target_time_at: float | None = None,
    allow_padded_state_prompt: bool = False,
    rename_map: dict[str, str] | None = None,
) -> Path:
    """Write ``policy`` as a lerobot policy folder that lerobot runs unchanged.

    * A trained target-time branch (a 1-step flow-map student) is folded into lerobot's own biases
      (``fold_target_time``; which s, and why multi-step students are refused:
      ``lerobot_io.target_time_to_fold``) and ``num_inference_steps`` is written as 1, so lerobot's
      own 1-step Euler computes the student's jump x0 = x1 − F(x1, 1, s*).
    * The tokenizer is copied into ``tokenizer/`` and declared as lerobot's processor artifact
      (lerobot ≥ 0.6.2 resolves it against the folder; older releases take
      ``preprocessor_overrides={"tokenizer_processor": {"tokenizer_name": "<folder>/tokenizer"}}``).
      A tokenizer that came from the Hub keeps its id in ``tokenizer_name``.
    * pi0.5 with padded state prompts (lerobot 0.4.x) is refused: lerobot ≥ 0.5 discretises the
      unpadded state and would run a different policy (``allow_padded_state_prompt=True`` writes it
      for lerobot 0.4.x).
    * lerobot builds pi0 / pi0.5 only at PaliGemma-2B (SigLIP So400m/14, vocabulary 257152) with a
      Gemma-300M or Gemma-2B expert (``LEROBOT_GEMMA`` / ``LEROBOT_FIXED``); its config.json has no
      field for other sizes. Any other size (``small``, ``ref``…) is written with ``"custom"`` variants,
      which lerobot refuses loudly (never loaded into a wrong-sized model), and a warning says so: the
      folder is still ours to read back.

    * ``rename_map`` (e.g. ``{"observation.images.image": "observation.images.agentview"}``) is written
      into lerobot's rename step, so lerobot's envs and datasets feed the policy's cameras.

    Our exact config goes into ``policydistill.json`` beside it (lerobot ignores it); ``from_lerobot``
    reads the folder back as the same policy."""
    cfg: Pi0Config = policy.config
    path = Path(path)
    if cfg.variant == "pi05" and cfg.state_prompt == "padded" and not allow_padded_state_prompt:
        raise CheckpointError(
            "this pi0.5 policy reads its state prompt padded to max_state_dim (lerobot 0.4.x); lerobot >= 0.5 "
            "discretises the unpadded state and would feed it different prompts. Distil from the teacher loaded "
            "with state_prompt='raw', or pass allow_padded_state_prompt=True to write it for lerobot 0.4.x."
        )
    s_star = target_time_to_fold(policy, fold_target_time_at)
    state = {k: v.float() for k, v in policy.state_dict().items()}
    steps = cfg.num_inference_steps
    if s_star is not None:
        state.update(fold_target_time(policy, s_star))
        steps = 1
    lr_state = ours_to_lerobot(_unfuse(state, cfg))
    modes = {"VISUAL": "IDENTITY", "STATE": cfg.state_norm, "ACTION": cfg.action_norm}
    stats = {
        "observation.state": policy.normalizer.stats("state", cfg.state_norm),
        "action": policy.normalizer.stats("action", cfg.action_norm),
    }
    stats = {k: v for k, v in stats.items() if v}
    vlm, exp, differs = lerobot_variants(cfg)
    if differs:
        shown = "; ".join(differs[:4]) + (f" and {len(differs) - 4} more" if len(differs) > 4 else "")
        warnings.warn(
            f"{path}: this {cfg.variant} is {_size_name(cfg)}, which stock lerobot cannot build: lerobot builds "
            f"{cfg.variant} only as PaliGemma (Gemma-2B with the SigLIP So400m/14 tower, vocabulary 257152) with a "
            "Gemma-300M or Gemma-2B action expert, and its config.json cannot change those sizes. Differs: "
            f'{shown}. The folder is written with "custom" variants, which lerobot refuses to load; '
            "policydistill reads it back (Pi0Policy.from_lerobot). To run a student in lerobot, distil it from "
            "a full-size teacher (a lerobot pi0/pi0.5 checkpoint or the 'full' preset).",
            stacklevel=3,
        )
    config = {
        "type": cfg.variant,
        "n_obs_steps": 1,
        "device": "cpu",
        "use_amp": False,
        "paligemma_variant": vlm,
        "action_expert_variant": exp,
        "dtype": "float32",
        "chunk_size": cfg.chunk_size,
        "n_action_steps": cfg.n_action_steps,
        "max_state_dim": cfg.max_state_dim,
        "max_action_dim": cfg.max_action_dim,
        "num_inference_steps": steps,
        "time_sampling_beta_alpha": 1.5,
        "time_sampling_beta_beta": 1.0,
        "time_sampling_scale": 0.999,
        "time_sampling_offset": 0.001,
        "min_period": cfg.min_period,
        "max_period": cfg.max_period,
        "image_resolution": [cfg.image_size, cfg.image_size],
        "empty_cameras": 0,
        "tokenizer_max_length": cfg.tokenizer_max_length,
    }
    rel_steps = _relative_steps(cfg, config)
    tok_name = _copy_tokenizer(cfg, path)
    tok: dict[str, Any] = {
        "registry_name": "tokenizer_processor",
        "config": {
            "max_length": cfg.tokenizer_max_length,
            "task_key": "task",
            "padding_side": "right",
            "padding": "max_length",
            "truncation": True,
        },
    }
    from ..hub import is_repo_id

    if cfg.tokenizer == "builtin":
        # lerobot cannot run our built-in tokenizer; only our own loader (policydistill.json) reads it back
        tok["config"]["tokenizer_name"] = "google/paligemma-3b-pt-224"
    else:
        tok["config"]["tokenizer_name"] = cfg.tokenizer if is_repo_id(cfg.tokenizer) else tok_name
    if tok_name is not None:
        tok["artifacts"] = {"tokenizer_name": tok_name}
    if cfg.variant == "pi0":  # lerobot's order: newline, tokenizer, device, relative, normaliser
        before = [
            {"registry_name": "pi0_new_line_processor", "config": {}},
            tok,
            {"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": None}},
            *rel_steps[:1],
        ]
        after: list[dict] = []
    else:  # relative, normaliser, state prompt, tokenizer, device
        before = rel_steps[:1]
        # lerobot saves this step's config as {} and rebuilds it with max_state_dim=32; lerobot 0.4.x pads
        # the prompt's state to that, so the policy's own value is written
        after = [
            {
                "registry_name": "pi05_prepare_state_tokenizer_processor_step",
                "config": {"max_state_dim": cfg.max_state_dim, "task_key": "task"},
            },
            tok,
        ]
    write_lerobot_folder(
        path,
        config,
        lr_state,
        stats,
        cfg.cameras,
        cfg.image_size,
        cfg.state_dim,
        cfg.action_dim,
        modes,
        before,
        after,
        post_steps=rel_steps[1:],
        rename_map=rename_map,
    )
    own = policy.config_dict()
    extra = {k: v for k, v in state.items() if k.startswith("target_time.")}
    if s_star is not None:  # the branch now lives in lerobot's biases: read back, it must not apply twice
        own["num_inference_steps"] = 1
        extra = {k: torch.zeros_like(v) if k.startswith("target_time.fc2.") else v for k, v in extra.items()}
    write_json(path / EXTRA_CONFIG, own)
    write_safetensors(path / EXTRA_TENSORS, extra)
    return path


def _relative_steps(cfg: Pi0Config, config: dict[str, Any]) -> list[dict]:
    """lerobot's relative-action steps [pre, post] and config fields for a policy with a mask (dims are
    named ``dim_000``…: fixed width, so lerobot's substring match excludes exactly the masked-out ones)."""
    mask = cfg.relative_action_mask
    if not mask:
        return []
    names = [f"dim_{i:03d}" for i in range(cfg.action_dim)]
    exclude = [n for n, m in zip(names, list(mask) + [True] * cfg.action_dim) if not m]
    config.update({"use_relative_actions": True, "relative_exclude_joints": exclude, "action_feature_names": names})
    return [
        {
            "registry_name": "relative_actions_processor",
            "config": {"enabled": True, "exclude_joints": exclude, "action_names": names},
        },
        {"registry_name": "absolute_actions_processor", "config": {"enabled": True}},
    ]


__all__ = [
    "from_lerobot",
    "to_lerobot",
    "fold_target_time",
    "fix_lerobot_keys",
    "lerobot_to_ours",
    "ours_to_lerobot",
    "infer_config",
]
