"""pi0 and pi0.5, native (no transformers, no lerobot), built for a cached denoising loop.

Architecture (openpi / lerobot 0.4.4 numerics):
  prefix  = [SigLIP(image_k) → linear projector, for every camera] + Gemma-embedded prompt·√width;
            bidirectional over valid tokens; RoPE positions = cumsum(valid) − 1.
  suffix  = pi0:   [state token] + chunk action tokens, action_time MLP(action ⊕ sincos(t))
            pi0.5: chunk action tokens; time → MLP → adaRMS (scale, shift, gate) in every expert norm
  The Gemma VLM (prefix) and the Gemma expert (suffix) run layer by layer with JOINT attention:
  at every layer the suffix queries attend to the prefix keys/values of that layer.
  Block-causal: the prefix never sees the suffix; pi0's state token sees the prefix and itself;
  action tokens see everything.

Inference path (``encode`` once per chunk, ``flow`` per denoising step):
  * ``encode`` runs the prefix once and keeps per-layer keys/values (the KV cache); the last VLM
    layer computes only its keys/values (its attention output and MLP are never read);
  * pi0's state token does not depend on the denoising step: ``encode`` also runs it through the
    expert once and appends its keys/values to the cache;
  * masks, rotary tables of the action positions and (under no_grad) a preallocated key/value
    buffer per layer are built in ``encode``: a step writes its action keys/values into the tail
    of the buffer instead of concatenating the cache again;
  * attention never copies key/value heads (grouped queries are folded into the query length);
  * ``compile_for_inference()`` optionally runs both passes through torch.compile (one graph each).

Target time: the zero-initialised ``TargetTimeEmbedding`` output is ADDED to
  pi0:   the sin-cos time embedding, before the action_time MLP. That embedding is the only
         channel through which t reaches the expert, so s enters exactly where t does and goes
         through the same learned projection; adding after the MLP would bypass its nonlinearity.
  pi0.5: the adaRMS conditioning vector (after the time MLP), which modulates every expert norm.
With its last layer at zero, the student equals the teacher exactly (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...core.embedding import TargetTimeEmbedding, sinusoidal_embedding
from ...core.rtc import per_token_time
from ...core.sampler import sample_with_ctx
from ..base import FlowPolicy
from ..layers import (
    GemmaStack,
    Linear,
    SiglipEncoder,
    gated_residual,
    grouped_attention,
    key_padding_mask,
    linear,
    rope_cos_sin,
    scaled_embedding,
)
from ..tokenizer import load_tokenizer
from .configuration import Pi0Config, preset
from .processor import pi0_prompts, pi05_prompts


@dataclass
class PrefixCache:
    """What ``encode`` hands every ``flow`` call."""

    keys: list[Tensor]  # per layer (B, KVH, Lc, hd): prefix (+ pi0 state token), rotated
    values: list[Tensor]
    key_mask: Tensor | None  # additive (B, 1, 1, Lc + chunk); None = all keys valid
    cos: Tensor  # rotary tables of the action positions (B, 1, chunk, hd)
    sin: Tensor
    k_buf: list[Tensor] | None = None  # no-grad inference: (B, KVH, Lc + chunk, hd), head filled once
    v_buf: list[Tensor] | None = None
    # training-time RTC: the clean actions (B, chunk, max_action_dim) and where they hold (B, chunk)
    rtc_clean: Tensor | None = None
    rtc_mask: Tensor | None = None

    @property
    def cached_len(self) -> int:
        return self.keys[0].shape[2]


class VLMPrefix(NamedTuple):
    """``encode_frozen``'s result: what depends only on the frozen vision-language modules."""

    keys: list[Tensor]  # per VLM layer (B, KVH, P, hd), rotated
    values: list[Tensor]
    key_mask: Tensor | None  # additive (B, 1, 1, P + state + chunk); None = all keys valid
    cos: Tensor  # rotary tables of every position (prefix, pi0's state token, actions)
    sin: Tensor


class _CacheWriter:
    """Builds the per-layer keys/values of the cached part (the prefix, then pi0's state token).

    Inference (``inplace``): each layer's keys/values are written straight into a buffer with
    room for the whole chunk — ``flow`` writes the action keys/values into its tail — and the
    cache holds views of its head: no concatenation per appended token, no copy at the end.
    With autograd on, plain concatenation: writes into a shared buffer would break backward."""

    def __init__(self, total_len: int, inplace: bool) -> None:
        self.total_len, self.inplace = total_len, inplace
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []
        self.k_buf: list[Tensor] = []
        self.v_buf: list[Tensor] = []

    def append(self, layer: int, k: Tensor, v: Tensor) -> None:
        first = layer == len(self.keys)
        if not self.inplace:
            if first:
                self.keys.append(k)
                self.values.append(v)
            else:
                self.keys[layer] = torch.cat([self.keys[layer], k], 2)
                self.values[layer] = torch.cat([self.values[layer], v], 2)
            return
        if first:
            b, h, _, d = k.shape
            self.k_buf.append(k.new_empty(b, h, self.total_len, d))
            self.v_buf.append(v.new_empty(b, h, self.total_len, d))
        start = 0 if first else self.keys[layer].shape[2]
        end = start + k.shape[2]
        self.k_buf[layer][:, :, start:end] = k
        self.v_buf[layer][:, :, start:end] = v
        kk, vv = self.k_buf[layer][:, :, :end], self.v_buf[layer][:, :, :end]
        if first:
            self.keys.append(kk)
            self.values.append(vv)
        else:
            self.keys[layer], self.values[layer] = kk, vv


class Pi0Policy(FlowPolicy):
    """pi0 (``variant="pi0"``) or pi0.5 (``variant="pi05"``) as a flow-map policy."""

    architecture = "pi0"

    def __init__(self, config: Pi0Config | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = (config or preset("small", self._default_variant())).validate()
        for k, v in overrides.items():
            setattr(cfg, k, v)
        cfg.validate()
        self._init_policy(cfg)
        self.is_pi05 = cfg.variant == "pi05"
        we = cfg.expert_width
        self.vision = SiglipEncoder(
            cfg.vision_width,
            cfg.vision_depth,
            cfg.vision_heads,
            cfg.vision_mlp_dim,
            cfg.patch_size,
            cfg.image_size,
            cfg.ln_eps,
        )
        self.projector = Linear(cfg.vision_width, cfg.vlm_width)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.vlm_width)
        nn.init.normal_(self.embed_tokens.weight, std=cfg.vlm_width**-0.5)
        self.vlm = GemmaStack(
            cfg.vlm_width, cfg.vlm_depth, cfg.vlm_mlp_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.rms_eps
        )
        self.expert = GemmaStack(
            we,
            cfg.vlm_depth,
            cfg.expert_mlp_dim,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
            cfg.rms_eps,
            cond_dim=we if self.is_pi05 else None,
        )
        self.action_in_proj = Linear(cfg.max_action_dim, we)
        self.action_out_proj = Linear(we, cfg.max_action_dim)
        if self.is_pi05:
            self.time_mlp_in = Linear(we, we)
            self.time_mlp_out = Linear(we, we)
        else:
            self.state_proj = Linear(cfg.max_state_dim, we)
            self.action_time_mlp_in = Linear(2 * we, we)
            self.action_time_mlp_out = Linear(we, we)
        self.target_time = TargetTimeEmbedding(we, embed_dim=we, min_period=cfg.min_period, max_period=cfg.max_period)
        self._tokenizer = None
        #: counts prefix passes (tests prove one per chunk, not one per step)
        self.prefix_calls = 0

    @classmethod
    def _default_variant(cls) -> str:
        return "pi0"

    # ------------------------------------------------------------------ training modes
    def frozen_modules(self, train: str) -> list[str]:
        """ "expert": the vision tower, its projector, the token embedding and the Gemma VLM stay
        frozen; the action expert, the action/state/time projections and the target-time branch
        train. The VLM's per-layer keys/values are then a function of frozen weights only
        (``encode_frozen``); pi0's state token, which runs through the (trained) expert, is added
        by ``encode`` with the model's own weights."""
        if train == "expert":
            return ["vision", "projector", "embed_tokens", "vlm"]
        return super().frozen_modules(train)

    def lora_targets(self) -> dict[str, str]:
        """LoRA adapters (``--lora-rank``) go on the action expert's attention output and MLP
        projections. Not on its fused q/k/v projection: the state token's last layer reads that
        weight directly (keys and values only), which an adapter would not see."""
        return {"expert": r".*\.(o_proj|gate_up_proj|down_proj)"}

    # ------------------------------------------------------------------ text
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.config.tokenizer, self.config.vocab_size)
        return self._tokenizer

    def encode_inputs(self, tasks: list[str], state_normalized: Tensor) -> dict[str, Tensor]:
        if self.is_pi05:
            raw = self.config.state_prompt == "raw"
            prompts = pi05_prompts(tasks, state_normalized[:, : self.config.state_dim] if raw else state_normalized)
        else:
            prompts = pi0_prompts(tasks)
        tokens, masks = self.tokenizer(prompts, self.config.tokenizer_max_length)
        if int(tokens.max()) >= self.config.vocab_size:
            raise ValueError(f"tokenizer produced id {int(tokens.max())} >= vocab_size {self.config.vocab_size}")
        return {"tokens": tokens.to(self.device), "token_masks": masks.to(self.device)}

    # ------------------------------------------------------------------ prefix
    def embed_prefix(
        self, images: Tensor, image_masks: Tensor, tokens: Tensor, token_masks: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(B, ncam, 3, H, W) in [−1,1], (B, ncam) bool, (B, L) ids, (B, L) bool →
        embeddings (B, ncam·patches + L, vlm_width) and the valid mask. All cameras in one batch."""
        b, n = images.shape[:2]
        feats = self.projector(self.vision(images.flatten(0, 1)))  # (B·n, patches, W)
        p = feats.shape[1]
        img = feats.reshape(b, n * p, -1)
        img_valid = image_masks[:, :, None].expand(b, n, p).reshape(b, n * p)
        lang = scaled_embedding(self.embed_tokens, tokens).to(img.dtype)
        return torch.cat([img, lang], dim=1), torch.cat([img_valid, token_masks.bool()], dim=1)

    def _rope(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        return rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta, dtype)

    def encode(self, cond: Any) -> PrefixCache:
        """Prefix pass (once per chunk) → per-layer keys/values (+ pi0's state token). Given a
        ``SharedPrefix`` of this model's frozen modules, the VLM's keys/values computed once for
        the batch are reused and only pi0's state token runs (through this model's expert)."""
        cond, frozen = self.split_prefix(cond)
        cond = self.process(cond)
        if frozen is not None:
            return self._with_rtc(self._finish_prefix(frozen, cond["state"]), cond)
        self.prefix_calls += 1
        args = self._prefix_args(cond)
        if self._compiled is not None and not torch.is_grad_enabled():
            return self._with_rtc(self._compiled.prefix(self, *args), cond)
        return self._with_rtc(self._prefix(*args), cond)

    def _with_rtc(self, cache: PrefixCache, cond: dict[str, Any]) -> PrefixCache:
        """The cache with the batch's training-time RTC prefix, when it has one."""
        if cond.get("rtc_mask") is None:
            return cache
        if self.config.rtc_training_max_delay <= 0:
            raise ValueError(
                "this policy was not trained with training-time RTC (rtc_training_max_delay = 0): a hard action "
                "prefix would be out of distribution; use guided RTC or train with --rtc-max-delay"
            )
        cache.rtc_clean, cache.rtc_mask = cond["rtc_clean"], cond["rtc_mask"].bool()
        return cache

    def encode_frozen(self, cond: Any) -> VLMPrefix:
        """The VLM part of the prefix (vision, projector, embeddings, VLM: the modules frozen under
        ``--train expert``): per-layer keys/values and the masks/rotary tables of the whole chunk."""
        self.prefix_calls += 1
        images, image_masks, tokens, token_masks, _, padded = self._prefix_args(self.process(cond))
        kv = _CacheWriter(0, inplace=False)
        key_mask, cos, sin = self._vlm_kv(images, image_masks, tokens, token_masks, padded, kv)
        return VLMPrefix(kv.keys, kv.values, key_mask, cos, sin)

    def _finish_prefix(self, frozen: VLMPrefix, state: Tensor) -> PrefixCache:
        """A ``PrefixCache`` from the shared VLM keys/values: pi0's state token is appended (with
        this model's own expert and state projection, autograd on when training); the shared
        tensors are never written to (concatenation, not the in-place buffers of inference)."""
        p, n_state = frozen.keys[0].shape[2], (0 if self.is_pi05 else 1)
        kv = _CacheWriter(0, inplace=False)
        kv.keys, kv.values = list(frozen.keys), list(frozen.values)
        cos, sin, key_mask = frozen.cos, frozen.sin, frozen.key_mask
        if n_state:
            mask = None if key_mask is None else key_mask[..., : p + 1]
            self._state_token(state.to(cos.dtype), cos[:, :, p : p + 1], sin[:, :, p : p + 1], mask, kv)
        return PrefixCache(kv.keys, kv.values, key_mask, cos[:, :, p + n_state :], sin[:, :, p + n_state :])

    def _prefix_args(self, cond: dict[str, Any]) -> tuple:
        # The one data-dependent branch of the prefix, taken here so that the tensor code has
        # none (torch.compile captures it whole): with every key valid (the usual batch-1 case)
        # attention runs without a mask. An exported program must not bake in the example's
        # padding pattern: under torch.export the mask is always built.
        padded = (
            torch.compiler.is_exporting() or not bool(cond["image_masks"].all()) or not bool(cond["token_masks"].all())
        )
        return cond["images"], cond["image_masks"], cond["tokens"], cond["token_masks"], cond["state"], padded

    def sample_chunk(self, cond: Any, noise: Tensor, steps: int, mode: str) -> Tensor:
        if self._compiled is not None and not torch.is_grad_enabled():
            # prefix and every step in ONE compiled program: no per-step dispatch or guard checks
            self.prefix_calls += 1
            return self._compiled.chunk(self, *self._prefix_args(self.process(cond)), noise, steps, mode)
        return super().sample_chunk(cond, noise, steps, mode)

    def _chunk(
        self,
        images: Tensor,
        image_masks: Tensor,
        tokens: Tensor,
        token_masks: Tensor,
        state: Tensor,
        padded: bool,
        noise: Tensor,
        steps: int,
        mode: str,
    ) -> Tensor:
        """Prefix + ``steps`` jumps with the sampler's rule, written for one compiled graph."""
        ctx = self._prefix(images, image_masks, tokens, token_masks, state, padded)
        return sample_with_ctx(_EagerSteps(self), noise, ctx, steps, mode)

    def _prefix(
        self, images: Tensor, image_masks: Tensor, tokens: Tensor, token_masks: Tensor, state: Tensor, padded: bool
    ) -> PrefixCache:
        n_state = 0 if self.is_pi05 else 1
        kv = _CacheWriter(0, inplace=not torch.is_grad_enabled())  # _vlm_kv sets its length
        key_mask, cos, sin = self._vlm_kv(images, image_masks, tokens, token_masks, padded, kv)
        p = kv.keys[0].shape[2]
        if n_state:
            mask = None if key_mask is None else key_mask[..., : p + 1]
            self._state_token(state.to(cos.dtype), cos[:, :, p : p + 1], sin[:, :, p : p + 1], mask, kv)
        cache = PrefixCache(kv.keys, kv.values, key_mask, cos[:, :, p + n_state :], sin[:, :, p + n_state :])
        if kv.inplace:
            cache.k_buf, cache.v_buf = kv.k_buf, kv.v_buf
        return cache

    def _vlm_kv(
        self, images: Tensor, image_masks: Tensor, tokens: Tensor, token_masks: Tensor, padded: bool, kv: _CacheWriter
    ) -> tuple[Tensor | None, Tensor, Tensor]:
        """The VLM pass: writes every layer's prefix keys/values into ``kv``; returns the additive key
        mask (None when every key is valid) and the rotary tables of the whole chunk's positions."""
        cfg = self.config
        embs, valid = self.embed_prefix(images.to(self.dtype), image_masks, tokens, token_masks)
        dtype, (b, p) = embs.dtype, valid.shape
        n_state, chunk = (0 if self.is_pi05 else 1), cfg.chunk_size
        # Rotary tables of every position of the chunk in one go: prefix (cumsum(valid) − 1),
        # pi0's state token (n_valid), then the actions.
        n_valid = valid.long().sum(1, keepdim=True)
        tail = n_valid + torch.arange(n_state + chunk, device=valid.device)[None]
        cos, sin = self._rope(torch.cat([valid.long().cumsum(1) - 1, tail], 1), dtype)
        key_valid = torch.cat([valid, valid.new_ones(b, n_state + chunk)], 1)
        key_mask = key_padding_mask(key_valid, dtype) if padded else None
        kv.total_len = p + n_state + chunk  # room for the whole chunk in inference buffers
        mask = None if key_mask is None else key_mask[..., :p]
        h = embs
        last = len(self.vlm.layers) - 1
        for i, layer in enumerate(self.vlm.layers):
            x, _ = layer.input_layernorm(h)
            if i == last and cfg.prefix_skip_last:
                kv.append(i, *layer.self_attn.kv(x, cos[:, :, :p], sin[:, :, :p]))
                break  # nobody reads the last layer's queries, attention output, MLP or final norm
            q, k, v = layer.self_attn.qkv(x, cos[:, :, :p], sin[:, :, :p])
            kv.append(i, k, v)
            h = h + layer.self_attn.o_proj(grouped_attention(q, k, v, mask, layer.self_attn.scaling))
            x, _ = layer.post_attention_layernorm(h)
            h = h + layer.mlp(x)
        return key_mask, cos, sin

    def _state_token(self, state: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, kv: _CacheWriter) -> None:
        """pi0: run the state token (which sees the prefix and itself, never the actions) through
        the expert ONCE and append its per-layer keys/values to the cache."""
        s = self.state_proj(state)[:, None]
        last = len(self.expert.layers) - 1
        for i, layer in enumerate(self.expert.layers):
            x, _ = layer.input_layernorm(s)
            if i == last:
                kv.append(i, *layer.self_attn.kv(x, cos, sin))
                break
            q, k, v = layer.self_attn.qkv(x, cos, sin)
            kv.append(i, k, v)
            s = s + layer.self_attn.o_proj(
                grouped_attention(q, kv.keys[i], kv.values[i], mask, layer.self_attn.scaling)
            )
            x, _ = layer.post_attention_layernorm(s)
            s = s + layer.mlp(x)

    # ------------------------------------------------------------------ suffix
    def time_embedding(self, t: Tensor, dtype: torch.dtype) -> Tensor:
        """pi0's sin-cos embedding of t (core's, float64 periods as openpi). Nothing is cached on
        the module: torch.export traces it as a pure function."""
        cfg = self.config
        return sinusoidal_embedding(t, cfg.expert_width, cfg.min_period, cfg.max_period, dtype=dtype)

    def flow(self, x_t: Tensor, t: Tensor, s: Tensor, ctx: PrefixCache) -> Tensor:
        """Average velocity from t to s for the action chunk x_t (B, chunk, max_action_dim):
        one suffix-only pass through the expert against the cached prefix."""
        if self._compiled is not None and not torch.is_grad_enabled():
            return self._compiled.step(self, x_t, t, s, ctx)
        return self._flow(x_t, t, s, ctx)

    def _flow(self, x_t: Tensor, t: Tensor, s: Tensor, ctx: PrefixCache) -> Tensor:
        dtype = self.action_in_proj.weight.dtype
        x_t = x_t.to(dtype)
        we = self.config.expert_width
        rtc = ctx.rtc_mask
        if rtc is not None:
            # Training-time RTC: the committed actions enter clean, with time (and target time) 0 per
            # token; every other token keeps the sample's t and s.
            x_t = torch.where(rtc[..., None], ctx.rtc_clean.to(dtype), x_t)
            t, s = per_token_time(t, rtc), per_token_time(s, rtc)
        temb = self.time_embedding(t, dtype).reshape(*t.shape, -1)
        s_emb = self.target_time(s).to(dtype).reshape(*s.shape, -1)
        if self.is_pi05:
            h = self.action_in_proj(x_t)
            cond = F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(temb)))) + s_emb
        else:
            temb = temb + s_emb
            a = self.action_in_proj(x_t)
            w = self.action_time_mlp_in.weight
            # mlp_in(action ⊕ time) = W_a·action + (W_t·time + b): the time half once per sample, not
            # per token. (The sum in this order: see ``layers.linear`` on compiled graphs.)
            t_part = linear(temb, w[:, we:], self.action_time_mlp_in.bias)
            h = (t_part[:, None] if t_part.dim() == 2 else t_part) + linear(a, w[:, :we])
            h = self.action_time_mlp_out(F.silu(h))
            cond = None
        use_buf = ctx.k_buf is not None and not torch.is_grad_enabled()
        lc = ctx.cached_len
        for i, layer in enumerate(self.expert.layers):
            x, gate = layer.input_layernorm(h, cond)
            att = layer.self_attn
            q, k, v = att.qkv(x, ctx.cos, ctx.sin)
            if use_buf:
                ctx.k_buf[i][:, :, lc:] = k
                ctx.v_buf[i][:, :, lc:] = v
                kk, vv = ctx.k_buf[i], ctx.v_buf[i]
            else:
                kk, vv = torch.cat([ctx.keys[i], k], 2), torch.cat([ctx.values[i], v], 2)
            h = gated_residual(h, att.o_proj(grouped_attention(q, kk, vv, ctx.key_mask, att.scaling)), gate)
            x, gate = layer.post_attention_layernorm(h, cond)
            h = gated_residual(h, layer.mlp(x), gate)
        h, _ = self.expert.norm(h, cond)
        out = self.action_out_proj(h)
        if rtc is not None:  # the prefix stays where it is: zero average velocity on its tokens
            out = torch.where(rtc[..., None], torch.zeros_like(out), out)
        return out

    # ------------------------------------------------------------------ reference path
    def velocity_full_attention(self, x_t: Tensor, t: Tensor, cond: Any) -> Tensor:
        """lerobot's training path: prefix and suffix in ONE joint pass per layer with the
        block-causal 2-D mask, no cache. Slow; kept as an independent check of the cached path."""
        cfg = self.config
        cond = self.process(cond)
        embs, valid = self.embed_prefix(
            cond["images"].to(self.dtype), cond["image_masks"], cond["tokens"], cond["token_masks"]
        )
        b, p = valid.shape
        temb = self.time_embedding(t, embs.dtype)
        adarms = None
        if self.is_pi05:
            suffix = self.action_in_proj(x_t)
            adarms = F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(temb))))
            ar = [1] + [0] * (cfg.chunk_size - 1)
        else:
            a = self.action_in_proj(x_t)
            at = torch.cat([a, temb[:, None].expand_as(a)], dim=2)
            at = self.action_time_mlp_out(F.silu(self.action_time_mlp_in(at)))
            suffix = torch.cat([self.state_proj(cond["state"].to(a.dtype))[:, None], at], dim=1)
            ar = [1, 1] + [0] * (cfg.chunk_size - 1)
        n_s = suffix.shape[1]
        pad = torch.cat([valid, torch.ones(b, n_s, dtype=torch.bool, device=valid.device)], 1)
        ar_t = torch.tensor([0] * p + ar, device=valid.device)
        cum = ar_t.cumsum(0)
        att2d = (cum[None, :] <= cum[:, None])[None] & pad[:, None, :] & pad[:, :, None]
        mask = torch.where(att2d, 0.0, torch.finfo(embs.dtype).min)[:, None].to(embs.dtype)
        pos = pad.long().cumsum(1) - 1
        cos, sin = self._rope(pos, embs.dtype)
        hs = [embs, suffix]
        stacks = [self.vlm, self.expert]
        for li in range(cfg.vlm_depth):
            qs, ks, vs, gates = [], [], [], []
            start = 0
            for j, h in enumerate(hs):
                layer = stacks[j].layers[li]
                x, g = layer.input_layernorm(h, adarms if j == 1 else None)
                n = h.shape[1]
                c, s_ = cos[:, :, start : start + n], sin[:, :, start : start + n]
                q, k, v = layer.self_attn.qkv(x, c, s_)
                qs.append(q)
                ks.append(k)
                vs.append(v)
                gates.append(g)
                start += n
            q, k, v = torch.cat(qs, 2), torch.cat(ks, 2), torch.cat(vs, 2)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=cfg.head_dim**-0.5, enable_gqa=True)
            out = out.transpose(1, 2).reshape(b, q.shape[2], -1)
            start, new = 0, []
            for j, h in enumerate(hs):
                layer = stacks[j].layers[li]
                n = h.shape[1]
                h = gated_residual(h, layer.self_attn.o_proj(out[:, start : start + n]), gates[j])
                x, g = layer.post_attention_layernorm(h, adarms if j == 1 else None)
                new.append(gated_residual(h, layer.mlp(x), g))
                start += n
            hs = new
        h, _ = self.expert.norm(hs[1], adarms)
        return self.action_out_proj(h[:, -cfg.chunk_size :])

    # ------------------------------------------------------------------ config / build
    def config_dict(self) -> dict:
        return {**super().config_dict(), "architecture": "pi05" if self.is_pi05 else "pi0"}

    @classmethod
    def from_config(cls, config: dict) -> Pi0Policy:
        if config.get("variant") == "pi05" and "state_prompt" not in config:
            # written before the choice was recorded: those pi0.5 policies were trained on padded prompts
            config = {**config, "state_prompt": "padded"}
        return cls(cls.config_from_dict(Pi0Config, config))

    @classmethod
    def from_preset(cls, name: str = "small", **overrides: Any) -> Pi0Policy:
        return cls(preset(name, cls._default_variant(), **overrides))

    @classmethod
    def from_lerobot(cls, path: Any, tokenizer: str | None = None, overrides: dict | None = None) -> Pi0Policy:
        """Load a lerobot pi0/pi0.5 policy folder or cached Hub id (see ``convert.from_lerobot``)."""
        from .convert import from_lerobot

        return from_lerobot(path, tokenizer, overrides)

    def to_lerobot(
        self,
        path: Any,
        fold_target_time: float | None = None,
        allow_padded_state_prompt: bool = False,
        rename_map: dict[str, str] | None = None,
    ) -> Any:
        """Write a lerobot policy folder that lerobot runs unchanged (see ``convert.to_lerobot``)."""
        from .convert import to_lerobot

        return to_lerobot(self, path, fold_target_time, allow_padded_state_prompt, rename_map)

    def shard_units(self) -> list[tuple[nn.Module, tuple[str, ...]]]:
        """FSDP units (see ``train/fsdp.py``): the call sites inside each decoder layer, every
        vision-tower layer, the projector and the token embedding."""
        units: list[tuple[nn.Module, tuple[str, ...]]] = [(layer, ()) for layer in self.vision.encoder.layers]
        units += [(self.projector, ()), (self.embed_tokens, ())]
        for stack in (self.vlm, self.expert):
            for layer in stack.layers:
                # pi0.5's adaRMS norms hold a dense modulation layer (3·width outputs): worth a unit
                units += [
                    (norm.dense, ())
                    for norm in (layer.input_layernorm, layer.post_attention_layernorm)
                    if norm.dense is not None
                ]
                # o_proj first (bottom-up): the self_attn unit then holds qkv_proj alone, which qkv() and
                # kv() read (kv() slices qkv_proj.weight directly, so it must run inside the unit's hooks)
                units += [(layer.self_attn.o_proj, ()), (layer.self_attn, ("qkv", "kv")), (layer.mlp, ())]
            if stack.norm.dense is not None:
                units.append((stack.norm.dense, ()))
        return units

    def _inference_functions(self) -> tuple[Any, Any, Any]:
        # class functions, not bound methods: a deep copy of the policy runs its own weights
        return type(self)._prefix, type(self)._flow, type(self)._chunk


class _EagerSteps:
    """The policy as the sampler sees it inside the compiled chunk: ``flow`` is the plain step."""

    def __init__(self, policy: Pi0Policy) -> None:
        self.policy = policy

    def flow(self, x_t: Tensor, t: Tensor, s: Tensor, ctx: PrefixCache) -> Tensor:
        return self.policy._flow(x_t, t, s, ctx)


class Pi05Policy(Pi0Policy):
    """pi0.5: adaRMS time conditioning in the expert, discretised state in the prompt."""

    architecture = "pi05"

    @classmethod
    def _default_variant(cls) -> str:
        return "pi05"
