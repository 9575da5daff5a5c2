"""SmolVLA's input processing where it differs from the shared FlowPolicy processing, as lerobot
0.4.4 does it:

* prompt: the task with a trailing newline (``smolvla_new_line_processor``);
* images: lerobot SmolVLA's ``resize_with_pad`` keeps the aspect ratio and pads with 0 on the LEFT and
  TOP (the shared rule centres the padding, as openpi does). Applied before the shared processing,
  whose own resize then has nothing to do;
* ``observation.images.<cam>_padding_mask``: a camera absent for some samples of a batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..base import IMAGE_PREFIX


def smolvla_prompts(tasks: list[str]) -> list[str]:
    return [t if t.endswith("\n") else f"{t}\n" for t in tasks]


def smolvla_resize_with_pad(img: Tensor, size: int) -> Tensor:
    """lerobot SmolVLA's resize_with_pad: keep the aspect ratio (bilinear), then pad with 0 on the
    LEFT and TOP only (→ −1 after scaling to [−1, 1]). Identity for a (size, size) image."""
    h, w = img.shape[-2:]
    if (h, w) == (size, size):
        return img
    ratio = max(w / size, h / size)
    nh, nw = int(h / ratio), int(w / ratio)
    out = F.interpolate(img, size=(nh, nw), mode="bilinear", align_corners=False)
    return F.pad(out, (max(0, size - nw), 0, max(0, size - nh), 0), value=0.0)


def _as_chw_float(img: Any, device: torch.device, channels_last: bool) -> Tensor:
    img = img if torch.is_tensor(img) else torch.as_tensor(np.asarray(img))
    img = img.to(device)
    img = img[None] if img.dim() == 3 else img
    img = img[:, -1] if img.dim() == 5 else img  # (B, T, ...) history: the current frame
    if channels_last or (img.shape[1] != 3 and img.shape[-1] == 3):
        img = img.permute(0, 3, 1, 2)
    return img.float() / 255.0 if img.dtype == torch.uint8 else img.float()


def resize_images(obs: Any, cameras: list[str], size: int, device: torch.device) -> Any:
    """Every camera image of an env ({"pixels": {cam: (B,H,W,3)}}) or lerobot
    ("observation.images.<cam>") observation → float (B, 3, size, size) in [0, 1] under the lerobot
    key, resized with SmolVLA's rule. Other entries and already processed batches pass through."""
    if not isinstance(obs, Mapping) or "images" in obs or "tokens" in obs:
        return obs
    out = dict(obs)
    pixels = dict(obs["pixels"]) if isinstance(obs.get("pixels"), Mapping) else {}
    for cam in cameras:
        key = IMAGE_PREFIX + cam
        if cam in pixels:
            img = _as_chw_float(pixels.pop(cam), device, channels_last=True)
        elif key in obs:
            img = _as_chw_float(obs[key], device, channels_last=False)
        else:
            continue
        out[key] = smolvla_resize_with_pad(img, size)
    if "pixels" in obs:
        out["pixels"] = pixels
    return out


def apply_padding_masks(canonical: dict[str, Any], obs: Any, cameras: list[str]) -> dict[str, Any]:
    """Honour lerobot's per-sample camera masks in a canonical observation."""
    if isinstance(obs, Mapping):
        for i, cam in enumerate(cameras):
            key = f"{IMAGE_PREFIX}{cam}_padding_mask"
            if key in obs:
                mask = canonical["image_masks"][i]
                canonical["image_masks"][i] = torch.as_tensor(obs[key], device=mask.device).bool().reshape(-1)
    return canonical
