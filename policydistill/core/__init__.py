"""Shared flow numerics: the pi0 time convention, interpolant, time samplers, embeddings,
the flow-map model contract and the one sampler rule. Pure maths: imports nothing else
from the package."""

from .embedding import TargetTimeEmbedding, sinusoidal_embedding
from .flowmap import (
    TRAIN_MODES,
    FlowBatch,
    FlowMapModel,
    SharedPrefix,
    check_train_mode,
    copy_model,
    freeze,
    share_prefix,
    student_from_teacher,
)
from .interpolant import expand_time, interpolate, velocity_target
from .normalize import NORM_MODES, Normalizer
from .sampler import flow_step, sample, sample_with_ctx, time_grid
from .time_sampling import TIME_SAMPLERS, sample_time
from .tree import tree_cat, tree_map, tree_slice

__all__ = [
    "FlowBatch",
    "FlowMapModel",
    "NORM_MODES",
    "SharedPrefix",
    "TRAIN_MODES",
    "Normalizer",
    "TIME_SAMPLERS",
    "TargetTimeEmbedding",
    "check_train_mode",
    "copy_model",
    "expand_time",
    "flow_step",
    "freeze",
    "interpolate",
    "sample",
    "sample_time",
    "sample_with_ctx",
    "share_prefix",
    "sinusoidal_embedding",
    "student_from_teacher",
    "time_grid",
    "tree_cat",
    "tree_map",
    "tree_slice",
    "velocity_target",
]
