"""Every generator architecture by name (lazy "module:Class" entries), and rebuilding a model
from the ``config.json`` saved next to its weights."""

from __future__ import annotations

from typing import Any

from .core.flowmap import FlowMapModel
from .registry import Registry

ARCHITECTURES: Registry[type[FlowMapModel]] = Registry("architecture")
ARCHITECTURES.register("mlp", "policydistill.models.mlp:MLPFlowMap")
ARCHITECTURES.register("analytic_gmm", "policydistill.bench.mixture:AnalyticGMMTeacher")
ARCHITECTURES.register("image-dit", "policydistill.models.dit:ImageDiT")
ARCHITECTURES.register("video-dit", "policydistill.models.dit:VideoDiT")
ARCHITECTURES.register("smolvla", "policydistill.policies.smolvla.model:SmolVLA")
ARCHITECTURES.register("pi0", "policydistill.policies.pi0.model:Pi0Policy")
ARCHITECTURES.register("pi05", "policydistill.policies.pi0.model:Pi05Policy")


def build_model(config: dict[str, Any]) -> FlowMapModel:
    """Rebuild a model from its ``config_dict()``."""
    if "architecture" not in config:
        raise ValueError("model config has no 'architecture' field; it was not written by policydistill")
    cls = ARCHITECTURES.load(config["architecture"])
    return cls.from_config(config)
