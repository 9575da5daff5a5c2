"""The one training loop every method plugs into."""

from .loop import DataSource, TrainConfig, TrainingDiverged, TrainingInterrupted, TrainResult, train

__all__ = ["DataSource", "TrainConfig", "TrainResult", "TrainingDiverged", "TrainingInterrupted", "train"]
