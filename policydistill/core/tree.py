"""Tiny pytree helpers for conditioning objects (a tensor, a dict of tensors, a KV-cache list,
or None): methods split and join batches without knowing what the conditioning is."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


def tree_map(fn: Callable[[Tensor], Any], tree: Any) -> Any:
    if tree is None or isinstance(tree, (str, int, float, bool)):
        return tree
    if torch.is_tensor(tree):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: tree_map(fn, v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        out = [tree_map(fn, v) for v in tree]
        return type(tree)(*out) if hasattr(tree, "_fields") else type(tree)(out)
    if hasattr(tree, "tree_map"):  # objects that know how to map themselves (e.g. caches)
        return tree.tree_map(fn)
    return tree


def tree_slice(tree: Any, index: slice | Tensor, batch_size: int) -> Any:
    """Index every tensor whose leading dimension is the batch; lists of strings
    (e.g. instructions) of that length are indexed too."""
    if isinstance(tree, list) and len(tree) == batch_size and tree and isinstance(tree[0], str):
        idx = range(batch_size)[index] if isinstance(index, slice) else index.tolist()
        return [tree[i] for i in idx]
    if isinstance(tree, dict):
        return {k: tree_slice(v, index, batch_size) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)) and not (tree and isinstance(tree[0], str)):
        out = [tree_slice(v, index, batch_size) for v in tree]
        return type(tree)(*out) if hasattr(tree, "_fields") else type(tree)(out)
    if torch.is_tensor(tree):
        return tree[index] if tree.dim() > 0 and tree.shape[0] == batch_size else tree
    if hasattr(tree, "tree_slice"):
        return tree.tree_slice(index, batch_size)
    return tree


def tree_cat(trees: list[Any]) -> Any:
    """Concatenate conditioning objects along the batch dimension."""
    first = trees[0]
    if first is None:
        return None
    joiner = next((t for t in trees if hasattr(t, "tree_cat")), None)
    if joiner is not None:  # objects that know how to join themselves (also beside plain parts)
        return joiner.tree_cat(trees)
    if torch.is_tensor(first):
        return torch.cat(trees, dim=0)
    if isinstance(first, dict):
        return {k: tree_cat([t[k] for t in trees]) for k in first}
    if isinstance(first, list) and first and isinstance(first[0], str):
        return [s for t in trees for s in t]
    if isinstance(first, (list, tuple)):
        out = [tree_cat([t[i] for t in trees]) for i in range(len(first))]
        return type(first)(*out) if hasattr(first, "_fields") else type(first)(out)
    return first
