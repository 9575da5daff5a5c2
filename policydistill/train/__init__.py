"""The one training loop every method plugs into."""

from .loop import DataSource, TrainConfig, TrainingDiverged, TrainResult, train

__all__ = ["DataSource", "TrainConfig", "TrainResult", "TrainingDiverged", "train"]
