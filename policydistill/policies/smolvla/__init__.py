"""SmolVLA (lerobot's VLAFlowMatching), native: configuration, model, lerobot folder I/O."""

from .configuration import PRESETS, SmolVLAConfig, preset
from .model import SmolVLA

__all__ = ["PRESETS", "SmolVLA", "SmolVLAConfig", "preset"]
