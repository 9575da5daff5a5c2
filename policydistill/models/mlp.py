"""A small residual MLP flow map: the action head used by tests, the exact-mixture benchmark
and as a light policy head. x is flattened; optional vector conditioning is concatenated."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..core.embedding import TargetTimeEmbedding, sinusoidal_embedding
from ..core.flowmap import FlowMapModel


@dataclass
class MLPFlowMapConfig:
    sample_shape: tuple[int, ...] = (2,)
    cond_dim: int = 0  # 0 = unconditional; otherwise cond is a (B, cond_dim) tensor
    width: int = 256
    depth: int = 4
    time_dim: int = 64
    time_sampler: str = "uniform"


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)
        self.film = nn.Linear(width, 2 * width)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        scale, shift = self.film(emb).chunk(2, dim=-1)
        z = self.norm(h) * (1 + scale) + shift
        return h + self.fc2(torch.nn.functional.silu(self.fc1(z)))


class MLPFlowMap(FlowMapModel):
    architecture = "mlp"

    def __init__(self, config: MLPFlowMapConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        cfg = config or MLPFlowMapConfig(**kwargs)
        cfg.sample_shape = tuple(cfg.sample_shape)
        self.config = cfg
        self.time_sampler = cfg.time_sampler
        dim = math.prod(cfg.sample_shape)
        self.inp = nn.Linear(dim + cfg.cond_dim, cfg.width)
        self.time_mlp = nn.Sequential(nn.Linear(cfg.time_dim, cfg.width), nn.SiLU(), nn.Linear(cfg.width, cfg.width))
        self.target_time = TargetTimeEmbedding(cfg.width, embed_dim=cfg.time_dim)
        self.blocks = nn.ModuleList(_Block(cfg.width) for _ in range(cfg.depth))
        self.out_norm = nn.LayerNorm(cfg.width)
        self.out = nn.Linear(cfg.width, dim)

    def flow(self, x_t: Tensor, t: Tensor, s: Tensor, ctx: Any) -> Tensor:
        b = x_t.shape[0]
        h = x_t.reshape(b, -1)
        if self.config.cond_dim:
            if ctx is None:
                raise ValueError(f"this model needs a (B, {self.config.cond_dim}) conditioning tensor")
            h = torch.cat([h, ctx.reshape(b, -1).to(h.dtype)], dim=-1)
        h = self.inp(h)
        emb = self.time_mlp(sinusoidal_embedding(t, self.config.time_dim).to(h.dtype)) + self.target_time(s)
        emb = torch.nn.functional.silu(emb)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(self.out_norm(h)).reshape(x_t.shape)

    def shard_units(self) -> list[tuple[nn.Module, tuple[str, ...]]]:
        return [(block, ()) for block in self.blocks]  # FSDP: one unit per residual block

    def sample_shape(self) -> tuple[int, ...]:
        return self.config.sample_shape

    def config_dict(self) -> dict:
        d = asdict(self.config)
        d["sample_shape"] = list(d["sample_shape"])
        return {"architecture": self.architecture, **d}

    @classmethod
    def from_config(cls, config: dict) -> MLPFlowMap:
        # config.json may carry provenance (the "policydistill" block) next to the fields
        fields = MLPFlowMapConfig.__dataclass_fields__
        cfg = {k: v for k, v in config.items() if k in fields}
        cfg["sample_shape"] = tuple(cfg["sample_shape"])
        return cls(MLPFlowMapConfig(**cfg))
