"""A policy's prefix pass, denoising step and whole chunk compiled for inference, frozen weights.

``torch.compile`` (inductor) with ``freezing``: the weights become constants of the compiled
code, which lets inductor fold what depends only on them and — on a CPU — run the float32
projections through oneDNN (``layers.linear``), whose op inductor lowers only for constant
weights. The price of constants is staleness: the compiled code would go on using the weights
it was compiled with. So the weights' version counters (bumped by every in-place change: an
optimizer step, ``load_state_dict``) and storages are recorded at the first call and checked
once per chunk (the prefix call); when they changed, the compiled code is dropped
(``torch._dynamo.reset()``, which also drops other compiled functions of the process: they
recompile on their next call) and compiled again, with a warning. ``freeze=False`` keeps the
weights as inputs instead (no check needed, float32 projections through the BLAS)."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn


class CompiledInference:
    """``prefix``, ``step`` and ``chunk`` (each ``(policy, *args)``) run the compiled versions of
    the unbound functions given (``type(policy)._prefix``, ``._flow``, ``._chunk``: compiled from
    the class's functions, so that a deep copy of the policy runs its own weights)."""

    def __init__(
        self,
        prefix_fn: Callable[..., Any],
        step_fn: Callable[..., Any],
        chunk_fn: Callable[..., Any] | None = None,
        freeze: bool = True,
        **compile_kwargs: Any,
    ) -> None:
        import torch._inductor.config  # noqa: F401  (loaded by torch.compile anyway; _run reads it)

        self.freeze = freeze
        kw = {"fullgraph": True, "dynamic": False, **compile_kwargs}
        self._prefix, self._step = torch.compile(prefix_fn, **kw), torch.compile(step_fn, **kw)
        # prefix + N steps in one graph (one per step count and sampling mode), compiled on first use
        self._chunk = None if chunk_fn is None else torch.compile(chunk_fn, **kw)
        self._seen: list[tuple[torch.Tensor, int, int]] | None = None

    def prefix(self, policy: nn.Module, *args: Any) -> Any:
        if self.freeze:
            self._check_weights(policy)
        return self._run(self._prefix, policy, tuple(_graph_input(a) for a in args))

    def chunk(self, policy: nn.Module, *args: Any) -> Any:
        """``chunk_fn(policy, *prefix_args, noise, steps, mode)``: a whole action chunk."""
        if self._chunk is None:
            raise ValueError("this policy was compiled without a whole-chunk function")
        if self.freeze:
            self._check_weights(policy)
        return self._run(self._chunk, policy, tuple(_graph_input(a) for a in args))

    def step(self, policy: nn.Module, x_t: Tensor, t: Tensor, s: Tensor, ctx: Any) -> Any:
        # The sampler passes expanded (stride-0) times, and t itself as s for Euler steps: the
        # code is specialised to strides and aliasing, so fresh copies keep one graph.
        return self._run(
            self._step, policy, (_graph_input(x_t), _graph_input(t, copy=True), _graph_input(s, copy=True), ctx)
        )

    def _run(self, fn: Callable[..., Any], policy: nn.Module, args: tuple) -> Any:
        # Set for the call only (a first call or a recompile traces and compiles inside it):
        # the user's other torch.compile calls keep their own setting.
        config = torch._inductor.config
        before = config.freezing
        config.freezing = self.freeze
        try:
            return fn(policy, *args)
        finally:
            config.freezing = before

    def _check_weights(self, policy: nn.Module) -> None:
        if self._seen is not None and all(t._version == v and t.data_ptr() == p for t, v, p in self._seen):
            return
        if self._seen is not None:
            warnings.warn(
                "the policy's weights changed after compile_for_inference(): compiling again "
                "(the compiled code held the old weights as constants)",
                stacklevel=4,
            )
            torch._dynamo.reset()
        self._seen = [(t, t._version, t.data_ptr()) for t in itertools.chain(policy.parameters(), policy.buffers())]


def _graph_input(a: Any, copy: bool = False) -> Any:
    """One layout and one kind of tensor per graph input, whatever the caller built: compiled
    code is specialised to strides, and under ``inference_mode`` an ordinary tensor (say, noise
    drawn outside it) and an inference tensor would each need a graph of their own."""
    if not torch.is_tensor(a):
        return a
    if copy or (torch.is_inference_mode_enabled() and not a.is_inference()):
        return a.clone(memory_format=torch.contiguous_format)
    return a.contiguous()
