"""Demonstrations → training batches for a flow policy, and the held-out checks that need no
simulator (offline action MSE and the chunk-distribution distance to the teacher)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..core.flowmap import FlowBatch
from ..core.metrics import sliced_wasserstein


@dataclass
class PolicyDataSource:
    """The training loop's DataSource: draws dataset windows for a step and lets the policy
    turn them into a FlowBatch (normalised, padded chunk + processed observation). The
    dataset must serve UNnormalised windows: the policy's own buffers normalise."""

    dataset: Any
    policy: Any

    def sample(self, batch_size: int, generator: torch.Generator) -> FlowBatch:
        # the data stream also draws each sample's RTC prefix length (training-time RTC)
        return self.policy.make_flow_batch(self.dataset.sample(batch_size, generator), generator=generator)


def held_out_windows(dataset: Any, n: int, seed: int = 0) -> dict[str, Any]:
    """A fixed set of ``n`` held-out windows (the same for every variant)."""
    gen = torch.Generator().manual_seed(seed)
    n = min(n, len(dataset))
    idx = torch.randperm(len(dataset), generator=gen)[:n]
    return dataset.batch(idx)


def _obs_only(windows: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in windows.items() if k not in ("action", "action_is_pad")}


@torch.no_grad()
def offline_action_mse(policy: Any, windows: dict[str, Any], nfe: int, mode: str, seed: int = 0) -> float:
    """Mean squared error (raw action units, padded steps ignored) between one sampled chunk and
    the demonstrated chunk. It rewards the MEAN of multimodal demonstrations, so report it but
    judge by the chunk distance and success."""
    gen = torch.Generator(device=policy.device).manual_seed(seed)
    pred = policy.sample_actions(_obs_only(windows), steps=nfe, mode=mode, generator=gen).float().cpu()
    target = torch.as_tensor(windows["action"]).float()[:, : pred.shape[1]]
    err = (pred - target).pow(2).mean(-1)
    if "action_is_pad" in windows:
        keep = ~torch.as_tensor(windows["action_is_pad"]).bool()[:, : pred.shape[1]]
        return float((err * keep).sum() / keep.sum().clamp_min(1))
    return float(err.mean())


@torch.no_grad()
def sample_chunks(policy: Any, windows: dict[str, Any], nfe: int, mode: str, samples: int, seed: int) -> torch.Tensor:
    """(n_obs, samples, chunk, action_dim) chunks: ``samples`` draws at each held-out observation."""
    obs = _obs_only(windows)
    cond = policy.process(obs)
    ctx = policy.encode(cond)
    b = cond["state"].shape[0]
    gen = torch.Generator(device=policy.device).manual_seed(seed)
    from ..core.sampler import sample_with_ctx

    out = []
    for _ in range(samples):
        noise = torch.randn((b, *policy.sample_shape()), generator=gen, device=policy.device, dtype=policy.dtype)
        x = sample_with_ctx(policy, noise, ctx, nfe, mode)
        out.append(policy.normalizer.unnormalize("action", x[..., : policy.config.action_dim].float()).cpu())
    return torch.stack(out, dim=1)


def chunk_distance(reference: torch.Tensor, candidate: torch.Tensor, seed: int = 0) -> float:
    """Mean over observations of the sliced Wasserstein-2 distance between the two sets of
    sampled chunks at that observation (each chunk flattened)."""
    gen = torch.Generator().manual_seed(seed)
    dists = [
        sliced_wasserstein(reference[i].flatten(1), candidate[i].flatten(1), generator=gen)
        for i in range(reference.shape[0])
    ]
    return float(sum(dists) / len(dists))
