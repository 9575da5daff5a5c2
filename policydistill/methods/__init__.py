"""Distillation methods: one file each, one fixed signature (see ``base.Method``).

Adding a method = one new file + one ``METHODS.register`` line below.
"""

from __future__ import annotations

from typing import Any

from ..registry import Registry
from .base import Method

METHODS: Registry[type[Method]] = Registry("method")
METHODS.register("flow_matching", "policydistill.methods.flow_matching:FlowMatching")
METHODS.register("snapflow", "policydistill.methods.snapflow:SnapFlow")
METHODS.register("shortcut", "policydistill.methods.shortcut:Shortcut")
METHODS.register("meanflow", "policydistill.methods.meanflow:MeanFlow")
METHODS.register("lsd", "policydistill.methods.lsd:LagrangianSelfDistillation")
METHODS.register("psd", "policydistill.methods.psd:ProgressiveSelfDistillation")
METHODS.register("consistency_distillation", "policydistill.methods.consistency_distillation:ConsistencyDistillation")
METHODS.register("consistency_training", "policydistill.methods.consistency_training:ConsistencyTraining")
METHODS.register("progressive_distillation", "policydistill.methods.progressive_distillation:ProgressiveDistillation")
METHODS.register("reflow", "policydistill.methods.reflow:Reflow")

#: The default distillation method, earned on the bundled teacher by `policydistill compare`
#: (README "Which method for policies"; the rule is pipeline.compare.best_method): at 1 NFE every
#: method's success was within the noise of the others, and reflow's action chunks were the
#: closest to the 10-step teacher's (sliced Wasserstein 0.069 vs SnapFlow's 0.099, naive 0.102).
#: That comparison predates the independent data/noise streams and the re-noising consistency
#: sampler; the README says what a re-run may move.
DEFAULT_METHOD = "reflow"

#: The default per domain, each earned by a benchmark the project ships. Action chunks: reflow
#: (above). Images and video: snapflow, the best 1-NFE student on the Meta-World frames of
#: `policydistill bench media` (FD 8.1 vs the naive teacher's 106) and within a few percent of the
#: best (lsd) on digits; reflow was not benchmarked there (docs/bench_media.md).
DEFAULT_METHODS: dict[str, str] = {"actions": DEFAULT_METHOD, "images": "snapflow", "video": "snapflow"}


def default_method(domain: str) -> str:
    """The default method for ``domain`` ("actions", "images" or "video")."""
    if domain not in DEFAULT_METHODS:
        raise ValueError(f"unknown domain {domain!r}; valid: {', '.join(DEFAULT_METHODS)}")
    return DEFAULT_METHODS[domain]


def make_method(name: str, **overrides: Any) -> Method:
    """Instantiate a registered method; keyword overrides go to its config dataclass."""
    cls = METHODS.load(name)
    return cls(**overrides)


def method_table() -> list[dict[str, Any]]:
    """One row per registered method, for ``policydistill methods``."""
    rows = []
    for name in METHODS:
        cls = METHODS.load(name)
        default = cls()
        use = default.teacher_use()
        teacher = {
            "required": "required",
            "not used": "not used",
            "used": "optional: use_teacher=True (default) distils from a given teacher; False ignores it",
            "ignored": "optional: use_teacher=False (default) ignores a given teacher",
        }[use]
        rows.append(
            {
                "name": name,
                "needs_teacher": cls.needs_teacher,
                "teacher": teacher,
                "extra_networks": list(cls.extra_networks),
                "nfe_supported": cls.nfe_supported,
                "sampling": cls.sampling,
                "description": cls.description,
                "paper": cls.paper,
            }
        )
    return rows


__all__ = ["DEFAULT_METHOD", "DEFAULT_METHODS", "METHODS", "Method", "default_method", "make_method", "method_table"]
