"""Per-method training budgets for ``policydistill bench methods`` (the exact-mixture benchmark).

Every method is trained by the same loop (``policydistill.train.train``) from the same warm
start (the MLP velocity field fitted to the analytic teacher). A recipe sets only what a
method needs to reach its own quality: the number of optimiser steps, batch size, learning
rate, weight EMA, and overrides of the method's Config. ``--steps N`` on the command line
replaces every recipe's step count (and ``--quick`` shrinks everything), so budgets stay
comparable when asked. The budget each method used is written to the JSON and the table.

Owners tune their own method's entry here with small edits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Recipe:
    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    warmup_steps: int = 50
    ema_decay: float = 0.0  # the loop's weight EMA (0 = off)
    sample_with_ema: bool = False  # sample from the loop's EMA weights instead of the raw student
    method: dict[str, Any] = field(default_factory=dict)  # overrides of the method's Config
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Fitting the MLP velocity field to the analytic teacher (the warm start of every student).
FIT_RECIPE = Recipe(steps=3000, batch_size=256, lr=1e-3, note="regress F(x_t,t,t) on the exact velocity")

#: Used for any method without an entry below.
DEFAULT_RECIPE = Recipe(steps=1000)

RECIPES: dict[str, Recipe] = {
    "snapflow": Recipe(steps=1000),
    "consistency_distillation": Recipe(steps=1000, note="Heun teacher step, 18 uniform intervals, EMA target 0.95"),
    # iCT's s1 = 1280 levels is meant for ~400k steps; with 1k steps the curriculum stops at 80
    # levels (otherwise the last stages see adjacent levels too close to carry a signal).
    "consistency_training": Recipe(steps=1000, method={"s1": 80}, note="curriculum 10 → 80 levels"),
    # Round 0 takes Heun steps of the exact teacher: 8 Heun steps are far closer to the true map
    # than 8 Euler steps, so the distilled chain inherits a better map. Rounds 8 → 4 → 2 → 1.
    "progressive_distillation": Recipe(
        steps=1000, method={"teacher_steps": 8, "teacher_solver": "heun"}, note="8 Heun teacher steps → 4 → 2 → 1"
    ),
    # Flow-map family (defaults of each Config; the exact teacher supplies the velocity terms).
    "shortcut": Recipe(steps=1000, note="dyadic levels to 1/128, 1/4 of the batch bootstrapped from an EMA (0.995)"),
    "psd": Recipe(steps=1000, note="uniform (t, s) pairs, uniform split, 3/4 diagonal FM"),
    # The method's defaults (see LSDConfig): residual weight min(1, s/0.3)², a gap curriculum over the
    # first 60% of the steps, a quarter of the batch on diagonal flow matching.
    "lsd": Recipe(
        steps=1000,
        note="defaults: residual by exact JVP in s, weight min(1, s/0.3)², gap curriculum over 60%, 1/4 diagonal FM",
    ),
    "meanflow": Recipe(steps=1000, note="paper defaults: 25% off-diagonal, logit-normal(-0.4, 1), p = 1"),
    # Pairs from 32 Euler steps of the exact teacher, 32k fixed pairs (≈ 8 epochs over the buffer).
    "reflow": Recipe(
        steps=1000,
        method={"teacher_steps": 32, "buffer_size": 32768},
        note="32-step Euler teacher pairs, fixed buffer of 32768",
    ),
}


def recipe_for(name: str) -> Recipe:
    return RECIPES.get(name, DEFAULT_RECIPE)
