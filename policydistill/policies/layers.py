"""Transformer blocks shared by the pi0 family and SmolVLA, written for a cached, suffix-only
denoising loop: Gemma's RMSNorm (with the (1 + w) scale and adaRMS), rotary embeddings,
grouped-query attention WITHOUT copying key/value heads, the gated MLP, and a SigLIP encoder.

Numerics follow openpi's patched HF Gemma/SigLIP (the lerobot 0.4.4 fixtures): RMSNorm
variance in float32; RoPE tables in float32; softmax in float32 (SDPA does this).

Every projection is a ``Linear`` (an ``nn.Linear`` with the same parameters and state-dict keys)
whose float32 CPU inference runs through oneDNN: see ``linear``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: products (rows·in·out) from which oneDNN beats the BLAS (MKL) on a CPU; below it the call
#: overhead of oneDNN (~10 µs) outweighs its faster kernel. Measured on this project's 2-core
#: CPU, fp32: 50×128×320 (2.0 M) about even, 50×128×1024 1.6× faster, 144×256×2048 2.1×.
ONEDNN_MIN_MACS = 2_000_000
_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear``, except float32 CPU inference of a large enough product, which runs through
    oneDNN (``mkldnn._linear_pointwise``, the kernel inductor uses for packed linears).

    Why: torch's float32 CPU matmul goes to MKL, whose AVX-512 kernels are reserved for Intel
    CPUs: on AMD (Zen 4/5) it runs its AVX2 path at about half of what oneDNN's AVX-512 JIT
    reaches on the same cores (fp32 GEMM, 2 threads here: ~200 vs ~450 GFLOP/s). On an Intel
    CPU both are fast. The result is the same product in float32 with another summation order
    (differences at float32 rounding level). With autograd recording (training) it is
    ``F.linear``: the oneDNN op has no backward.

    Only when input, weight and bias are all float32: bfloat16/float16 inference is ``F.linear``,
    which on a CPU with AVX512-BF16 already runs oneDNN's bfloat16 kernel (float32 accumulation),
    and a mixed pair (a float32 input against bfloat16 weights, say) gets ``F.linear``'s error
    naming both dtypes instead of oneDNN's "could not create a primitive descriptor".

    In a compiled graph (``compile_for_inference``, inductor freezing) one pattern must be
    avoided: the output of a bias-free ``linear`` as the LEFT operand of ``+``. Inductor's
    freezing pass takes ``op(x, w) + b`` for a bias to fold and assumes a weight that it packed
    itself (an assertion fails otherwise); ``b + op(x, w)`` is left alone. The compiled-vs-eager
    test runs with every projection through oneDNN to catch such a sum."""
    if (
        _ONEDNN
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and (bias is None or bias.dtype == torch.float32)
        and x.device.type == "cpu"
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and x.numel() * weight.shape[0] >= ONEDNN_MIN_MACS
        # inside a torch.compile graph inductor lowers this op only for a constant weight,
        # i.e. under its freezing (what compile_for_inference turns on); else the BLAS
        and (not torch.compiler.is_compiling() or torch._inductor.config.freezing)
    ):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state-dict keys) computed by ``linear``."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


class RMSNorm(nn.Module):
    """Gemma RMSNorm: x·rsqrt(mean(x²) + eps)·(1 + w), computed in float32. With ``cond_dim``
    it is openpi's adaRMS: dense(cond) → (scale, shift, gate); y = norm(x)·(1 + scale) + shift,
    and the caller uses ``gate`` on the residual branch (x + out·gate)."""

    def __init__(self, dim: int, eps: float = 1e-6, cond_dim: int | None = None) -> None:
        super().__init__()
        self.eps = eps
        if cond_dim is None:
            self.weight = nn.Parameter(torch.zeros(dim))
            self.dense = None
        else:
            self.dense = Linear(cond_dim, 3 * dim)
            # Zero-initialised modulation: a fresh adaRMS block starts as a plain RMSNorm with gate 0.
            nn.init.zeros_(self.dense.weight)
            nn.init.zeros_(self.dense.bias)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        d = (x.shape[-1],)
        if x.dtype == torch.float32:
            # The common inference case, without the dtype round trips below: even as no-ops
            # they are dispatcher calls, and a denoising step runs nine of these norms.
            if self.dense is None:
                return F.rms_norm(x, d, 1.0 + self.weight, self.eps), None
            if cond is None:
                raise ValueError("this adaRMS norm needs a conditioning vector")
            scale, shift, gate = self.modulation(cond)
            return torch.addcmul(shift, F.rms_norm(x, d, None, self.eps), 1.0 + scale), gate
        xf = x.float()  # bf16/fp16 activations are normalised in float32, as openpi
        if self.dense is None:
            # one fused kernel: x·rsqrt(mean(x²) + eps)·(1 + w)
            return F.rms_norm(xf, d, 1.0 + self.weight.float(), self.eps).to(x.dtype), None
        if cond is None:
            raise ValueError("this adaRMS norm needs a conditioning vector")
        scale, shift, gate = self.modulation(cond)
        normed = F.rms_norm(xf, d, None, self.eps)
        return torch.addcmul(shift.float(), normed, 1.0 + scale.float()).to(x.dtype), gate.to(x.dtype)

    def modulation(self, cond: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(scale, shift, gate), each (B, 1, dim) for a per-sample ``cond`` (B, cond_dim), computed once
        per denoising step, or (B, T, dim) for a per-token one (B, T, cond_dim: training-time RTC)."""
        assert self.dense is not None
        out = self.dense(cond)
        return (out[:, None, :] if out.dim() == 2 else out).chunk(3, dim=-1)


_GELU_C = 2.0 * math.sqrt(2.0 / math.pi)  # gelu_tanh(x) = x·sigmoid(C·(x + 0.044715·x³))


def gelu_tanh(x: Tensor, up: Tensor | None = None) -> Tensor:
    """gelu with the tanh approximation (Gemma, SigLIP), times ``up`` when given.

    In float32 it is computed as x·sigmoid(2·√(2/π)·(x + 0.044715·x³)) — the same function,
    since (1 + tanh z)/2 = sigmoid(2z) — in six vectorised passes: on the CPU this is about
    twice as fast as ``F.gelu(approximate="tanh")``, whose tanh dominates the elementwise
    time of the prefix. Results agree to about one float32 ulp. Other dtypes use ``F.gelu``
    (one kernel computing in float32 internally; the passes here would round in between)."""
    if x.dtype != torch.float32:
        g = F.gelu(x, approximate="tanh")
        return g if up is None else g * up
    # in place only where autograd keeps no operand: training runs through here too
    out = torch.addcmul(x, x * x, x, value=0.044715).mul_(_GELU_C).sigmoid_() * x
    return out if up is None else out.mul_(up)


def gated_residual(x: Tensor, y: Tensor, gate: Tensor | None) -> Tensor:
    return x + y if gate is None else x + y * gate


def rope_cos_sin(
    positions: Tensor, head_dim: int, theta: float = 10000.0, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """HF Gemma rotary tables for integer positions (B, L) → (cos, signed sin), each
    (B, 1, L, head_dim). The sin table carries rotate_half's sign (first half negated), so that
    applying RoPE is x·cos + roll(x, hd/2)·sin± (three kernels, see ``apply_rope``)."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim)
    )
    freqs = positions.float()[..., None] * inv_freq  # (B, L, hd/2)
    cos, sin = freqs.cos(), freqs.sin()
    return torch.cat([cos, cos], -1).to(dtype)[:, None], torch.cat([-sin, sin], -1).to(dtype)[:, None]


def apply_rope(x: Tensor, cos: Tensor, sin_signed: Tensor) -> Tensor:
    """x (B, H, L, hd) rotated with HF's rotate_half convention:
    x·cos + rotate_half(x)·sin = x·cos + roll(x, hd/2)·[−sin | sin].

    The one RoPE of every policy (pi0/Gemma and SmolVLA rotate the same pairs, i and i + hd/2, at
    the same frequencies). It computes in the tables' dtype and returns x's: float32 tables give
    lerobot SmolVLA's float32 rotation for a bfloat16 model, tables in x's dtype pi0's."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin_signed).to(x.dtype)


def grouped_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None, scale: float) -> Tensor:
    """Grouped-query attention without repeating key/value heads.

    q (B, H, Lq, hd); k, v (B, KVH, Lk, hd); key_mask additive (B, 1, 1, Lk) or None.
    The H/KVH query heads that share one key/value head are folded into the query length
    — (B, KVH, G·Lq, hd) — which is exact because the mask depends only on the key, and on
    a CPU it turns many small matmuls into one bigger one. Returns (B, Lq, H·hd).
    """
    b, h, lq, hd = q.shape
    kvh = k.shape[1]
    if kvh == 1:
        # pi0/Gemma: one key/value head. Fold as (L, H) rows: the projections leave q in
        # (B, L, H, hd) memory, so both reshapes are free views (no transpose copies).
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2).reshape(b, 1, lq * h, hd), k, v, attn_mask=key_mask, scale=scale
        )
        return out.reshape(b, lq, h * hd)
    g = h // kvh
    qg = q.reshape(b, kvh, g * lq, hd)
    out = F.scaled_dot_product_attention(qg, k, v, attn_mask=key_mask, scale=scale)
    return out.reshape(b, h, lq, hd).transpose(1, 2).reshape(b, lq, h * hd)


def key_padding_mask(valid: Tensor, dtype: torch.dtype) -> Tensor:
    """bool (B, Lk) → additive (B, 1, 1, Lk): 0 where a key may be attended, a large negative
    number where not (finite, so a row can never turn into NaN). Built once per chunk; callers
    pass no mask at all when every key is valid (the usual batch-1 case)."""
    return torch.where(valid, 0.0, torch.finfo(dtype).min).to(dtype)[:, None, None, :]


class GemmaAttention(nn.Module):
    """Projections only; the attention itself is done by the caller (joint prefix/suffix).

    q, k and v are ONE fused projection ``qkv_proj`` (rows: q | k | v): one matmul per layer
    instead of three, which matters for the small suffix matmuls of every denoising step.
    (lerobot's separate q/k/v tensors are concatenated on load and split on save.)"""

    def __init__(self, width: int, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scaling = head_dim**-0.5
        self.q_rows, self.kv_rows = num_heads * head_dim, num_kv_heads * head_dim
        self.qkv_proj = Linear(width, self.q_rows + 2 * self.kv_rows, bias=False)
        self.o_proj = Linear(num_heads * head_dim, width, bias=False)

    def split(self, x: Tensor, n: int) -> Tensor:
        b, length, _ = x.shape
        return x.reshape(b, length, n, self.head_dim).transpose(1, 2)

    def qkv(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Rotated q (B, H, L, hd), rotated k and v (B, KVH, L, hd)."""
        q, k, v = self.qkv_proj(x).split([self.q_rows, self.kv_rows, self.kv_rows], dim=-1)
        return (
            apply_rope(self.split(q, self.num_heads), cos, sin),
            apply_rope(self.split(k, self.num_kv_heads), cos, sin),
            self.split(v, self.num_kv_heads),
        )

    def kv(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values only (the last prefix layer: nobody reads its queries)."""
        k, v = linear(x, self.qkv_proj.weight[self.q_rows :]).split(self.kv_rows, dim=-1)
        return apply_rope(self.split(k, self.num_kv_heads), cos, sin), self.split(v, self.num_kv_heads)


class GatedMLP(nn.Module):
    """Gemma MLP: down(gelu_tanh(gate(x)) · up(x)), gate and up fused into one ``gate_up_proj``."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.gate_up_proj = Linear(width, 2 * hidden, bias=False)
        self.down_proj = Linear(hidden, width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(gelu_tanh(gate, up))


class GemmaLayer(nn.Module):
    """One Gemma decoder layer (parameters); ``cond_dim`` switches its norms to adaRMS."""

    def __init__(
        self,
        width: int,
        mlp_dim: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        eps: float = 1e-6,
        cond_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(width, eps, cond_dim)
        self.self_attn = GemmaAttention(width, num_heads, num_kv_heads, head_dim)
        self.post_attention_layernorm = RMSNorm(width, eps, cond_dim)
        self.mlp = GatedMLP(width, mlp_dim)


class GemmaStack(nn.Module):
    """Layers + final norm (no token embedding: the VLM's lives on the policy, the expert has none)."""

    def __init__(
        self,
        width: int,
        depth: int,
        mlp_dim: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        eps: float = 1e-6,
        cond_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            GemmaLayer(width, mlp_dim, num_heads, num_kv_heads, head_dim, eps, cond_dim) for _ in range(depth)
        )
        self.norm = RMSNorm(width, eps, cond_dim)


# ---------------------------------------------------------------------------- SigLIP
class SiglipAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.q_proj = Linear(width, width)
        self.k_proj = Linear(width, width)
        self.v_proj = Linear(width, width)
        self.out_proj = Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, length, w = x.shape

        def split(t: Tensor) -> Tensor:
            return t.view(b, length, self.heads, self.head_dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)), scale=self.head_dim**-0.5
        )
        return self.out_proj(out.transpose(1, 2).reshape(b, length, w))


class SiglipMLP(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = Linear(width, hidden)
        self.fc2 = Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(gelu_tanh(self.fc1(x)))


class SiglipLayer(nn.Module):
    def __init__(self, width: int, heads: int, mlp_dim: int, eps: float) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(width, eps=eps)
        self.self_attn = SiglipAttention(width, heads)
        self.layer_norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = SiglipMLP(width, mlp_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipEmbeddings(nn.Module):
    def __init__(self, width: int, patch: int, image_size: int) -> None:
        super().__init__()
        self.patch_embedding = nn.Conv2d(3, width, kernel_size=patch, stride=patch)
        self.num_patches = (image_size // patch) ** 2
        self.position_embedding = nn.Embedding(self.num_patches, width)

    def forward(self, pixels: Tensor) -> Tensor:
        x = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        return x + self.position_embedding.weight[None]


class SiglipEncoder(nn.Module):
    """SigLIP vision tower (no pooling head), HF parameter names: embeddings, encoder.layers.N,
    post_layernorm. Input (N, 3, H, W) in [−1, 1]; output (N, patches, width)."""

    def __init__(
        self, width: int, depth: int, heads: int, mlp_dim: int, patch: int, image_size: int, eps: float = 1e-6
    ) -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image_size {image_size} is not a multiple of the patch size {patch}")
        self.embeddings = SiglipEmbeddings(width, patch, image_size)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(SiglipLayer(width, heads, mlp_dim, eps) for _ in range(depth))
        self.post_layernorm = nn.LayerNorm(width, eps=eps)

    def forward(self, pixels: Tensor) -> Tensor:
        x = self.embeddings(pixels)
        for layer in self.encoder.layers:
            x = layer(x)
        return self.post_layernorm(x)


def scaled_embedding(embed: nn.Embedding, tokens: Tensor) -> Tensor:
    """Gemma token embedding × sqrt(width) (done by pi0's embed_prefix, not inside the LM)."""
    e = embed(tokens)
    return e * math.sqrt(e.shape[-1])
