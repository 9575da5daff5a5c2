"""policydistill: distil flow-matching robot policies into 1-step (or few-step) policies."""

__version__ = "0.1.0"
