"""The flow-map contract shared by every generator (action chunks, images, video).

A model exposes F(x_t, t, s, cond): the AVERAGE velocity from time t to time s, so that
x_s = x_t − (t − s)·F(x_t, t, s, cond). On the diagonal (s = t) F is the ordinary velocity
field; a flow-matching teacher is a model that has only been trained there.

Conditioning is encoded once per sample (``encode``) and the result (a prefix KV cache for
a VLA, a label embedding for an image model, None for an unconditional one) is reused by
every evaluation of ``flow``: that is what makes N denoising steps cost N suffix passes and
not N full forward passes.

Training modes (``--train``): a model declares, per mode, which of its sub-modules stay frozen
(``frozen_modules``). Under "all" nothing is frozen; under "expert" a vision-language-action
policy freezes its vision-language prefix. Frozen modules are SHARED, not copied, by every copy
the run makes (``student_from_teacher``, ``copy_model``: teacher, student, EMA, method targets),
and the part of ``encode`` that reads only them (``encode_frozen``) is computed once per batch,
without gradients, and handed to every model that shares them (:class:`SharedPrefix`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .embedding import TargetTimeEmbedding

#: what ``--train`` accepts: "all" trains every parameter; "expert" leaves the model's frozen
#: prefix (``FlowMapModel.frozen_modules("expert")``) as it is and trains the rest
TRAIN_MODES = ("all", "expert")


@dataclass
class FlowBatch:
    """What a method sees: clean samples ``data`` (B, ...) from the target distribution
    (actions, images, clips), the raw conditioning (observations, labels, or None) and an
    optional loss mask broadcastable to ``data`` (1 = counts, e.g. action-chunk padding)."""

    data: Tensor
    cond: Any = None
    mask: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.data.shape[0]


class FlowMapModel(nn.Module):
    """Base class of every generator. Subclasses implement ``encode`` and ``flow`` and MUST own a
    ``target_time`` (:class:`TargetTimeEmbedding`) whose output they add to their time
    embedding — also a model that ignores s (a flow-matching teacher keeps it frozen at zero):
    the distillation methods train that branch, and ``train()`` refuses a model without it.
    ``sample_shape`` is the per-sample shape of x (e.g. (chunk, action_dim))."""

    target_time: TargetTimeEmbedding
    #: training-time sampler of t for flow matching ("beta" for pi0-style policies).
    time_sampler: str = "uniform"
    #: how this model is sampled (``core.sampler``): ``train()`` sets it to the method's mode, the
    #: checkpoint stores it, and ``sample`` / eval / latency / export use it when no mode is given.
    #: None = "flowmap" (which equals Euler for a model whose target-time branch is zero).
    sampling_mode: str | None = None
    #: the ``--train`` mode a distillation of this model uses when none is given
    default_train: str = "all"
    #: names of the sub-modules this model shares, frozen, with its copies (set by ``freeze``;
    #: empty: nothing is shared and ``encode`` never receives a :class:`SharedPrefix`)
    shared_frozen: tuple[str, ...] = ()

    def frozen_modules(self, train: str) -> list[str]:
        """Names (``get_submodule`` paths) of the sub-modules that stay frozen when training in mode
        ``train`` (one of ``TRAIN_MODES``). "all": none. A model that declares frozen modules for a
        mode also implements ``encode_frozen`` and accepts a :class:`SharedPrefix` in ``encode``."""
        if train == "all":
            return []
        raise ValueError(
            f"{type(self).__name__} has no frozen prefix to leave out of training (--train {train}); use --train all"
        )

    def lora_targets(self) -> dict[str, str]:
        """Where optional LoRA adapters go (``--lora-rank``): {sub-module name: regex of the Linear
        layer names inside it that take an adapter}. Default: none."""
        return {}

    def encode_frozen(self, cond: Any) -> Any:
        """The part of ``encode`` that reads only the shared frozen modules (e.g. a VLA's
        vision-language keys and values), for raw conditioning ``cond``. Called once per batch
        under ``no_grad`` by :class:`SharedPrefix`; ``encode`` finishes it with the model's own
        trainable weights."""
        raise NotImplementedError(f"{type(self).__name__} has no frozen prefix")

    def prefix_key(self) -> tuple[nn.Module, ...]:
        """The identity of this model's shared frozen prefix: the module objects themselves. Two
        models accept each other's precomputed prefix only if these are the same objects."""
        return tuple(self.get_submodule(name) for name in self.shared_frozen)

    def split_prefix(self, cond: Any) -> tuple[Any, Any]:
        """(raw conditioning, precomputed ``encode_frozen`` output or None): what ``encode`` of a
        model with a frozen prefix starts with. The precomputed part is returned only when ``cond``
        is a :class:`SharedPrefix` of this model's own frozen modules."""
        if isinstance(cond, SharedPrefix):
            return cond.cond, cond.frozen_for(self)
        return cond, None

    def encode(self, cond: Any) -> Any:
        """Encode conditioning once; the result is passed to every ``flow`` call."""
        return cond.cond if isinstance(cond, SharedPrefix) else cond

    def flow(self, x_t: Tensor, t: Tensor, s: Tensor, ctx: Any) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x_t: Tensor, t: Tensor, s: Tensor, cond: Any = None) -> Tensor:
        return self.flow(x_t, t, s, self.encode(cond))

    def sample_shape(self) -> tuple[int, ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    def config_dict(self) -> dict:
        """JSON-serialisable configuration from which ``build_model`` rebuilds the model."""
        raise NotImplementedError

    def shard_units(self) -> list[tuple[nn.Module, tuple[str, ...]]]:
        """The sub-modules FSDP shards as units, bottom-up, each with the methods besides
        ``forward`` that use its weights (FSDP gathers them in hooks on those calls). What no unit
        holds is the root unit, gathered for a whole ``encode`` / ``flow``. Default: none (the
        model is one root unit: sharded at rest, gathered whole for each call)."""
        return []

    def freeze_target_time(self) -> None:
        """Teachers know only the diagonal: keep the s-branch at exactly zero."""
        self.target_time.reset_parameters()
        for p in self.target_time.parameters():
            p.requires_grad_(False)


def check_train_mode(model: FlowMapModel, train: str) -> list[str]:
    """The sub-modules ``model`` freezes under ``train``; a clear error for an unknown mode or one
    the model does not have."""
    if train not in TRAIN_MODES:
        raise ValueError(f"unknown training mode {train!r}; valid: {', '.join(TRAIN_MODES)}")
    names = list(model.frozen_modules(train))
    for name in names:
        model.get_submodule(name)  # a declared name that does not exist is the model's bug: fail now
    return names


def freeze(model: FlowMapModel, train: str) -> list[str]:
    """Freeze the sub-modules ``model`` declares for ``train`` (``requires_grad`` off) and record
    them as shared (``shared_frozen``); returns their names. "all" unfreezes nothing and shares
    nothing."""
    names = check_train_mode(model, train)
    for name in names:
        model.get_submodule(name).requires_grad_(False)
    model.shared_frozen = tuple(names)
    return names


def copy_model(model: FlowMapModel) -> FlowMapModel:
    """``copy.deepcopy(model)`` except for its shared frozen modules, which the copy holds as the
    very same objects (one copy in memory). Methods call this for their EMA targets and round
    teachers instead of ``copy.deepcopy``."""
    memo: dict[int, Any] = {}
    for module in model.prefix_key():
        memo[id(module)] = module
    return copy.deepcopy(model, memo)


class _CastTo(nn.Module):
    """Parametrization: a weight stored in one dtype, read in another (cast at use)."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def forward(self, stored: Tensor) -> Tensor:
        return stored.to(self.dtype)


def store_frozen_as(model: FlowMapModel, dtype: torch.dtype) -> None:
    """Keep ``model``'s shared frozen modules' parameters in ``dtype`` (bfloat16: half the memory
    of a float32 prefix) while the arithmetic stays in the model's compute dtype (its target-time
    branch's): every use casts a weight back (a parametrization), an embedding casts the rows it
    gathers. ``state_dict`` still holds compute-dtype tensors under the usual keys, so checkpoints
    do not change. Call it before the copies are made (``student_from_teacher`` does)."""
    from torch.nn.utils import parametrize

    compute = model.target_time.fc1.weight.dtype
    if dtype == compute or not model.shared_frozen:
        return
    if any(parametrize.is_parametrized(m) for root in model.prefix_key() for m in root.modules()):
        return  # already stored so (a teacher distilled into several students)

    def cast_output(module: nn.Module, args: Any, output: Tensor) -> Tensor:
        return output.to(compute)

    for module in model.prefix_key():
        for sub in list(module.modules()):
            if isinstance(sub, nn.Embedding):  # cast the gathered rows, not the whole table
                sub.weight = nn.Parameter(sub.weight.detach().to(dtype), requires_grad=False)
                sub.register_forward_hook(cast_output)
                continue
            for name, p in list(sub.named_parameters(recurse=False)):
                setattr(sub, name, nn.Parameter(p.detach().to(dtype), requires_grad=False))
                parametrize.register_parametrization(sub, name, _CastTo(compute), unsafe=True)

    def plain_state(module: nn.Module, state: dict, prefix: str, meta: Any) -> None:
        for key in list(state):
            plain = key.replace(".parametrizations.", ".").removesuffix(".original")
            if plain != key or state[key].dtype == dtype:
                state[plain] = state.pop(key).to(compute)

    def stored_state(module: nn.Module, state: dict, prefix: str, *args: Any) -> None:
        own = {k for k, _ in module.named_parameters(remove_duplicate=False)}
        for key in list(state):
            local = key[len(prefix) :]
            owner, _, leaf = local.rpartition(".")
            stored = f"{owner}.parametrizations.{leaf}.original"
            if local not in own and stored in own:
                state[prefix + stored] = state.pop(key)

    model._register_state_dict_hook(plain_state)
    model._register_load_state_dict_pre_hook(stored_state, with_module=True)


def student_from_teacher(
    teacher: FlowMapModel, train: str = "all", frozen_dtype: torch.dtype | None = None
) -> FlowMapModel:
    """A trainable copy of ``teacher`` with a fresh target-time branch (last layer zero).

    The student therefore equals the teacher exactly, on and off the diagonal, at step 0. Under
    ``train`` other than "all" the modules the teacher declares frozen for that mode are frozen in
    the teacher and SHARED with the student (same module objects, one copy in memory), and the
    student trains the rest; ``frozen_dtype`` stores them in that dtype (``store_frozen_as``).
    """
    freeze(teacher, train)
    if frozen_dtype is not None:
        store_frozen_as(teacher, frozen_dtype)
    student = copy_model(teacher)
    student.target_time.reset_parameters()
    frozen = {id(p) for m in student.prefix_key() for p in m.parameters()}
    for p in student.parameters():
        p.requires_grad_(id(p) not in frozen)
    student.train()
    return student


class SharedPrefix:
    """A batch's conditioning as every model of one training step sees it.

    The frozen part of its encoding (``owner.encode_frozen(cond)``) is computed at most once, on
    first use, under ``no_grad``, and reused by every model that shares the owner's frozen modules
    (teacher, student, EMA, method copies: :meth:`FlowMapModel.prefix_key` identity). A model with
    other frozen modules, or none, gets the raw ``cond`` and encodes it itself. Slicing (``tree_slice``)
    keeps the computed part; concatenating batches (``tree_cat``, e.g. a pair buffer) keeps only the
    raw conditioning."""

    def __init__(self, cond: Any, owner: FlowMapModel, frozen: Any = None, computed: bool = False) -> None:
        if not owner.shared_frozen:
            raise ValueError(f"{type(owner).__name__} shares no frozen modules: there is no prefix to share")
        self.cond, self.owner = cond, owner
        self._key = owner.prefix_key()
        self._frozen, self._computed = frozen, computed

    def matches(self, model: FlowMapModel) -> bool:
        key = model.prefix_key() if model.shared_frozen else ()
        return len(key) == len(self._key) and all(a is b for a, b in zip(key, self._key))

    @property
    def frozen(self) -> Any:
        """``encode_frozen`` of the conditioning (computed now if it was not yet)."""
        if not self._computed:
            with torch.inference_mode(False), torch.no_grad():
                self._frozen = self.owner.encode_frozen(self.cond)
            self._computed = True
        return self._frozen

    def frozen_for(self, model: FlowMapModel) -> Any:
        """The precomputed frozen encoding if ``model`` shares it, else None."""
        return self.frozen if self.matches(model) else None

    def tree_slice(self, index: Any, batch_size: int) -> SharedPrefix:
        from .tree import tree_slice

        # computed once for the whole batch, then sliced: every part of a step reuses the one pass
        return SharedPrefix(
            tree_slice(self.cond, index, batch_size), self.owner, tree_slice(self.frozen, index, batch_size), True
        )

    def tree_map(self, fn: Any) -> SharedPrefix:
        from .tree import tree_map

        frozen = tree_map(fn, self._frozen) if self._computed else None
        return SharedPrefix(tree_map(fn, self.cond), self.owner, frozen, self._computed)

    @staticmethod
    def tree_cat(trees: list[Any]) -> Any:
        from .tree import tree_cat

        # batches joined across steps (a pair buffer) keep their raw conditioning only: holding every
        # batch's prefix encoding would cost far more memory than it saves compute
        return tree_cat([t.cond if isinstance(t, SharedPrefix) else t for t in trees])


def share_prefix(model: FlowMapModel, cond: Any) -> Any:
    """``cond`` wrapped for one training step of ``model`` (a :class:`SharedPrefix`) when ``model``
    shares frozen modules, else ``cond`` unchanged."""
    if not model.shared_frozen or cond is None or isinstance(cond, SharedPrefix):
        return cond
    return SharedPrefix(cond, model)


def as_time(value: float | Tensor, batch: int, like: Tensor) -> Tensor:
    """A (B,) time tensor on ``like``'s device and dtype."""
    if torch.is_tensor(value):
        value = value.to(device=like.device, dtype=like.dtype)
        return value.expand(batch) if value.dim() == 0 else value
    return torch.full((batch,), float(value), device=like.device, dtype=like.dtype)
