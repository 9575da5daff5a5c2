"""Latency histograms for people: end-to-end and denoising time distributions per variant."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def latency_histogram(results: list[Any], path: str | Path) -> Path:
    from ..plotting import pyplot, save_figure

    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key, title, ax in (("e2e_samples_ms", "end to end", axes[0]), ("denoise_samples_ms", "denoising", axes[1])):
        all_vals = np.concatenate([np.asarray(getattr(r, key)) for r in results])
        bins = np.logspace(np.log10(max(all_vals.min() * 0.9, 1e-3)), np.log10(all_vals.max() * 1.1), 40)
        for r in results:
            vals = np.asarray(getattr(r, key))
            ax.hist(
                vals,
                bins=bins,
                alpha=0.6,
                label=f"{r.name} (p50 {np.median(vals):.1f}, p99 {np.percentile(vals, 99):.1f})",
            )
        ax.set_xscale("log")
        ax.set_xlabel("ms (log scale)")
        ax.set_ylabel("chunks")
        ax.set_title(title)
        ax.legend(fontsize=8)
    return save_figure(fig, path)
