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
weights as inputs instead (no check needed, float32 projections through the BLAS).

On CUDA the whole-chunk program (prefix + N steps: a 1-step student's whole inference) is also
captured as a CUDA graph (``mode="reduce-overhead"``): at these sizes a chunk is hundreds of
small kernels whose launch cost, not their arithmetic, sets the GPU latency, and one graph replay
launches them all at once. Only the chunk: the prefix and step programs hand a key/value cache
from one call to the next, and a CUDA graph's outputs live in memory that its next replay
overwrites. The chunk's output is copied out for the same reason. ``cuda_graphs=None`` (default)
selects this by the policy's device; True/False force it (on a CPU ``reduce-overhead`` compiles
the same program without a graph, which is how the tests exercise this path)."""

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
        cuda_graphs: bool | None = None,
        **compile_kwargs: Any,
    ) -> None:
        import torch._inductor.config  # noqa: F401  (loaded by torch.compile anyway; _run reads it)

        self.freeze = freeze
        #: capture the whole chunk as a CUDA graph: None = when the policy is on a GPU
        self.cuda_graphs = cuda_graphs
        kw = {"fullgraph": True, "dynamic": False, **compile_kwargs}
        self._prefix, self._step = torch.compile(prefix_fn, **kw), torch.compile(step_fn, **kw)
        # prefix + N steps in one graph (one per step count and sampling mode), compiled on first
        # use; with and without CUDA graphs, created on first use of each
        self._chunk_fn, self._chunk_kw = chunk_fn, kw
        self._chunks: dict[bool, Callable[..., Any]] = {}
        self._seen: list[tuple[torch.Tensor, int, int]] | None = None

    def graphs_for(self, device: torch.device) -> bool:
        """Whether the whole chunk runs as a CUDA graph for a policy on ``device``."""
        return self.cuda_graphs if self.cuda_graphs is not None else device.type == "cuda"

    def prefix(self, policy: nn.Module, *args: Any) -> Any:
        if self.freeze:
            self._check_weights(policy)
        return self._run(self._prefix, policy, tuple(_graph_input(a) for a in args))

    def chunk(self, policy: nn.Module, *args: Any) -> Any:
        """``chunk_fn(policy, *prefix_args, noise, steps, mode)``: a whole action chunk."""
        if self._chunk_fn is None:
            raise ValueError("this policy was compiled without a whole-chunk function")
        if self.freeze:
            self._check_weights(policy)
        graphs = self.graphs_for(next(policy.parameters()).device)
        if graphs not in self._chunks:
            self._chunks[graphs] = torch.compile(self._chunk_fn, **chunk_compile_kwargs(self._chunk_kw, graphs))
        if graphs:  # a new chunk: the graph may reuse the memory of the previous replay's outputs
            torch.compiler.cudagraph_mark_step_begin()
        out = self._run(self._chunks[graphs], policy, tuple(_graph_input(a) for a in args))
        return out.clone() if graphs else out

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


def chunk_compile_kwargs(kwargs: dict[str, Any], cuda_graphs: bool) -> dict[str, Any]:
    """``torch.compile`` arguments of the whole-chunk program: ``kwargs`` plus
    ``mode="reduce-overhead"`` (inductor's CUDA graphs) when ``cuda_graphs``, unless the caller
    chose a ``mode`` or ``options`` of its own (torch.compile takes only one of the two) or
    another backend than inductor (the mode is inductor's)."""
    mine = "mode" not in kwargs and "options" not in kwargs and kwargs.get("backend", "inductor") == "inductor"
    if cuda_graphs and mine:
        return {**kwargs, "mode": "reduce-overhead"}
    return dict(kwargs)


def _graph_input(a: Any, copy: bool = False) -> Any:
    """One layout and one kind of tensor per graph input, whatever the caller built: compiled
    code is specialised to strides, and under ``inference_mode`` an ordinary tensor (say, noise
    drawn outside it) and an inference tensor would each need a graph of their own."""
    if not torch.is_tensor(a):
        return a
    if copy or (torch.is_inference_mode_enabled() and not a.is_inference()):
        return a.clone(memory_format=torch.contiguous_format)
    return a.contiguous()
