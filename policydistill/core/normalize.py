"""Affine normalisation of named vectors (state, action), the one implementation used by the
policies (stats stored inside their safetensors) and by the training windows.

Every lerobot mode is affine, y = (x − shift) / scale:

* MEAN_STD: shift = mean, scale = std + eps (lerobot's formula, eps inside the division);
* QUANTILES: [q01, q99] → [−1, 1], shift = (q01 + q99) / 2, scale = (q99 − q01) / 2;
* QUANTILE10: the same with [q10, q90]; MIN_MAX: the same with [min, max];
* IDENTITY: shift 0, scale 1.

A dimension whose two bounds are equal (a constant joint) is mapped as lerobot maps it: lerobot
divides by eps instead of 0, so y = 2(x − lo)/eps − 1 (−1 at x = lo). That is stored as
shift = lo, scale = eps/2, and a scale of exactly eps/2 means "subtract 1 after dividing" (no real
range is eps/2 wide); checkpoints written before this rule kept scale = eps and map that dimension
to 0, which they still do.

Storing shift/scale as buffers keeps one code path for every mode and lets the statistics travel
with a model's weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

NORM_MODES = ("MEAN_STD", "QUANTILES", "QUANTILE10", "MIN_MAX", "IDENTITY")
#: the two statistics each range mode maps to [−1, 1]
BOUNDS = {"QUANTILES": ("q01", "q99"), "QUANTILE10": ("q10", "q90"), "MIN_MAX": ("min", "max")}


def affine_from_stats(stats: Mapping[str, Any], mode: str, eps: float) -> tuple[Tensor, Tensor] | None:
    """(shift, scale) for ``mode`` from lerobot-style ``stats`` ({"mean", "std", "q01", ...}),
    or None for IDENTITY. Equal bounds give scale = eps/2 (see the module docstring)."""

    def get(key: str) -> Tensor:
        if key not in stats:
            raise KeyError(f"normalisation mode {mode} needs stat {key!r}; have {sorted(stats)}")
        return torch.as_tensor(np.asarray(stats[key], dtype=np.float32)).reshape(-1)

    if mode == "MEAN_STD":
        return get("mean"), get("std") + eps
    if mode in BOUNDS:
        lo, hi = (get(k) for k in BOUNDS[mode])
        same = hi == lo
        half = torch.where(same, torch.full_like(lo, eps / 2), (hi - lo) / 2)
        return torch.where(same, lo, (hi + lo) / 2), half
    if mode == "IDENTITY":
        return None
    raise ValueError(f"unknown normalisation mode {mode!r}; valid: {', '.join(NORM_MODES)}")


class Normalizer(nn.Module):
    """Per-name affine normalisation with the statistics as buffers ``<name>_shift`` / ``<name>_scale``
    (dots in a name become underscores: "observation.state" → ``observation_state_shift``).

    ``dims`` maps each name to its width; every name starts as the identity. A name that was never
    declared passes through unchanged (a dataset without statistics for a key). ``eps`` is the
    one used by :meth:`set` by default and to recognise equal-bounds dimensions."""

    def __init__(self, dims: Mapping[str, int], eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = float(eps)
        for name, width in dims.items():
            self.register_buffer(f"{self._attr(name)}_shift", torch.zeros(width))
            self.register_buffer(f"{self._attr(name)}_scale", torch.ones(width))

    @staticmethod
    def _attr(name: str) -> str:
        return name.replace(".", "_")

    def _buffers_of(self, name: str) -> tuple[Tensor, Tensor] | None:
        attr = self._attr(name)
        if f"{attr}_shift" not in self._buffers:
            return None
        return self._buffers[f"{attr}_shift"], self._buffers[f"{attr}_scale"]

    def set(self, name: str, stats: Mapping[str, Any], mode: str, eps: float | None = None) -> None:
        """Load ``stats`` for ``name`` in ``mode``; the width must match the declared one."""
        bufs = self._buffers_of(name)
        if bufs is None:
            raise KeyError(f"normaliser has no entry {name!r}; it has {sorted(self._names())}")
        if eps is not None:
            self.eps = float(eps)
        shift_buf, scale_buf = bufs
        affine = affine_from_stats(stats, mode, self.eps)
        if affine is None:
            shift_buf.zero_()
            scale_buf.fill_(1.0)
            return
        shift, scale = affine
        if shift.numel() != shift_buf.numel():
            raise ValueError(
                f"{name} stats have {shift.numel()} dims but the policy's {name}_dim is "
                f"{shift_buf.numel()}; build the policy with the dataset's dimensions"
            )
        shift_buf.copy_(shift)
        scale_buf.copy_(scale)

    def _apply(self, fn: Any, recurse: bool = True) -> Normalizer:
        """Device moves apply; dtype casts do not: the statistics stay float32 in a bfloat16 or
        float16 policy. Rounded to bfloat16 (8 significant bits) a state mean of 100.3 becomes
        100.5, which with a std of 0.05 shifts that normalised input by 4 — in a model that
        would otherwise see bfloat16 rounding only. The inputs are normalised in float32 and
        cast afterwards; the actions are unnormalised in float32."""
        before = dict(self._buffers)
        super()._apply(fn, recurse)
        for key, buf in self._buffers.items():
            if buf is not None and buf.is_floating_point() and buf.dtype != torch.float32:
                self._buffers[key] = before[key].to(device=buf.device, dtype=torch.float32)  # the unrounded values
        return self

    def _names(self) -> list[str]:
        return [k[: -len("_shift")] for k in self._buffers if k.endswith("_shift")]

    def _degenerate(self, scale: Tensor) -> Tensor:
        return scale == torch.tensor(self.eps / 2, dtype=scale.dtype, device=scale.device)

    def normalize(self, name: str, x: Tensor) -> Tensor:
        bufs = self._buffers_of(name)
        if bufs is None:
            return x
        shift, scale = bufs
        y = (x - shift) / scale
        return torch.where(self._degenerate(scale), y - 1, y)

    def unnormalize(self, name: str, x: Tensor) -> Tensor:
        bufs = self._buffers_of(name)
        if bufs is None:
            return x
        shift, scale = bufs
        return torch.where(self._degenerate(scale), x + 1, x) * scale + shift

    def stats(self, name: str, mode: str) -> dict[str, Tensor]:
        """lerobot statistics that give back this affine map (what an exported folder stores)."""
        bufs = self._buffers_of(name)
        if bufs is None:
            return {}
        shift, scale = (b.detach().float() for b in bufs)
        if mode == "MEAN_STD":
            return {"mean": shift.clone(), "std": scale - self.eps}
        if mode in BOUNDS:
            same = self._degenerate(scale)
            lo, hi = torch.where(same, shift, shift - scale), torch.where(same, shift, shift + scale)
            return dict(zip(BOUNDS[mode], (lo, hi)))
        return {}
