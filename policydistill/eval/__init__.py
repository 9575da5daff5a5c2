"""Closed-loop evaluation: vectorised rollouts with fixed seeds, Wilson intervals, reports.

``evaluate_policy(policy, EvalConfig(tasks=..., episodes=...))`` — see ``rollout`` for the seed
convention and ``policy`` for the interface a policy needs.
"""

from .metrics import summarize_episodes, wilson_interval
from .policy import ChunkPolicy, RandomPolicy, RolloutPolicy, ScriptedPolicy
from .rollout import EvalConfig, evaluate_policy, merge_results

__all__ = [
    "EvalConfig",
    "evaluate_policy",
    "merge_results",
    "wilson_interval",
    "summarize_episodes",
    "RolloutPolicy",
    "ChunkPolicy",
    "ScriptedPolicy",
    "RandomPolicy",
]
