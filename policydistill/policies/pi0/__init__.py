"""pi0 and pi0.5 (one model, two variants): configuration, model, processor, lerobot conversion."""

from .configuration import PRESETS, Pi0Config, preset
from .model import Pi0Policy, Pi05Policy, PrefixCache

__all__ = ["PRESETS", "Pi0Config", "Pi05Policy", "Pi0Policy", "PrefixCache", "preset"]
