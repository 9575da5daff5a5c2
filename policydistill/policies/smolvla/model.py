"""SmolVLA, native: lerobot's ``VLAFlowMatching`` rebuilt as a flow map F(x_t, t, s, obs).

Data flow (lerobot 0.4.4 semantics, checked against ``tests/fixtures/lerobot/smolvla``):

  prefix  = [image tokens·√d per camera | language tokens·√d | state_proj(state)]
            images: SigLIP-style encoder → pixel shuffle → linear connector;
            masks: images+language bidirectional, the state token one block after them.
  encode  = ONE pass of the truncated text model over the prefix. It keeps, per layer, the post-RoPE
            keys/values. For cross-attention layers it also applies the expert's k/v projections to
            those keys/values right here — lerobot re-projects the cached VLM keys/values through the
            expert's projections at every denoising step; they do not depend on x_t, so we do it once.
            The last VLM layer only has to produce keys/values: its attention output and MLP are skipped.
  flow    = expert only: action tokens (causal among themselves, as lerobot's att mask of ones gives)
            run through the expert layers; layers i % self_attn_every_n_layers == 0 attend jointly to
            [prefix K/V | own K/V], the others cross-attend to the projected VLM K/V. Positions:
            (valid prefix tokens) + i in self-attention layers, i in cross-attention layers.

Time enters as lerobot does: sin-cos(t) is concatenated with the action embedding and mixed by the
action_time MLP. The target time s enters through ``target_time`` (zero-initialised last layer) whose
output is ADDED to sin-cos(t) before that concatenation. Why there: it is the only place where time
exists in this architecture, so the MLP sees (x, t, s) jointly exactly as it sees (x, t); at
initialisation the sum is bit-for-bit lerobot's input (teacher parity on the diagonal); and because
action_time_mlp_in is linear in it, a constant s (a 1-step student, s = 0) folds into that layer's
bias, which is how a distilled student is exported back to a plain lerobot checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...core.embedding import TargetTimeEmbedding, sinusoidal_embedding
from ..base import FlowPolicy
from ..layers import Linear, SiglipEncoder, apply_rope, rope_cos_sin
from ..tokenizer import load_tokenizer
from .configuration import PRESETS, SmolVLAConfig, preset
from .processor import apply_padding_masks, resize_images, smolvla_prompts

# ----------------------------------------------------------------------------------------------
# Building blocks that differ from the Gemma ones in policies/layers.py: Llama's RMSNorm (w·x̂, not
# (1+w)·x̂), lerobot's apply_rope (timescale division, bit-compatible), SiLU gated MLP, and attention
# with a per-query mask (block-causal prefix, causal action tokens) through SDPA with enable_gqa
# (no repeat_kv copies). The vision tower's modules are the shared SiglipEncoder; only its patch
# position ids follow SmolVLM (see vision_position_ids and SmolVLA.vision_tower).
# ----------------------------------------------------------------------------------------------


class LlamaRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def additive_mask(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, Lq, Lk) bool → (B, 1, Lq, Lk) additive mask. finfo.min, not -inf: a fully masked row (a
    padded query) then gives a uniform softmax like lerobot's eager attention instead of NaN, and NaN
    would leak into later layers through the padded keys' values."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)[
        :, None
    ]


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, math_path: bool = False) -> Tensor:
    """q (B, H, Lq, D), k/v (B, KV, Lk, D) → (B, Lq, H·D). ``math_path`` avoids fused kernels (for
    forward-mode AD, e.g. torch.func.jvp in meanflow/lsd)."""
    b, h, lq, d = q.shape
    if math_path:
        rep = h // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        w = (q.float() @ k.float().transpose(-1, -2)) * d**-0.5
        if mask is not None:
            w = w + mask
        out = torch.softmax(w, dim=-1).to(v.dtype) @ v
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=d**-0.5, enable_gqa=h != k.shape[1])
    return out.transpose(1, 2).reshape(b, lq, h * d)


class _Attention(nn.Module):
    """Llama attention projections (HF names). ``kv_in`` ≠ width for the expert's cross-attention
    layers, whose k/v projections read the VLM's keys/values (kv_heads·head_dim wide)."""

    def __init__(self, width: int, heads: int, kv_heads: int, head_dim: int, kv_in: int | None = None) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = Linear(width, heads * head_dim, bias=False)
        self.k_proj = Linear(kv_in or width, kv_heads * head_dim, bias=False)
        self.v_proj = Linear(kv_in or width, kv_heads * head_dim, bias=False)
        self.o_proj = Linear(heads * head_dim, width, bias=False)

    def split(self, x: Tensor, heads: int) -> Tensor:
        """(B, L, heads·D) → (B, heads, L, D)."""
        return x.view(*x.shape[:2], heads, self.head_dim).transpose(1, 2)


class _GatedMLP(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = Linear(width, hidden, bias=False)
        self.up_proj = Linear(width, hidden, bias=False)
        self.down_proj = Linear(hidden, width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """A Llama decoder layer (HF parameter names); attention is driven from outside because the
    VLM and the expert share it."""

    def __init__(
        self, width: int, mlp: int, heads: int, kv_heads: int, head_dim: int, eps: float, kv_in: int | None = None
    ) -> None:
        super().__init__()
        self.input_layernorm = LlamaRMSNorm(width, eps)
        self.self_attn = _Attention(width, heads, kv_heads, head_dim, kv_in=kv_in)
        self.post_attention_layernorm = LlamaRMSNorm(width, eps)
        self.mlp = _GatedMLP(width, mlp)

    def finish(self, h: Tensor, att: Tensor) -> Tensor:
        """Residual around o_proj, then the MLP block."""
        h = h + self.self_attn.o_proj(att)
        return h + self.mlp(self.post_attention_layernorm(h))


def vision_position_ids(side: int, rule: str) -> Tensor:
    """Idefics3/SmolVLM patch position ids for a full side×side grid.

    transformers ≥ 4.5x (what lerobot 0.4.4 runs, and the parity fixture) computes the fractional
    coordinates as i/n·(1−1e−6), which falls just below the bucket boundary i/n, so every row/column
    after the first is shifted down by one: positions per axis are [0, 0, 1, …, n−2]. transformers 5
    (lerobot ≥ 0.5) computes i·(1/n) again, the identity for the usual sizes. Older versions used
    arange(0, 1−1e−6, 1/n), the identity. ``rule`` picks one ("hf5", "hf457" or "identity")."""
    boundaries = torch.arange(1 / side, 1.0, 1 / side)
    if rule == "hf5":
        # transformers 5 (lerobot >= 0.5): i·(1/n) in float32, clamped below 1 (the identity whenever
        # 1/n is exact, e.g. n a power of two)
        step = 1.0 / torch.tensor(side)
        frac = torch.clamp(torch.arange(side, dtype=torch.float32) * step, max=1.0 - 1e-6)
    elif rule == "hf457":
        frac = torch.arange(side, dtype=torch.float32) / side * (1 - 1e-6)
    elif rule == "identity":
        frac = torch.arange(0, 1 - 1e-6, 1 / side)
    else:
        raise ValueError(f"vision_positions must be 'hf5', 'hf457' or 'identity', got {rule!r}")
    bucket = torch.bucketize(frac, boundaries, right=True)
    return (bucket[:, None] * side + bucket[None, :]).flatten()


def pixel_shuffle(x: Tensor, scale: int) -> Tensor:
    """SmolVLM's connector shuffle: (B, N, D) → (B, N/scale², D·scale²)."""
    b, n, d = x.shape
    side = int(n**0.5)
    x = x.view(b, side, side, d).view(b, side, side // scale, d * scale).permute(0, 2, 1, 3)
    x = x.reshape(b, side // scale, side // scale, d * scale * scale).permute(0, 2, 1, 3)
    return x.reshape(b, n // (scale * scale), d * scale * scale)


def make_att_2d_masks(pad_masks: Tensor, att_masks: Tensor) -> Tensor:
    """big_vision's block-causal rule: token i sees token j iff cumsum(att)[j] <= cumsum(att)[i]."""
    cum = torch.cumsum(att_masks.long(), dim=1)
    return (cum[:, None, :] <= cum[:, :, None]) & (pad_masks[:, None, :] & pad_masks[:, :, None])


# ----------------------------------------------------------------------------------------------
# The per-chunk context.
# ----------------------------------------------------------------------------------------------


@dataclass
class SmolVLAContext:
    """Everything a denoising step needs, computed once per chunk by ``encode``.

    kv[j]: for a self-attention expert layer, (K, V) of shape (B, KV, P, D) — the VLM layer's post-RoPE
    keys/values; for a cross-attention layer, the same already passed through the expert's k/v
    projections. Masks and RoPE tables of the action tokens are prebuilt too."""

    kv: list[tuple[Tensor, Tensor]]
    self_mask: Tensor  # (B, 1, S, P+S) additive
    cross_mask: Tensor  # (B, 1, S, P) additive
    rope_self: tuple[Tensor, Tensor]
    rope_cross: tuple[Tensor, Tensor]
    prefix_len: int

    def expand(self, repeats: int) -> SmolVLAContext:
        """The same context for ``repeats`` samples per observation (batch → batch·repeats)."""
        r = lambda x: x.repeat_interleave(repeats, dim=0)  # noqa: E731
        return SmolVLAContext(
            [(r(k), r(v)) for k, v in self.kv],
            r(self.self_mask),
            r(self.cross_mask),
            (r(self.rope_self[0]), r(self.rope_self[1])),
            (r(self.rope_cross[0]), r(self.rope_cross[1])),
            self.prefix_len,
        )


class SmolVLAFrozenPrefix(NamedTuple):
    """``encode_frozen``'s result: the VLM's per-layer post-RoPE keys/values (before any expert
    projection), the action tokens' masks and RoPE tables. Depends on frozen modules only."""

    kv: list[tuple[Tensor, Tensor]]
    self_mask: Tensor
    cross_mask: Tensor
    rope_self: tuple[Tensor, Tensor]
    rope_cross: tuple[Tensor, Tensor]
    prefix_len: int


# ----------------------------------------------------------------------------------------------
# The policy.
# ----------------------------------------------------------------------------------------------


class SmolVLA(FlowPolicy):
    """SmolVLA as a flow-map policy: ``encode(cond) -> SmolVLAContext`` once per chunk (cond is the
    processed observation of :meth:`FlowPolicy.process`), ``flow(x_t, t, s, ctx)`` an expert-only pass.
    x is the normalised, padded action chunk (B, chunk_size, max_action_dim)."""

    architecture = "smolvla"
    config: SmolVLAConfig

    def __init__(self, config: SmolVLAConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = config if config is not None else preset("tiny", **overrides)
        self._init_policy(cfg)
        kv_dim = cfg.num_kv_heads * cfg.head_dim
        self.vision = SiglipEncoder(
            cfg.vision_width,
            cfg.vision_depth,
            cfg.vision_heads,
            cfg.vision_mlp,
            cfg.patch_size,
            cfg.tower_image_size,
            cfg.vision_eps,
        )
        self.connector = Linear(cfg.vision_width * cfg.scale_factor**2, cfg.vlm_width, bias=False)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.vlm_width)
        self.vlm_layers = nn.ModuleList(
            DecoderLayer(cfg.vlm_width, cfg.vlm_mlp, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.rms_eps)
            for _ in range(cfg.num_vlm_layers)
        )
        ew = cfg.expert_width
        self.expert_layers = nn.ModuleList(
            DecoderLayer(
                ew,
                cfg.expert_mlp_size,
                cfg.num_heads,
                cfg.num_kv_heads,
                cfg.head_dim,
                cfg.rms_eps,
                kv_in=kv_dim if cfg.is_cross_layer(j) else None,
            )
            for j in range(cfg.num_vlm_layers)
        )
        self.expert_norm = LlamaRMSNorm(ew, cfg.rms_eps)
        self.state_proj = Linear(cfg.max_state_dim, cfg.vlm_width)
        self.action_in_proj = Linear(cfg.max_action_dim, ew)
        self.action_out_proj = Linear(ew, cfg.max_action_dim)
        self.action_time_mlp_in = Linear(2 * ew, ew)
        self.action_time_mlp_out = Linear(ew, ew)
        self.target_time = TargetTimeEmbedding(ew, embed_dim=ew, min_period=cfg.min_period, max_period=cfg.max_period)
        #: attention without fused kernels (set True for forward-mode AD through flow()).
        self.math_attention = False
        #: how often each prefix stage ran (diagnostics; nothing in flow() counts, so torch.compile of
        #: the per-step pass sees no changing Python state).
        self.counters = {"encode": 0, "vlm_layer": 0, "cross_kv_proj": 0, "vision": 0}
        self._tokenizer: Any = None
        # Patch position ids: a constant of the config, kept off the module's buffers (so building on
        # the meta device and filling weights in place leaves it intact); cached per device.
        self._vision_pos: dict[str, Tensor] = {}
        self.lerobot_extras: dict[str, Tensor] = {}  # lerobot tensors SmolVLA never uses (round trip)
        self.lerobot_config: dict[str, Any] | None = None

    # ---- construction ----
    @classmethod
    def from_config(cls, config: dict) -> SmolVLA:
        return cls(cls.config_from_dict(SmolVLAConfig, config))

    @classmethod
    def from_preset(cls, name: str = "small", **overrides: Any) -> SmolVLA:
        """``tiny`` (unit tests), ``small`` (bundled default) or ``full`` (SmolVLA base size)."""
        return cls(preset(name, **overrides))

    presets = tuple(PRESETS)

    @classmethod
    def from_lerobot(
        cls, path: str | Path, tokenizer: str | None = None, overrides: dict[str, Any] | None = None
    ) -> SmolVLA:
        """Load a lerobot SmolVLA policy folder (no lerobot needed); see smolvla/lerobot.py.
        ``tokenizer``: a local tokenizer folder/file (default: the folder's vlm/ tokenizer.json)."""
        from .lerobot import load_lerobot

        return load_lerobot(path, tokenizer, overrides)

    def to_lerobot(
        self, path: str | Path, fold_target_time: float | None = None, rename_map: dict[str, str] | None = None
    ) -> Path:
        """Write a lerobot SmolVLA policy folder. A distilled student's target-time branch can be
        folded in for one fixed s (``fold_target_time=0.0``: the 1-step map, num_steps=1)."""
        from .lerobot import save_lerobot

        return save_lerobot(self, path, fold_target_time, rename_map)

    def shard_units(self) -> list[tuple[nn.Module, tuple[str, ...]]]:
        """FSDP units (see ``train/fsdp.py``): every vision-tower layer, the connector, the token
        embedding and the projections and MLP of each decoder layer (driven from outside the layer)."""
        units: list[tuple[nn.Module, tuple[str, ...]]] = [(layer, ()) for layer in self.vision.encoder.layers]
        units += [(self.connector, ()), (self.embed_tokens, ())]
        for layer in [*self.vlm_layers, *self.expert_layers]:
            a = layer.self_attn
            units += [(a.q_proj, ()), (a.k_proj, ()), (a.v_proj, ()), (a.o_proj, ()), (layer.mlp, ())]
        return units

    def _inference_functions(self) -> tuple[Any, Any, Any]:
        # class functions, not bound methods: a deep copy of the policy runs its own weights
        return type(self)._prefix, type(self)._flow, None

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- language ----
    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            try:
                self._tokenizer = load_tokenizer(self.config.tokenizer, self.config.vocab_size)
            except FileNotFoundError:
                raise FileNotFoundError(
                    f"SmolVLA tokenizer {self.config.tokenizer!r} not found: expected a folder or file with the "
                    "SmolVLM tokenizer.json (HuggingFaceTB/SmolVLM2-500M-Video-Instruct for SmolVLA base), which "
                    "cannot be downloaded here. Copy it next to the policy as vlm/ or pass "
                    "SmolVLA.from_lerobot(folder, tokenizer=<folder>); our own presets use tokenizer='builtin'."
                ) from None
        return self._tokenizer

    def encode_inputs(self, tasks: list[str], state_normalized: Tensor) -> dict[str, Tensor]:
        """lerobot's SmolVLA prompt: the task with a trailing newline, right padded to the longest
        prompt of the batch (padding="longest"; masked pads change nothing), truncated at
        ``tokenizer_max_length``."""
        tokens, masks = self.tokenizer(smolvla_prompts(tasks), self.config.tokenizer_max_length)
        longest = max(int(masks.sum(1).max()), 1)
        return {"tokens": tokens[:, :longest].to(self.device), "token_masks": masks[:, :longest].to(self.device)}

    def canonical_obs(self, obs: Any) -> dict[str, Any]:
        """The shared formats, with SmolVLA's own resize (see ``smolvla_resize_with_pad``), plus
        lerobot's ``observation.images.<cam>_padding_mask`` (a camera absent for some samples)."""
        cfg = self.config
        c = super().canonical_obs(resize_images(obs, cfg.cameras, cfg.image_size, self.device))
        return apply_padding_masks(c, obs, cfg.cameras)

    # ---- prefix ----
    def vision_tower(self, pixels: Tensor) -> Tensor:
        """The shared SigLIP encoder with SmolVLM's patch position ids (see vision_position_ids)."""
        v = self.vision
        x = v.embeddings.patch_embedding(pixels.to(v.embeddings.patch_embedding.weight.dtype))
        key = str(x.device)
        if key not in self._vision_pos:
            side = self.config.tower_image_size // self.config.patch_size
            with torch.device("cpu"):
                self._vision_pos[key] = vision_position_ids(side, self.config.vision_positions).to(x.device)
        h = x.flatten(2).transpose(1, 2) + v.embeddings.position_embedding(self._vision_pos[key])
        for layer in v.encoder.layers:
            h = layer(h)
        return v.post_layernorm(h)

    def embed_images(self, images: Tensor) -> list[Tensor]:
        """(B, ncam, 3, H, W) → one (B, tokens, d) tensor per camera. All cameras go through the
        vision tower in ONE batched pass (lerobot encodes them one at a time)."""
        b, n = images.shape[:2]
        self.counters["vision"] += 1
        feats = self.vision_tower(images.transpose(0, 1).reshape(n * b, *images.shape[2:]))
        tokens = self.connector(pixel_shuffle(feats, self.config.scale_factor))
        return list(tokens.split(b, dim=0))

    def embed_prefix(self, cond: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """lerobot's embed_prefix: (embs (B, P, d), pad_masks (B, P), att_masks (B, P))."""
        cfg = self.config
        state = cond["state"]
        b = state.shape[0]
        embs, pads, att = [], [], []
        masks = cond["image_masks"]
        for i, tok in enumerate(self.embed_images(cond["images"])):
            embs.append(tok * torch.tensor(tok.shape[-1] ** 0.5, dtype=tok.dtype, device=tok.device))
            pads.append(masks[:, i].bool()[:, None].expand(b, tok.shape[1]))
            att += [0] * tok.shape[1]
        lang = self.embed_tokens(cond["tokens"])
        embs.append(lang * math.sqrt(lang.shape[-1]))
        pads.append(cond["token_masks"].bool())
        att += [0] * lang.shape[1]
        st = self.state_proj(state.to(self.state_proj.weight.dtype))
        embs.append(st[:, None] if st.dim() == 2 else st)
        pads.append(torch.ones(b, 1, dtype=torch.bool, device=st.device))
        att += [1]  # images and language do not attend to the state
        embs_t, pad_t = torch.cat(embs, dim=1), torch.cat(pads, dim=1)
        att_t = torch.tensor(att, dtype=torch.bool, device=pad_t.device)[None].expand(b, -1)
        if cfg.prefix_length > 0 and embs_t.shape[1] < cfg.prefix_length:
            extra = cfg.prefix_length - embs_t.shape[1]
            embs_t = F.pad(embs_t, (0, 0, 0, extra))
            pad_t = F.pad(pad_t, (0, extra), value=False)
            att_t = F.pad(att_t, (0, extra), value=False)
        return embs_t, pad_t, att_t

    def _qkv(self, layer: DecoderLayer, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a = layer.self_attn
        x = layer.input_layernorm(h)
        return a.split(a.q_proj(x), a.heads), a.split(a.k_proj(x), a.kv_heads), a.split(a.v_proj(x), a.kv_heads)

    def _cross_kv(self, layer: DecoderLayer, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """The expert's k/v projections applied to the VLM's (post-RoPE) keys and values."""
        a = layer.self_attn
        self.counters["cross_kv_proj"] += 1

        def flat(x: Tensor) -> Tensor:  # (B, KV, P, D) → (B, P, KV·D), lerobot's head-major layout
            return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)

        return a.split(a.k_proj(flat(k)), a.kv_heads), a.split(a.v_proj(flat(v)), a.kv_heads)

    def frozen_modules(self, train: str) -> list[str]:
        """ "expert": the vision tower, connector, token embedding, VLM layers AND the state
        projection stay frozen; the action expert (its cross-attention key/value projections
        included), the action/time projections and the target-time branch train. SmolVLA puts the
        state token in the VLM prefix, so its projection is frozen with the prefix (lerobot's
        ``train_expert_only`` trains it through the frozen VLM): that keeps the VLM's keys/values a
        function of frozen weights only, computed once per batch (``encode_frozen``)."""
        if train == "expert":
            return ["vision", "connector", "embed_tokens", "vlm_layers", "state_proj"]
        return super().frozen_modules(train)

    def lora_targets(self) -> dict[str, str]:
        """LoRA adapters (``--lora-rank``) go on every projection of the action expert."""
        return {"expert_layers": r".*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"}

    def encode(self, cond: Any) -> SmolVLAContext:
        """The prefix pass, once per chunk. Given a ``SharedPrefix`` of this model's frozen modules,
        the VLM keys/values computed once for the batch are reused and only the expert's
        cross-attention key/value projections run (with this model's own weights)."""
        cond, frozen = self.split_prefix(cond)
        if frozen is not None:
            return self._finish_prefix(frozen)
        args = self._prefix_args(cond)
        self.counters["encode"] += 1
        if self._compiled is not None and not torch.is_grad_enabled():
            return self._compiled.prefix(self, *args)
        return self._prefix(*args)

    def encode_frozen(self, cond: Any) -> SmolVLAFrozenPrefix:
        """The part of the prefix that reads only the modules frozen under ``--train expert``."""
        self.counters["encode"] += 1
        return self._vlm_pass(*self._prefix_args(cond))

    def _prefix_args(self, cond: Any) -> tuple[Tensor, ...]:
        if not isinstance(cond, dict) or "tokens" not in cond:
            raise TypeError(
                "SmolVLA.encode expects a processed observation (policy.process(obs)): a dict with "
                f"images, image_masks, tokens, token_masks, state; got {type(cond).__name__}"
            )
        return cond["images"], cond["image_masks"], cond["tokens"], cond["token_masks"], cond["state"]

    def _prefix(
        self, images: Tensor, image_masks: Tensor, tokens: Tensor, token_masks: Tensor, state: Tensor
    ) -> SmolVLAContext:
        return self._finish_prefix(self._vlm_pass(images, image_masks, tokens, token_masks, state))

    def _finish_prefix(self, frozen: SmolVLAFrozenPrefix) -> SmolVLAContext:
        """The expert's k/v projections on the cross-attention layers' VLM keys/values."""
        cfg = self.config
        kv = [
            self._cross_kv(self.expert_layers[i], k, v) if cfg.is_cross_layer(i) else (k, v)
            for i, (k, v) in enumerate(frozen.kv)
        ]
        return SmolVLAContext(
            kv, frozen.self_mask, frozen.cross_mask, frozen.rope_self, frozen.rope_cross, frozen.prefix_len
        )

    def _vlm_pass(
        self, images: Tensor, image_masks: Tensor, tokens: Tensor, token_masks: Tensor, state: Tensor
    ) -> SmolVLAFrozenPrefix:
        cfg = self.config
        h, pad, att = self.embed_prefix(
            {"images": images, "image_masks": image_masks, "tokens": tokens, "token_masks": token_masks, "state": state}
        )
        b, p = pad.shape
        dtype = h.dtype
        pos = torch.cumsum(pad.long(), dim=1) - 1
        cos, sin = rope_cos_sin(pos, cfg.head_dim, cfg.rope_max_wavelength)
        mask = additive_mask(make_att_2d_masks(pad, att), dtype)
        kv: list[tuple[Tensor, Tensor]] = []
        last = len(self.vlm_layers) - 1
        for i, layer in enumerate(self.vlm_layers):
            self.counters["vlm_layer"] += 1
            q, k, v = self._qkv(layer, h)
            k = apply_rope(k, cos, sin)
            kv.append((k, v))
            if i == last:
                break  # nothing reads the last layer's output: skip its attention and MLP
            h = layer.finish(h, attend(apply_rope(q, cos, sin), k, v, mask, self.math_attention))
        # Action-token masks and RoPE tables: constant across the denoising steps of this chunk.
        n = cfg.chunk_size
        allowed_prefix = pad[:, None, :].expand(b, n, p)
        causal = torch.ones(n, n, dtype=torch.bool, device=pad.device).tril()[None].expand(b, n, n)
        self_mask = additive_mask(torch.cat([allowed_prefix, causal], dim=2), dtype)
        cross_mask = additive_mask(allowed_prefix, dtype)
        steps = torch.arange(n, device=pad.device)[None]
        rope_self = rope_cos_sin(pad.long().sum(1, keepdim=True) + steps, cfg.head_dim, cfg.rope_max_wavelength)
        rope_cross = rope_cos_sin(steps.expand(b, n), cfg.head_dim, cfg.rope_max_wavelength)
        return SmolVLAFrozenPrefix(kv, self_mask, cross_mask, rope_self, rope_cross, p)

    # ---- suffix ----
    def embed_suffix(self, x_t: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """Action tokens: action_in_proj(x) ‖ (sin-cos(t) + target_time(s)) → action_time MLP."""
        cfg = self.config
        a = self.action_in_proj(x_t.to(self.action_in_proj.weight.dtype))
        temb = sinusoidal_embedding(t.to(torch.float32), cfg.expert_width, cfg.min_period, cfg.max_period)
        temb = temb.to(a.dtype) + self.target_time(s.to(torch.float32)).to(a.dtype)
        h = torch.cat([a, temb[:, None, :].expand_as(a)], dim=2)
        return self.action_time_mlp_out(F.silu(self.action_time_mlp_in(h)))

    def flow(self, x_t: Tensor, t: Tensor, s: Tensor, ctx: SmolVLAContext) -> Tensor:
        b, b0 = x_t.shape[0], ctx.self_mask.shape[0]
        if b != b0:
            if b % b0:
                raise ValueError(f"x_t has batch {b}, not a multiple of the encoded batch {b0}")
            ctx = ctx.expand(b // b0)
        if self._compiled is not None and not torch.is_grad_enabled():
            return self._compiled.step(self, x_t, t, s, ctx)
        return self._flow(x_t, t, s, ctx)

    def _flow(self, x_t: Tensor, t: Tensor, s: Tensor, ctx: SmolVLAContext) -> Tensor:
        cfg = self.config
        h = self.embed_suffix(x_t, t, s)
        for j, layer in enumerate(self.expert_layers):
            a = layer.self_attn
            if cfg.is_cross_layer(j):
                q = apply_rope(a.split(a.q_proj(layer.input_layernorm(h)), a.heads), *ctx.rope_cross)
                k_all, v_all = ctx.kv[j]
                mask = ctx.cross_mask
            else:
                q, k, v = self._qkv(layer, h)
                q, k = apply_rope(q, *ctx.rope_self), apply_rope(k, *ctx.rope_self)
                pk, pv = ctx.kv[j]
                k_all, v_all = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
                mask = ctx.self_mask
            h = layer.finish(h, attend(q, k_all, v_all, mask, self.math_attention))
        return self.action_out_proj(self.expert_norm(h)).float()

    # ---- lerobot's training path: prefix and suffix in one joint pass, no cache ----
    def flow_joint(self, x_t: Tensor, t: Tensor, s: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """The same F computed the way lerobot's VLAFlowMatching.forward does (full attention over
        [prefix | suffix] with one 2-D block mask; cross layers attend to the live VLM K/V). It
        checks that the cached path is exact; training uses forward() = flow(encode(cond))."""
        cfg = self.config
        hp, pad_p, att_p = self.embed_prefix(cond)
        hs = self.embed_suffix(x_t, t, s)
        b, p = pad_p.shape
        n = hs.shape[1]
        ones = torch.ones(b, n, dtype=torch.bool, device=pad_p.device)
        pad, att = torch.cat([pad_p, ones], dim=1), torch.cat([att_p, ones], dim=1)
        mask = additive_mask(make_att_2d_masks(pad, att), hp.dtype)
        pos = torch.cumsum(pad.long(), dim=1) - 1
        wl = cfg.rope_max_wavelength
        rp, rs = rope_cos_sin(pos[:, :p], cfg.head_dim, wl), rope_cos_sin(pos[:, p:], cfg.head_dim, wl)
        rc = rope_cos_sin(pos[:, p:] - pos[:, p:].min(dim=1, keepdim=True).values, cfg.head_dim, wl)
        for i, (vl, el) in enumerate(zip(self.vlm_layers, self.expert_layers)):
            qp, kp, vp = self._qkv(vl, hp)
            qp, kp = apply_rope(qp, *rp), apply_rope(kp, *rp)
            if cfg.is_cross_layer(i):
                out_p = attend(qp, kp, vp, mask[:, :, :p, :p], self.math_attention)
                a = el.self_attn
                qs = apply_rope(a.split(a.q_proj(el.input_layernorm(hs)), a.heads), *rc)
                ke, ve = self._cross_kv(el, kp, vp)
                out_s = attend(qs, ke, ve, mask[:, :, p:, :p], self.math_attention)
            else:
                qs, ks, vs = self._qkv(el, hs)
                qs, ks = apply_rope(qs, *rs), apply_rope(ks, *rs)
                out = attend(
                    torch.cat([qp, qs], 2), torch.cat([kp, ks], 2), torch.cat([vp, vs], 2), mask, self.math_attention
                )
                out_p, out_s = out[:, :p], out[:, p:]
            hp = vl.finish(hp, out_p)
            hs = el.finish(hs, out_s)
        return self.action_out_proj(self.expert_norm(hs)).float()

    # ---- lerobot's loss ----
    def lerobot_loss(
        self, cond: dict[str, Tensor], actions: Tensor, noise: Tensor | None = None, time: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """lerobot's SmolVLA training loss on a processed batch and a normalised, padded action chunk:
        (mean, elementwise (B, chunk, max_action_dim)). NOTE: lerobot averages over ALL max_action_dim
        dims, padding included (pi0 averages over the real action dims only)."""
        if noise is None:
            noise = torch.randn_like(actions)
        if time is None:
            time = torch.distributions.Beta(1.5, 1.0).sample((actions.shape[0],)).to(actions) * 0.999 + 0.001
        te = time[:, None, None]
        x_t = te * noise + (1 - te) * actions
        v = self.forward(x_t, time, time, cond)
        losses = (noise - actions - v) ** 2
        return losses.mean(), losses
