"""Metrics for generated images and clips that need no download.

* Fidelity to the teacher from the same noise: MSE and PSNR against the teacher's many-step
  ODE output (how well a few-step student reproduces the map it was distilled from).
* Distribution distance to held-out real samples: the Fréchet distance in the features of a
  small CNN classifier trained here on the same data (an in-domain stand-in for the Inception
  network of FID, which would need a download), and the sliced Wasserstein distance in pixel
  space (``core.metrics.sliced_wasserstein``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.metrics import mean_squared_error, random_directions, sliced_wasserstein


def psnr(mse: float, peak_to_peak: float = 2.0) -> float:
    """PSNR in dB for data in a range of width ``peak_to_peak`` ([-1, 1] → 2)."""
    return float("inf") if mse <= 0 else 10.0 * math.log10(peak_to_peak**2 / mse)


class FeatureEncoder(nn.Module):
    """A small CNN classifier; its pooled penultimate activations are the features of the
    Fréchet distance. Clips (B, T, C, H, W) are read with the frames stacked as channels, so the
    features see motion as well as appearance."""

    def __init__(self, sample_shape: tuple[int, ...], num_classes: int, width: int = 32, feature_dim: int = 64) -> None:
        super().__init__()
        self.sample_shape = tuple(sample_shape)
        in_ch = int(np.prod(sample_shape[:-2]))
        self.net = nn.Sequential(
            nn.Conv2d(in_ch, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(2 * width, feature_dim, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(f"encoder expects samples of shape {self.sample_shape}, got {tuple(x.shape[1:])}")
        return self.net(x.reshape(x.shape[0], -1, *x.shape[-2:]))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@dataclass
class EncoderReport:
    train_accuracy: float
    heldout_accuracy: float
    steps: int


def train_encoder(
    x: Tensor,
    labels: Tensor,
    num_classes: int,
    steps: int = 400,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    heldout: tuple[Tensor, Tensor] | None = None,
) -> tuple[FeatureEncoder, EncoderReport]:
    """Train the feature encoder as a classifier of the condition (digit class / task id).
    Light pixel noise augmentation keeps its features meaningful on imperfect samples."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    enc = FeatureEncoder(tuple(x.shape[1:]), num_classes)
    opt = torch.optim.Adam(enc.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(len(x), (batch_size,), generator=g)
        xb = x[idx] + 0.05 * torch.randn(x[idx].shape, generator=g)
        loss = F.cross_entropy(enc(xb), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    enc.eval().requires_grad_(False)
    held_acc = accuracy(enc, *heldout) if heldout is not None else float("nan")
    return enc, EncoderReport(accuracy(enc, x, labels), held_acc, steps)


@torch.no_grad()
def accuracy(enc: FeatureEncoder, x: Tensor, labels: Tensor) -> float:
    pred = torch.cat([enc(x[i : i + 512]).argmax(1) for i in range(0, len(x), 512)])
    return float((pred == labels).float().mean())


@torch.no_grad()
def encode_features(enc: FeatureEncoder, x: Tensor) -> np.ndarray:
    return torch.cat([enc.features(x[i : i + 512]) for i in range(0, len(x), 512)]).double().numpy()


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½) between Gaussian fits of two feature sets."""
    from scipy import linalg

    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature sets differ in dimension: {f1.shape[1]} vs {f2.shape[1]}")
    if len(f1) < 2 or len(f2) < 2:
        raise ValueError("the Fréchet distance needs at least 2 samples per set")
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    with warnings.catch_warnings():  # singular products (e.g. collapsed samples) are handled below
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():  # near-singular product: regularise (as in pytorch-fid)
            eps = np.eye(len(s1)) * 1e-6
            covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@dataclass
class MediaScorer:
    """Scores sample sets against fixed references: the teacher's many-step output from the
    same noise, and held-out real samples (features and pixel projections fixed once)."""

    encoder: FeatureEncoder
    real: Tensor
    teacher_reference: Tensor | None = None
    n_projections: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        self.real_features = encode_features(self.encoder, self.real)
        dim = int(np.prod(self.real.shape[1:]))
        self.directions = random_directions(self.n_projections, dim, torch.Generator().manual_seed(self.seed))

    def score(self, samples: Tensor) -> dict[str, float]:
        samples = samples.clamp(-1, 1)
        out: dict[str, float] = {}
        if self.teacher_reference is not None:
            mse = mean_squared_error(samples, self.teacher_reference.clamp(-1, 1))
            out.update(mse_to_teacher=mse, psnr_to_teacher=psnr(mse))
        out["fd"] = frechet_distance(encode_features(self.encoder, samples), self.real_features)
        out["swd"] = sliced_wasserstein(samples, self.real, directions=self.directions)
        return out
