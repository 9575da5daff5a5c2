"""`FlowPolicy`: what every flow-matching robot policy (pi0, pi0.5, SmolVLA) shares.

A policy is a :class:`~policydistill.core.flowmap.FlowMapModel` whose sample x is the
NORMALISED, PADDED action chunk (B, chunk_size, max_action_dim) and whose conditioning is a
PROCESSED observation batch (a dict of tensors, see :meth:`FlowPolicy.process`). Around that
contract it adds what a robot needs:

* normalisation stats (lerobot's MEAN_STD by default; QUANTILES / MIN_MAX for checkpoints
  that use them) stored as buffers, so they travel inside ``model.safetensors``;
* ``process(obs)``: any observation format below → model inputs (cond);
* ``sample_actions(obs, steps, noise, mode)`` → (B, chunk, action_dim) UNnormalised actions;
* ``select_action(obs)`` → (B, action_dim) from an action-chunk queue (``n_action_steps``),
  with ``reset()``, exactly like lerobot policies; it samples with ``nfe`` / ``sampling_mode``;
* ``make_flow_batch(sample)`` → :class:`FlowBatch` for training from a dataset window.

Observation formats accepted (batched numpy or torch; a missing batch dimension is added):
  env:      {"pixels": {cam: uint8 (B,H,W,3)}, "agent_pos": float (B,D), "task": list[str] | str}
  lerobot:  {"observation.images.<cam>": float [0,1] (B,3,H,W) (or (B,T,3,H,W): last frame),
             "observation.state": (B,D), "task": list[str] | str}
Training windows (data engineers): lerobot keys plus "action" (B,H,A) and "action_is_pad" (B,H).

Time convention (docs/architecture.md): t = 1 noise, t = 0 data; x_t = t·ε + (1 − t)·a.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.flowmap import FlowBatch, FlowMapModel
from ..core.normalize import NORM_MODES, Normalizer
from ..core.sampler import SAMPLING_MODES, sample_with_ctx
from ..fields import check_fields, unknown_keys
from .rtc import RTCPrefix

IMAGE_PREFIX = "observation.images."
#: lerobot's single-camera key (its Meta-World env, older datasets): our camera "image"
SINGLE_IMAGE_KEY, SINGLE_IMAGE_CAMERA = "observation.image", "image"
ORIGINS = ("policydistill", "lerobot")


@dataclass
class FlowPolicyConfig:
    """Input/output settings every policy shares. Architecture configs subclass this."""

    cameras: list[str] = field(default_factory=lambda: ["corner2"])
    image_size: int = 96  # square model input resolution (images are resized with padding)
    state_dim: int = 39  # the robot's state dimension (before padding)
    action_dim: int = 4  # the robot's action dimension (before padding)
    max_state_dim: int = 40  # state is zero-padded to this (pi0: 32)
    max_action_dim: int = 4  # actions are zero-padded to this (pi0: 32)
    chunk_size: int = 16  # actions predicted per chunk
    n_action_steps: int = 8  # actions executed from a chunk before re-planning
    num_inference_steps: int = 10  # NFE used by select_action (teacher: 10 Euler steps)
    sampling_mode: str = "diagonal"  # "diagonal" (Euler, teachers) | "flowmap" (students) | "consistency"
    tokenizer_max_length: int = 16
    state_norm: str = "MEAN_STD"
    action_norm: str = "MEAN_STD"
    norm_eps: float = 1e-8
    #: lerobot's relative actions (``use_relative_actions``): the model predicts ``action − state``
    #: on the dims marked True (the first ``len(mask)`` action dims against the same state dims);
    #: ``sample_actions`` adds the raw state back after unnormalising and ``make_flow_batch``
    #: subtracts it before normalising. None = absolute actions.
    relative_action_mask: list[bool] | None = None
    #: where the weights come from: "lerobot" for a policy converted from a lerobot checkpoint (set by
    #: ``from_lerobot`` and inherited by its students), "policydistill" for our own. The evaluator
    #: renders lerobot-made policies' simulations in lerobot's conventions (camera names, image size).
    origin: str = "policydistill"
    #: training-time real-time chunking (lerobot's ``rtc_training_max_delay``): > 0 trains with a
    #: clean prefix of 0..max_delay committed actions (per-token time 0, no loss on them), so that
    #: ``sample_actions(obs, rtc=RTCPrefix(...))`` continues the chunk being executed at any NFE.
    #: 0 = off (guided RTC is still available at inference for multi-step sampling).
    rtc_training_max_delay: int = 0

    #: integer fields whose smallest meaningful value is not 1 (0 or -1 means "derive it")
    INT_MIN: ClassVar[dict[str, int]] = {"rtc_training_max_delay": 0}
    #: integer fields bounded below ``fields.MAX_SIZE`` (layer counts: each layer is built in turn)
    INT_MAX: ClassVar[dict[str, int]] = {}

    def check(self) -> None:
        """Refuse values no policy can mean: wrong types (``"16"``, ``true`` for an int), sizes
        <= 0 or absurdly large, NaN/inf/negative eps, ``n_action_steps`` outside 1..chunk_size, an
        unknown normalisation or sampling mode. The message names every offending field."""
        problems = check_fields(self, self.INT_MIN, int_max=self.INT_MAX)
        if not problems:
            if self.n_action_steps > self.chunk_size:
                problems.append(
                    f"n_action_steps ({self.n_action_steps}) must not exceed chunk_size "
                    f"({self.chunk_size}): a chunk has only {self.chunk_size} actions to execute"
                )
            for name in ("state_norm", "action_norm"):
                if getattr(self, name) not in NORM_MODES:
                    problems.append(
                        f"{name} {getattr(self, name)!r} is not a normalisation mode (valid: {', '.join(NORM_MODES)})"
                    )
            if self.sampling_mode not in SAMPLING_MODES:
                problems.append(f"sampling_mode {self.sampling_mode!r} is not one of {', '.join(SAMPLING_MODES)}")
            if self.origin not in ORIGINS:
                problems.append(f"origin {self.origin!r} is not one of {', '.join(ORIGINS)}")
            if self.rtc_training_max_delay >= self.chunk_size:
                problems.append(
                    f"rtc_training_max_delay ({self.rtc_training_max_delay}) must be below chunk_size "
                    f"({self.chunk_size}): a prefix of the whole chunk leaves nothing to predict"
                )
        if problems:
            raise ValueError(f"invalid {type(self).__name__}: " + "; ".join(problems))


def _to_tensor(x: Any, device: torch.device, dtype: torch.dtype | None = None) -> Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else torch.as_tensor(x)
    return t.to(device=device, dtype=dtype) if dtype is not None else t.to(device)


def pad_last(x: Tensor, size: int) -> Tensor:
    """Zero-pad (or refuse to truncate) the last dimension to ``size``."""
    if x.shape[-1] > size:
        raise ValueError(
            f"a vector of {x.shape[-1]} dims does not fit max dim {size}; raise max_state_dim/max_action_dim"
        )
    return F.pad(x, (0, size - x.shape[-1])) if x.shape[-1] < size else x


def resize_with_pad(img: Tensor, size: int) -> Tensor:
    """(B,3,H,W) in [0,1] → (B,3,size,size): keep the aspect ratio, pad with 0 (→ −1 after
    scaling to [−1,1], as openpi's resize_with_pad). No-op when already square at ``size``."""
    h, w = img.shape[-2:]
    if h == size and w == size:
        return img
    ratio = max(h / size, w / size)
    nh, nw = int(h / ratio), int(w / ratio)
    out = F.interpolate(img, size=(nh, nw), mode="bilinear", align_corners=False).clamp(0, 1)
    ph, pw = size - nh, size - nw
    return F.pad(out, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=0.0)


class FlowPolicy(FlowMapModel):
    """Base class of every VLA flow policy. Subclasses implement :meth:`encode_inputs`
    (the model-specific part of processing: tokens, state into the prompt, ...), ``encode``
    (prefix pass → context) and ``flow`` (suffix pass → average velocity)."""

    architecture: ClassVar[str] = ""
    time_sampler = "beta"  # pi0's Beta(1.5, 1) training-time sampler
    #: distillation trains the action expert and leaves the vision-language prefix frozen and shared
    #: (``frozen_modules("expert")``), the recipe SnapFlow and lerobot's ``train_expert_only`` use
    default_train = "expert"
    config: FlowPolicyConfig
    #: the prefix, step and whole chunk compiled by ``compile_for_inference``
    #: (``compiled.CompiledInference``); None = eager
    _compiled: Any = None
    #: β of guided real-time chunking (``sample_actions(rtc=...)`` on a policy not trained with
    #: training-time RTC): the largest guidance weight. None (default) = the number of denoising
    #: steps: the paper's 5 was tuned for 5 steps and lerobot's ``max_guidance_weight`` 10 for 10, both
    #: a blend of 1 at the last step (docs/realtime.md, "Real-time chunking"); a fixed 5 at 10 steps
    #: leaves the committed positions 20x further from the previous chunk on an exact Gaussian.
    rtc_max_guidance: float | None = None

    def _init_policy(self, config: FlowPolicyConfig) -> None:
        if config.sampling_mode not in SAMPLING_MODES:
            raise ValueError(f"sampling_mode {config.sampling_mode!r}; valid: {', '.join(SAMPLING_MODES)}")
        self.config = config
        self.normalizer = Normalizer({"state": config.state_dim, "action": config.action_dim}, config.norm_eps)
        self._queue: deque[Tensor] = deque()

    # ------------------------------------------------------------------ settings
    @property
    def nfe(self) -> int:
        """Denoising steps used by ``select_action`` (and ``sample_actions`` by default)."""
        return self.config.num_inference_steps

    @nfe.setter
    def nfe(self, value: int) -> None:
        if int(value) < 1:
            raise ValueError(f"nfe must be >= 1, got {value}")
        self.config.num_inference_steps = int(value)
        self.reset()

    @property
    def sampling_mode(self) -> str:
        return self.config.sampling_mode

    @sampling_mode.setter
    def sampling_mode(self, value: str) -> None:
        if value not in SAMPLING_MODES:
            raise ValueError(f"sampling_mode {value!r}; valid: {', '.join(SAMPLING_MODES)}")
        self.config.sampling_mode = value
        self.reset()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype: the target-time branch's (a frozen prefix may be STORED in another,
        see ``core.flowmap.store_frozen_as``)."""
        return self.target_time.fc1.weight.dtype

    def sample_shape(self) -> tuple[int, ...]:
        return (self.config.chunk_size, self.config.max_action_dim)

    def set_normalization(self, stats: Mapping[str, Mapping[str, Any]]) -> None:
        """lerobot-style stats {"observation.state": {"mean","std",...}, "action": {...}}
        (numpy, torch or lists) → buffers, using the config's modes."""
        for which, key in (("state", "observation.state"), ("action", "action")):
            if key in stats:
                mode = self.config.state_norm if which == "state" else self.config.action_norm
                self.normalizer.set(which, stats[key], mode, self.config.norm_eps)

    # ------------------------------------------------------------------ observations
    def canonical_obs(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        """Any accepted observation format → {"images": [(B,3,H,W) float [0,1]] per config camera,
        "image_masks": [(B,) bool], "state": (B, state_dim) float (raw), "task": list[str]}."""
        if "images" in obs and "state" in obs and "image_masks" in obs:
            return dict(obs)  # already canonical
        device, cfg = self.device, self.config
        pixels = obs.get("pixels") if isinstance(obs.get("pixels"), Mapping) else {}
        state = obs.get("agent_pos", obs.get("observation.state"))
        if state is None:
            raise KeyError(
                "observation has no state: expected 'agent_pos' (env) or 'observation.state' (lerobot); "
                f"got keys {sorted(obs)}"
            )
        state = _to_tensor(state, device, torch.float32)
        if state.dim() == 1:
            state = state[None]
        if state.dim() == 3:  # (B, T, D) windows: the current state is the last one
            state = state[:, -1]
        b = state.shape[0]
        images, masks, found = [], [], False
        for cam in cfg.cameras:
            if cam in pixels:
                img = _to_tensor(pixels[cam], device)
                if img.dim() == 3:
                    img = img[None]
                img = img.permute(0, 3, 1, 2)  # (B,H,W,3) → (B,3,H,W)
                img = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
            elif IMAGE_PREFIX + cam in obs or (cam == SINGLE_IMAGE_CAMERA and SINGLE_IMAGE_KEY in obs):
                img = _to_tensor(
                    obs[IMAGE_PREFIX + cam] if IMAGE_PREFIX + cam in obs else obs[SINGLE_IMAGE_KEY], device
                )
                if img.dim() == 3:
                    img = img[None]
                if img.dim() == 5:  # (B, T, 3, H, W): the current frame
                    img = img[:, -1]
                if img.shape[1] != 3 and img.shape[-1] == 3:
                    img = img.permute(0, 3, 1, 2)
                img = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
            else:
                images.append(None)
                masks.append(torch.zeros(b, dtype=torch.bool, device=device))
                continue
            found = True
            images.append(resize_with_pad(img, cfg.image_size))
            masks.append(torch.ones(b, dtype=torch.bool, device=device))
        if not found:
            have = sorted(pixels) + [k for k in obs if k.startswith(IMAGE_PREFIX) or k == SINGLE_IMAGE_KEY]
            raise KeyError(
                f"none of the policy's cameras {cfg.cameras} is in the observation (it has {have}); "
                "rename the camera or build the policy with cameras=[...]"
            )
        # A missing camera is a black image (−1 after scaling) with a False mask, as lerobot does.
        images = [
            torch.zeros(b, 3, cfg.image_size, cfg.image_size, device=device) if im is None else im for im in images
        ]
        task = obs.get("task", obs.get("instruction", ""))
        tasks = [task] * b if isinstance(task, str) else [str(x) for x in task]
        if len(tasks) != b:
            raise ValueError(f"got {len(tasks)} task strings for a batch of {b}")
        return {"images": images, "image_masks": masks, "state": state, "task": tasks}

    def process(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        """Observation → cond (the processed batch every ``encode`` takes). Idempotent: an
        already processed batch (it has "tokens") passes through unchanged."""
        if "tokens" in obs:
            return dict(obs)
        c = self.canonical_obs(obs)
        state = c["state"]
        if state.shape[-1] != self.config.state_dim:
            raise ValueError(
                f"state has {state.shape[-1]} dims but the policy was built with state_dim={self.config.state_dim}"
            )
        state = pad_last(self.normalizer.normalize("state", state), self.config.max_state_dim)
        images = torch.stack([im * 2.0 - 1.0 for im in c["images"]], dim=1)  # (B, ncam, 3, H, W) in [−1, 1]
        cond = {
            "images": images.to(self.dtype),
            "image_masks": torch.stack(c["image_masks"], dim=1),
            "state": state.to(self.dtype),
        }
        if self.config.relative_action_mask:
            cond["raw_state"] = c["state"]  # relative actions are offsets from the raw state
        cond.update(self.encode_inputs(c["task"], state))
        return cond

    def encode_inputs(self, tasks: list[str], state_normalized: Tensor) -> dict[str, Tensor]:
        """Model-specific text inputs: {"tokens": (B,L) long, "token_masks": (B,L) bool}."""
        raise NotImplementedError

    # ------------------------------------------------------------------ training batches
    def make_flow_batch(self, sample: Mapping[str, Any], generator: torch.Generator | None = None) -> FlowBatch:
        """A dataset window → FlowBatch(data = normalised, padded action chunk (B, chunk, max_action_dim),
        mask = 1 where the step is real (not ``action_is_pad``) and the dim is a real action dim,
        cond = processed observation). With ``rtc_training_max_delay`` > 0 each sample also gets a
        clean prefix of 0..max_delay actions (drawn from ``generator``): they enter the model as
        clean tokens with time 0 (``cond["rtc_clean"]``, ``cond["rtc_mask"]``) and leave the loss."""
        cfg = self.config
        actions = _to_tensor(sample["action"], self.device, torch.float32)
        if actions.dim() == 2:
            actions = actions[None]
        if actions.shape[1] < cfg.chunk_size:
            raise ValueError(f"action window has {actions.shape[1]} steps; the policy's chunk_size is {cfg.chunk_size}")
        actions = actions[:, : cfg.chunk_size]
        if actions.shape[-1] != cfg.action_dim:
            raise ValueError(
                f"actions have {actions.shape[-1]} dims; the policy was built with action_dim={cfg.action_dim}"
            )
        if cfg.relative_action_mask:
            raw = _to_tensor(sample.get("observation.state", sample.get("agent_pos")), self.device, torch.float32)
            raw = raw[None] if raw.dim() == 1 else raw
            actions = self.relative_offset(actions, raw[:, -1] if raw.dim() == 3 else raw, -1)
        data = pad_last(self.normalizer.normalize("action", actions), cfg.max_action_dim)
        mask = torch.zeros_like(data)
        mask[..., : cfg.action_dim] = 1.0
        if "action_is_pad" in sample:
            is_pad = (
                _to_tensor(sample["action_is_pad"], self.device).bool().reshape(data.shape[0], -1)[:, : cfg.chunk_size]
            )
            mask = mask * (~is_pad)[..., None].to(mask.dtype)
        cond = self.process({k: v for k, v in sample.items() if k not in ("action", "action_is_pad")})
        if cfg.rtc_training_max_delay > 0:
            from ..core.rtc import prefix_mask, training_delays

            delays = training_delays(data.shape[0], cfg.rtc_training_max_delay, generator).to(data.device)
            rtc_mask = prefix_mask(delays, cfg.chunk_size)
            cond["rtc_clean"], cond["rtc_mask"] = data.to(self.dtype), rtc_mask
            mask = mask * (~rtc_mask)[..., None].to(mask.dtype)
        return FlowBatch(data=data.to(self.dtype), cond=cond, mask=mask)

    # ------------------------------------------------------------------ compiled inference
    def _inference_functions(self) -> tuple[Any, Any, Any]:
        """The class functions ``compile_for_inference`` compiles: (prefix, step, whole chunk or
        None), each called as ``fn(policy, *args)``; ``encode``/``flow`` dispatch to them."""
        raise NotImplementedError(f"{type(self).__name__} does not support compile_for_inference")

    def compile_for_inference(self, freeze: bool = True, **kwargs: Any) -> FlowPolicy:
        """Compile the prefix pass, the denoising step and (where the policy has one) the whole
        chunk with ``torch.compile`` (inductor) for inference: under ``no_grad``/``inference_mode``
        ``encode``, ``flow`` and ``sample_chunk`` run the compiled code; with autograd on
        (training) they stay eager.

        Each is one graph without breaks (``fullgraph``). Compilation happens on the first call
        (one graph per input shape, tens of seconds on a CPU). With ``freeze`` (default) the
        weights are constants of the compiled code, checked once per chunk and recompiled when
        they changed (see ``compiled.py``); on a CPU that is what lets the float32 projections run
        through oneDNN inside the graph. ``kwargs`` go to ``torch.compile``; ``use_eager()``
        undoes this."""
        from .compiled import CompiledInference

        prefix_fn, step_fn, chunk_fn = self._inference_functions()
        self.eval()
        self._compiled = CompiledInference(prefix_fn, step_fn, chunk_fn, freeze=freeze, **kwargs)
        return self

    def use_eager(self) -> FlowPolicy:
        """Back to the eager prefix and denoising step."""
        self._compiled = None
        return self

    def compile(self, **kwargs: Any) -> FlowPolicy:  # type: ignore[override]
        """``nn.Module.compile`` compiles ``forward`` (training); for a policy this is
        ``compile_for_inference``."""
        return self.compile_for_inference(**kwargs)

    # ------------------------------------------------------------------ inference
    def encode(self, cond: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def sample_actions(
        self,
        obs: Mapping[str, Any],
        steps: int | None = None,
        noise: Tensor | None = None,
        mode: str | None = None,
        generator: torch.Generator | None = None,
        rtc: RTCPrefix | None = None,
        rtc_mode: str = "auto",
    ) -> Tensor:
        """(B, chunk_size, action_dim) UNnormalised actions: prefix encoded once, then ``steps``
        suffix-only jumps from t = 1 to t = 0.

        ``rtc``: real-time chunking (``policies.rtc``): the previous chunk's queued actions and how
        many of them run during this inference; the chunk returned starts with exactly those and
        continues them. ``rtc_mode`` "auto" uses the hard prefix of training-time RTC when the
        policy was trained with it (``rtc_training_max_delay`` > 0), else guided RTC (its largest
        guidance weight: ``rtc_max_guidance``; not for the "consistency" sampler)."""
        cond = self.process(obs)
        b = cond["state"].shape[0]
        # the noise, like the sampler's state, stays float32 in a bfloat16/float16 policy (each step
        # casts its input): not rounded once more before the first step
        dtype = torch.promote_types(self.dtype, torch.float32)
        if noise is None:
            noise = torch.randn((b, *self.sample_shape()), generator=generator, device=self.device, dtype=dtype)
        steps, mode = steps or self.nfe, mode or self.sampling_mode
        if rtc is None:
            x = self.sample_chunk(cond, noise.to(dtype), steps, mode)
        else:
            x = self._sample_rtc(cond, noise.to(dtype), steps, mode, rtc, rtc_mode, generator)
        actions = self.normalizer.unnormalize("action", x[..., : self.config.action_dim].float())
        return self.relative_offset(actions, cond.get("raw_state"), +1)

    def rtc_target(self, cond: dict[str, Any], rtc: RTCPrefix) -> tuple[Tensor, Tensor, Tensor]:
        """The previous chunk in model space: (normalised, padded actions (B, chunk, max_action_dim),
        delays (B,), lengths (B,)), positions past the chunk cut and missing ones zero (length says)."""
        cfg = self.config
        actions, delay, lengths = rtc.tensors(self.device)
        if actions.shape[-1] != cfg.action_dim:
            raise ValueError(f"RTC prefix actions have {actions.shape[-1]} dims; the policy acts in {cfg.action_dim}")
        if actions.shape[0] != cond["state"].shape[0]:
            raise ValueError(f"RTC prefix has {actions.shape[0]} rows for a batch of {cond['state'].shape[0]}")
        h = cfg.chunk_size
        actions = self.relative_offset(actions, cond.get("raw_state"), -1)
        target = pad_last(self.normalizer.normalize("action", actions), cfg.max_action_dim)[:, :h]
        if target.shape[1] < h:
            target = torch.cat([target, target.new_zeros(target.shape[0], h - target.shape[1], target.shape[2])], 1)
        return target, delay.clamp(max=h - 1), lengths.clamp(max=h)

    def _sample_rtc(
        self,
        cond: dict[str, Any],
        noise: Tensor,
        steps: int,
        mode: str,
        rtc: RTCPrefix,
        rtc_mode: str,
        generator: torch.Generator | None,
    ) -> Tensor:
        from ..core.rtc import prefix_mask
        from .rtc import RTC_MODES

        if rtc_mode not in RTC_MODES:
            raise ValueError(f"rtc_mode {rtc_mode!r}: use one of {', '.join(RTC_MODES)}")
        max_delay = self.config.rtc_training_max_delay
        if rtc_mode == "auto":
            rtc_mode = "trained" if max_delay > 0 else "guided"
        target, delay, lengths = self.rtc_target(cond, rtc)
        if rtc_mode == "trained":
            if max_delay <= 0:
                raise ValueError(
                    "rtc_mode 'trained' needs a policy trained with training-time RTC (rtc_training_max_delay > 0); "
                    "this one was not: use rtc_mode 'guided' or distil/train with --rtc-max-delay"
                )
            # Past the trained range the model is conditioned on the first max_delay committed actions
            # only: the later ones still run on the robot, so the chunk may jump where they end. Train
            # with a max_delay that covers the delays the policy meets (docs/realtime.md).
            mask = prefix_mask(delay.clamp(max=max_delay), self.config.chunk_size)
            if not bool(mask.any()):  # nothing committed: exactly the plain chunk
                return self.sample_chunk(cond, noise, steps, mode)
            ctx = self.encode({**cond, "rtc_clean": target.to(self.dtype), "rtc_mask": mask})
            x = sample_with_ctx(self, noise, ctx, steps, mode, generator=generator)
            return torch.where(mask[..., None], target.to(x.dtype), x)
        from ..core.rtc import guided_sample, soft_mask

        # Guided RTC: the prefix is encoded once without gradients; the guidance differentiates each
        # step's action pass only. Padding dims carry no guidance (they are cut from the chunk).
        real_dims = torch.arange(noise.shape[-1], device=noise.device) < self.config.action_dim
        weights = soft_mask(delay, lengths, self.config.chunk_size)[..., None] * real_dims
        ctx, target = self.encode(cond), target.to(noise.dtype)
        beta = float(steps) if self.rtc_max_guidance is None else self.rtc_max_guidance
        return guided_sample(self, noise, ctx, steps, mode, target, weights, beta, generator=generator)

    def relative_offset(self, actions: Tensor, raw_state: Tensor | None, sign: int) -> Tensor:
        """lerobot's relative actions: ``actions ± state`` on the masked dims (+1 after sampling,
        −1 for training targets); unchanged for absolute-action policies."""
        mask = self.config.relative_action_mask
        if not mask:
            return actions
        n = len(mask)
        if raw_state is None:
            raise ValueError(
                "this policy predicts relative actions: sample from an observation with its raw state, "
                "not from an already processed batch"
            )
        if raw_state.shape[-1] < n:
            raise ValueError(f"relative actions need the first {n} state dims but the state has {raw_state.shape[-1]}")
        offset = raw_state[..., :n].float() * torch.tensor(mask, dtype=torch.float32, device=actions.device)
        out = actions.clone()
        out[..., :n] += sign * (offset[:, None] if actions.dim() == 3 else offset)
        return out

    def sample_chunk(self, cond: Any, noise: Tensor, steps: int, mode: str) -> Tensor:
        """Processed inputs + noise → a normalised, padded action chunk: the prefix once, then
        ``steps`` jumps (what lerobot's ``sample_actions`` times). A policy may run it as one
        compiled program (pi0's ``compile_for_inference``)."""
        return sample_with_ctx(self, noise, self.encode(cond), steps, mode)

    @torch.no_grad()
    def select_action(self, obs: Mapping[str, Any]) -> Tensor:
        """(B, action_dim): the next action from the queue; a new chunk (``nfe`` steps,
        ``sampling_mode``) is sampled when the queue is empty. Call ``reset()`` per episode."""
        if not self._queue:
            chunk = self.sample_actions(obs)[:, : self.config.n_action_steps]
            self._queue.extend(chunk.transpose(0, 1))
        return self._queue.popleft()

    def reset(self) -> None:
        """Forget queued actions (call at every episode start)."""
        self._queue = deque()

    # ------------------------------------------------------------------ config
    def config_dict(self) -> dict:
        return {"architecture": self.architecture, **dataclasses.asdict(self.config)}

    @classmethod
    def config_from_dict(cls, config_cls: type, config: Mapping[str, Any]) -> Any:
        names = {f.name for f in dataclasses.fields(config_cls)}
        unknown = unknown_keys(config_cls, config, ignore=("architecture", "policydistill"))
        if unknown:
            raise ValueError(f"{config_cls.__name__} has no field(s) {', '.join(unknown)}")
        cfg = config_cls(**{k: v for k, v in config.items() if k in names})
        cfg.check()
        return cfg
