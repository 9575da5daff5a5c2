"""Small DiT flow maps for images and short clips (Peebles & Xie 2023, adaLN-zero blocks).

Both models implement the flow-map contract: ``encode(cond)`` once (label embedding; for
video also the tokens of the conditioning first frame), then ``flow(x_t, t, s, ctx)``.
The target time s enters through ``target_time`` (zero-initialised last layer) whose output
is added to the time embedding, so a freshly built student equals its teacher.

Attention is written out (softmax(QKᵀ)V) rather than calling a fused SDPA kernel: fused
kernels have no forward-mode AD, and the JVP methods (meanflow, lsd) differentiate the model
with ``torch.func.jvp``. At these token counts (≤ 200) the explicit form costs nothing extra.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.embedding import TargetTimeEmbedding, sinusoidal_embedding
from ..core.flowmap import FlowMapModel


# --------------------------------------------------------------------------- building blocks
class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, h: Tensor) -> Tensor:
        b, n, w = h.shape
        q, k, v = self.qkv(h).reshape(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(w // self.heads), dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, w))


class DiTBlock(nn.Module):
    """Pre-norm transformer block modulated by the (time + s + label) embedding, adaLN-zero:
    the modulation is zero-initialised so every block starts as the identity."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.ada = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(emb).unsqueeze(1).chunk(6, dim=-1)
        h = h + g1 * self.attn(self.norm1(h) * (1 + sc1) + sh1)
        return h + g2 * self.mlp(self.norm2(h) * (1 + sc2) + sh2)


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, out_dim)
        for layer in (self.ada, self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        shift, scale = self.ada(emb).unsqueeze(1).chunk(2, dim=-1)
        return self.out(self.norm(h) * (1 + scale) + shift)


class InputSkip(nn.Module):
    """out = W·patch ⊙ (1 + g(emb)): a full-rank, time-modulated path from each input patch to
    its output patch (U-Nets get this from their full-resolution skips). Zero-initialised, so a
    model starts exactly as without it."""

    def __init__(self, width: int, patch_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(patch_dim, patch_dim)
        self.gain = nn.Linear(width, patch_dim)
        for layer in (self.proj, self.gain):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, patches: Tensor, emb: Tensor) -> Tensor:
        return self.proj(patches) * (1 + self.gain(emb).unsqueeze(1))


def sincos_2d(grid: int, width: int) -> Tensor:
    """Fixed 2-D sin-cos position embedding, (grid², width)."""
    if width % 4:
        raise ValueError(f"width must be a multiple of 4 for 2-D position embeddings, got {width}")
    pos = torch.arange(grid, dtype=torch.float64)
    omega = 1.0 / 10000 ** (torch.arange(width // 4, dtype=torch.float64) / (width // 4))
    yy, xx = torch.meshgrid(pos, pos, indexing="ij")
    parts = []
    for coord in (yy.reshape(-1), xx.reshape(-1)):
        arg = coord[:, None] * omega[None]
        parts += [torch.sin(arg), torch.cos(arg)]
    return torch.cat(parts, dim=1).float()


def patchify(x: Tensor, p: int) -> Tensor:
    """(B, C, H, W) → (B, (H/p)·(W/p), C·p·p)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(tokens: Tensor, p: int, c: int, h: int, w: int) -> Tensor:
    b = tokens.shape[0]
    x = tokens.reshape(b, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


class _Trunk(nn.Module):
    """Time (t) + target-time (s) + label embedding and the stack of DiT blocks, shared by
    the image and the video model."""

    def __init__(self, width: int, depth: int, heads: int, time_dim: int, num_classes: int) -> None:
        super().__init__()
        self.time_dim = time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, width), nn.SiLU(), nn.Linear(width, width))
        # one extra row = "no label" (unconditional use and label dropout)
        self.label_emb = nn.Embedding(num_classes + 1, width) if num_classes > 0 else None
        self.blocks = nn.ModuleList(DiTBlock(width, heads) for _ in range(depth))

    def label(self, labels: Tensor | None, batch: int, like: Tensor) -> Tensor:
        if self.label_emb is None:
            return like.new_zeros(batch, like.shape[-1])
        if labels is None:
            raise ValueError("this model is class/task-conditioned: pass integer labels (B,) as the condition")
        labels = torch.as_tensor(labels, device=like.device).long().reshape(-1)
        if labels.min() < 0 or labels.max() >= self.label_emb.num_embeddings:
            raise ValueError(
                f"labels must lie in [0, {self.label_emb.num_embeddings - 1}], got "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
        return self.label_emb(labels)

    def embed(self, t: Tensor, s_emb: Tensor, label_emb: Tensor) -> Tensor:
        """time embedding + target-time embedding (added: docs/architecture.md) + label embedding."""
        temb = self.time_mlp(sinusoidal_embedding(t, self.time_dim).to(label_emb.dtype))
        return F.silu(temb + s_emb.to(label_emb.dtype) + label_emb)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        for block in self.blocks:
            h = block(h, emb)
        return h


def _from_config(cls: type, cfg_cls: type, config: dict) -> Any:
    # config.json also carries "architecture" and the checkpoint's "policydistill" extras
    import dataclasses

    names = {f.name for f in dataclasses.fields(cfg_cls)}
    return cls(cfg_cls(**{k: v for k, v in config.items() if k in names}))


# --------------------------------------------------------------------------- image model
class _PatchDiT(FlowMapModel):
    """What the image and video DiTs share: the square frame cut into patches, and the trunk."""

    trunk: _Trunk

    def _patches(self, cfg: Any) -> int:
        """Check the patch size, keep the config, build ``patch_in``; returns the patch's length."""
        if cfg.image_size % cfg.patch:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch {cfg.patch}")
        self.config = cfg
        self.time_sampler = cfg.time_sampler
        self.grid = cfg.image_size // cfg.patch
        patch_dim = cfg.channels * cfg.patch**2
        self.patch_in = nn.Linear(patch_dim, cfg.width)
        return patch_dim

    def shard_units(self) -> list[tuple[nn.Module, tuple[str, ...]]]:
        return [(block, ()) for block in self.trunk.blocks]  # FSDP: one unit per DiT block

    def _check_sample(self, x_t: Tensor, what: str) -> None:
        if tuple(x_t.shape[1:]) != self.sample_shape():
            raise ValueError(
                f"expected {what} of shape (B, {', '.join(map(str, self.sample_shape()))}), got {tuple(x_t.shape)}"
            )


@dataclass
class ImageDiTConfig:
    image_size: int = 16
    channels: int = 1
    patch: int = 2
    width: int = 96
    depth: int = 4
    heads: int = 4
    num_classes: int = 10  # 0 = unconditional
    time_dim: int = 64
    time_sampler: str = "logit_normal"


IMAGE_PRESETS: dict[str, ImageDiTConfig] = {
    "tiny": ImageDiTConfig(width=32, depth=1, heads=2, time_dim=16),
    "digits": ImageDiTConfig(image_size=16, channels=1, patch=2, width=96, depth=4, heads=4, num_classes=10),
    "metaworld": ImageDiTConfig(image_size=32, channels=3, patch=4, width=96, depth=4, heads=4, num_classes=4),
}


class ImageDiT(_PatchDiT):
    """Class- or task-conditioned image flow map; x is (B, C, H, W) in [-1, 1], cond is an
    integer label tensor (B,)."""

    architecture = "image-dit"

    def __init__(self, config: ImageDiTConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        cfg = config or ImageDiTConfig(**kwargs)
        patch_dim = self._patches(cfg)
        self.register_buffer("pos", sincos_2d(self.grid, cfg.width), persistent=False)
        self.trunk = _Trunk(cfg.width, cfg.depth, cfg.heads, cfg.time_dim, cfg.num_classes)
        self.target_time = TargetTimeEmbedding(cfg.width, embed_dim=cfg.time_dim)
        self.final = FinalLayer(cfg.width, patch_dim)

    def encode(self, cond: Any) -> Tensor:
        like = self.patch_in.weight
        batch = 0 if cond is None else len(cond)
        return self.trunk.label(cond, batch, like)

    def flow(self, x_t: Tensor, t: Tensor, s: Tensor, ctx: Any) -> Tensor:
        cfg = self.config
        b = x_t.shape[0]
        self._check_sample(x_t, "images")
        label = ctx if ctx is not None and ctx.shape[0] == b else self.trunk.label(None, b, self.patch_in.weight)
        h = self.patch_in(patchify(x_t, cfg.patch)) + self.pos.to(x_t.dtype)
        emb = self.trunk.embed(t, self.target_time(s), label.to(x_t.dtype))
        h = self.trunk(h, emb)
        return unpatchify(self.final(h, emb), cfg.patch, cfg.channels, cfg.image_size, cfg.image_size)

    def sample_shape(self) -> tuple[int, ...]:
        c = self.config
        return (c.channels, c.image_size, c.image_size)

    def config_dict(self) -> dict:
        return {"architecture": self.architecture, **asdict(self.config)}

    @classmethod
    def from_config(cls, config: dict) -> ImageDiT:
        return _from_config(cls, ImageDiTConfig, config)


# --------------------------------------------------------------------------- video model
@dataclass
class VideoDiTConfig:
    frames: int = 8  # generated frames (the conditioning frame comes before them)
    image_size: int = 32
    channels: int = 3
    patch: int = 8
    width: int = 96
    depth: int = 4
    heads: int = 4
    num_classes: int = 4  # task / instruction ids
    time_dim: int = 64
    time_sampler: str = "logit_normal"
    #: time-modulated linear path from each input patch to the same output patch. A patch of
    #: C·p² values (192 for RGB 8×8) through a narrower token (width) cannot carry the noise
    #: ε that the velocity ε − a contains: without this path a teacher with width < C·p²
    #: leaves residual noise in its samples at any NFE (measured: FD 238 at 32 NFE, visibly noisy).
    input_skip: bool = True


VIDEO_PRESETS: dict[str, VideoDiTConfig] = {
    "tiny": VideoDiTConfig(frames=2, image_size=8, patch=4, width=32, depth=1, heads=2, time_dim=16),
    "metaworld": VideoDiTConfig(),
}


class VideoDiT(_PatchDiT):
    """Clip flow map: x is (B, T, C, H, W) in [-1, 1]; cond is {"first_frame": (B, C, H, W),
    "label": (B,)}. The conditioning frame is patchified once in ``encode`` and its tokens join
    every frame's tokens in one joint space-time attention (the world-model half of a
    world-action model: "given this frame and this instruction, what happens next")."""

    architecture = "video-dit"

    def __init__(self, config: VideoDiTConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        cfg = config or VideoDiTConfig(**kwargs)
        patch_dim = self._patches(cfg)
        self.cond_in = nn.Linear(patch_dim, cfg.width)
        self.register_buffer("pos", sincos_2d(self.grid, cfg.width), persistent=False)
        # learned frame-index embedding; index 0 = the conditioning frame
        self.frame_emb = nn.Parameter(torch.zeros(cfg.frames + 1, cfg.width))
        nn.init.normal_(self.frame_emb, std=0.02)
        self.trunk = _Trunk(cfg.width, cfg.depth, cfg.heads, cfg.time_dim, cfg.num_classes)
        self.target_time = TargetTimeEmbedding(cfg.width, embed_dim=cfg.time_dim)
        self.final = FinalLayer(cfg.width, patch_dim)
        self.skip = InputSkip(cfg.width, patch_dim) if cfg.input_skip else None

    def encode(self, cond: Any) -> dict[str, Tensor]:
        if not isinstance(cond, dict) or "first_frame" not in cond:
            raise ValueError("video-dit needs cond = {'first_frame': (B, C, H, W) tensor, 'label': (B,) ints}")
        cfg = self.config
        frame = cond["first_frame"].to(self.patch_in.weight.dtype)
        if tuple(frame.shape[1:]) != (cfg.channels, cfg.image_size, cfg.image_size):
            raise ValueError(
                f"first_frame must be (B, {cfg.channels}, {cfg.image_size}, {cfg.image_size}), got {tuple(frame.shape)}"
            )
        tokens = self.cond_in(patchify(frame, cfg.patch)) + self.pos + self.frame_emb[0]
        label = self.trunk.label(cond.get("label"), frame.shape[0], self.patch_in.weight)
        return {"frame_tokens": tokens, "label": label}

    def flow(self, x_t: Tensor, t: Tensor, s: Tensor, ctx: Any) -> Tensor:
        cfg = self.config
        b = x_t.shape[0]
        self._check_sample(x_t, "clips")
        if not isinstance(ctx, dict):
            raise ValueError("video-dit flow() needs the context returned by encode(cond)")
        n = self.grid**2
        frames = patchify(x_t.reshape(b * cfg.frames, cfg.channels, cfg.image_size, cfg.image_size), cfg.patch)
        h = self.patch_in(frames).reshape(b, cfg.frames, n, cfg.width)
        frames = frames.reshape(b, cfg.frames * n, -1)
        h = h + self.pos.to(x_t.dtype) + self.frame_emb[1:, None, :].to(x_t.dtype)
        h = torch.cat([ctx["frame_tokens"].to(x_t.dtype), h.reshape(b, cfg.frames * n, cfg.width)], dim=1)
        emb = self.trunk.embed(t, self.target_time(s), ctx["label"].to(x_t.dtype))
        h = self.trunk(h, emb)[:, n:]
        out = self.final(h, emb)
        if self.skip is not None:
            out = out + self.skip(frames, emb)
        out = out.reshape(b * cfg.frames, n, -1)
        out = unpatchify(out, cfg.patch, cfg.channels, cfg.image_size, cfg.image_size)
        return out.reshape(x_t.shape)

    def sample_shape(self) -> tuple[int, ...]:
        c = self.config
        return (c.frames, c.channels, c.image_size, c.image_size)

    def config_dict(self) -> dict:
        return {"architecture": self.architecture, **asdict(self.config)}

    @classmethod
    def from_config(cls, config: dict) -> VideoDiT:
        return _from_config(cls, VideoDiTConfig, config)
