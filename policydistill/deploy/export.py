"""Export a few-step policy for deployment: the prefix pass and the denoising step as two
``torch.export`` programs (and ONNX files where the ``onnx`` extra is installed).

The prefix context of a policy (a dataclass of tensors and lists of tensors: KV caches, masks,
rotary tables) is flattened into a flat tuple of tensors on the way out of the prefix program
and rebuilt on the way into the step program, so the two programs have plain tensor
signatures that any runtime can call:

    ctx = prefix(images, image_masks, tokens, token_masks, state)          # tuple of tensors
    x   = step(x, t, s_target, dt, *ctx)                                   # x − dt·F(x, t, s_target)

``s_target`` is what the sampling mode asks the model about (s for flow-map students, t for
Euler, 0 for consistency models) and ``dt`` the length of the jump, as in ``core.sampler``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

COND_KEYS = ("images", "image_masks", "tokens", "token_masks", "state")


@dataclass
class ContextSpec:
    """How a context dataclass maps to a flat tuple of tensors."""

    cls: type
    layout: list[tuple[str, str, int]]  # (field, kind: "tensor" | "list" | "pairs" | "none", length)

    @classmethod
    def of(cls, ctx: Any) -> ContextSpec:
        if not dataclasses.is_dataclass(ctx):
            raise TypeError(f"cannot export a context of type {type(ctx).__name__}: expected a dataclass of tensors")
        layout = []
        for f in dataclasses.fields(ctx):
            v = getattr(ctx, f.name)
            if v is None:
                layout.append((f.name, "none", 0))
            elif torch.is_tensor(v):
                layout.append((f.name, "tensor", 1))
            elif isinstance(v, (list, tuple)) and v and isinstance(v[0], (list, tuple)):
                layout.append((f.name, "pairs", len(v)))
            elif isinstance(v, (list, tuple)):
                layout.append((f.name, "list", len(v)))
            else:
                raise TypeError(f"context field {f.name} of type {type(v).__name__} is not exportable")
        return cls(type(ctx), layout)

    def flatten(self, ctx: Any) -> tuple[Tensor, ...]:
        out: list[Tensor] = []
        for name, kind, _ in self.layout:
            v = getattr(ctx, name)
            if kind == "tensor":
                out.append(v)
            elif kind == "list":
                out.extend(v)
            elif kind == "pairs":
                for a, b in v:
                    out.extend((a, b))
        return tuple(out)

    def unflatten(self, flat: tuple[Tensor, ...]) -> Any:
        it, kwargs = iter(flat), {}
        for name, kind, n in self.layout:
            if kind == "none":
                kwargs[name] = None
            elif kind == "tensor":
                kwargs[name] = next(it)
            elif kind == "list":
                kwargs[name] = [next(it) for _ in range(n)]
            else:
                kwargs[name] = [(next(it), next(it)) for _ in range(n)]
        return self.cls(**kwargs)


class PrefixProgram(nn.Module):
    def __init__(self, policy: Any, spec: ContextSpec) -> None:
        super().__init__()
        self.policy, self.spec = policy, spec

    def forward(
        self, images: Tensor, image_masks: Tensor, tokens: Tensor, token_masks: Tensor, state: Tensor
    ) -> tuple[Tensor, ...]:
        cond = dict(zip(COND_KEYS, (images, image_masks, tokens, token_masks, state)))
        return self.spec.flatten(_without_buffers(self.policy.encode(cond)))


class StepProgram(nn.Module):
    def __init__(self, policy: Any, spec: ContextSpec) -> None:
        super().__init__()
        self.policy, self.spec = policy, spec

    def forward(self, x: Tensor, t: Tensor, s_target: Tensor, dt: Tensor, *flat: Tensor) -> Tensor:
        f = self.policy.flow(x, t, s_target, self.spec.unflatten(flat))
        return x - dt.reshape(-1, *([1] * (x.dim() - 1))) * f


def _without_buffers(ctx: Any) -> Any:
    """Inference-only scratch buffers (filled in place per step) do not belong in a program's I/O."""
    for name in ("k_buf", "v_buf"):
        if hasattr(ctx, name):
            ctx = dataclasses.replace(ctx, **{name: None})
    return ctx


@dataclass
class ExportedPolicy:
    prefix: Any  # torch.export.ExportedProgram
    step: Any
    spec: ContextSpec
    policy: Any  # kept for processing (tokenizer, normaliser) and unnormalising

    def __post_init__(self) -> None:
        # .module() rebuilds a GraphModule: do it once, not per call
        self._prefix_fn = self.prefix.module()
        self._step_fn = self.step.module()

    @torch.no_grad()
    def sample_actions(self, obs: dict[str, Any], steps: int, mode: str, noise: Tensor | None = None) -> Tensor:
        from ..core.interpolant import interpolate
        from ..core.sampler import time_grid

        cond = self.policy.process(obs)
        flat = self._prefix_fn(*(cond[k] for k in COND_KEYS))
        b = cond["state"].shape[0]
        x = noise if noise is not None else torch.randn((b, *self.policy.sample_shape()))
        grid = time_grid(steps, dtype=x.dtype)
        step = self._step_fn
        for i in range(steps):
            t, s_next = grid[i].expand(b), grid[i + 1].expand(b)
            if mode == "consistency":  # predict x̂₀, re-noise to s with fresh noise (core.sampler)
                x0 = step(x, t, torch.zeros_like(t), t, *flat)
                x = interpolate(x0, torch.randn(x.shape, dtype=x.dtype), s_next)
                continue
            target = {"flowmap": s_next, "diagonal": t, "consistency_deterministic": torch.zeros_like(t)}[mode]
            x = step(x, t, target, t - s_next, *flat)
        return self.policy.normalizer.unnormalize("action", x[..., : self.policy.config.action_dim].float())


@torch.no_grad()
def export_policy(policy: Any, example_obs: dict[str, Any]) -> ExportedPolicy:
    """``torch.export`` the prefix pass and the denoising step of ``policy``."""
    policy.eval()
    cond = policy.process(example_obs)
    ctx = _without_buffers(policy.encode(cond))
    spec = ContextSpec.of(ctx)
    args = tuple(cond[k] for k in COND_KEYS)
    prefix = torch.export.export(PrefixProgram(policy, spec), args)
    b = cond["state"].shape[0]
    x = torch.randn((b, *policy.sample_shape()))
    t, s = torch.ones(b), torch.zeros(b)
    step = torch.export.export(StepProgram(policy, spec), (x, t, s, t - s, *spec.flatten(ctx)))
    return ExportedPolicy(prefix, step, spec, policy)


def save_exported(exported: ExportedPolicy, folder: str | Path) -> list[Path]:
    """Write ``prefix.pt2`` and ``step.pt2`` (torch.export archives) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "prefix.pt2", folder / "step.pt2"]
    torch.export.save(exported.prefix, str(paths[0]))
    torch.export.save(exported.step, str(paths[1]))
    return paths


def export_onnx(exported: ExportedPolicy, example_obs: dict[str, Any], folder: str | Path) -> list[Path]:
    """Write ``prefix.onnx`` and ``step.onnx`` (needs the ``onnx`` extra: onnx + onnxscript)."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ImportError("ONNX export needs: pip install 'policydistill[onnx]'") from exc
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "prefix.onnx", folder / "step.onnx"]
    for prog, path in zip((exported.prefix, exported.step), paths):
        torch.onnx.export(prog, (), str(path), dynamo=True, verbose=False)
    return paths


class OnnxPolicy:
    """The two ONNX programs under onnxruntime (sessions created once)."""

    def __init__(self, folder: str | Path, policy: Any) -> None:
        import onnxruntime as ort

        folder = Path(folder)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.prefix = ort.InferenceSession(str(folder / "prefix.onnx"), opts, providers=["CPUExecutionProvider"])
        self.step = ort.InferenceSession(str(folder / "step.onnx"), opts, providers=["CPUExecutionProvider"])
        self.step_inputs = [i.name for i in self.step.get_inputs()]
        self.policy = policy

    @torch.no_grad()
    def sample_actions(self, obs: dict[str, Any], steps: int, mode: str, noise: Tensor) -> Tensor:
        import numpy as np

        from ..core.sampler import time_grid

        cond = self.policy.process(obs)
        feeds = {i.name: cond[k].cpu().numpy() for i, k in zip(self.prefix.get_inputs(), COND_KEYS)}
        flat = self.prefix.run(None, feeds)
        x = noise.cpu().numpy().astype(np.float32)
        b = x.shape[0]
        grid = time_grid(steps).numpy()
        for i in range(steps):
            t = np.full(b, grid[i], np.float32)
            s_next = np.full(b, grid[i + 1], np.float32)
            if mode == "consistency":  # predict x̂₀, re-noise to s with fresh noise (core.sampler)
                x0 = self.step.run(None, dict(zip(self.step_inputs, [x, t, np.zeros_like(t), t, *flat])))[0]
                z = torch.randn(x.shape, dtype=torch.float32).numpy()
                x = (
                    s_next.reshape(-1, *[1] * (x.ndim - 1)) * z + (1 - s_next.reshape(-1, *[1] * (x.ndim - 1))) * x0
                ).astype(np.float32)
                continue
            target = {"flowmap": s_next, "diagonal": t, "consistency_deterministic": np.zeros_like(t)}[mode]
            x = self.step.run(None, dict(zip(self.step_inputs, [x, t, target, t - s_next, *flat])))[0]
        out = torch.from_numpy(x)
        return self.policy.normalizer.unnormalize("action", out[..., : self.policy.config.action_dim].float())


def onnx_sample_actions(
    folder: str | Path, policy: Any, obs: dict[str, Any], steps: int, mode: str, noise: Tensor
) -> Tensor:
    """One-off convenience: load the ONNX programs and sample (parity checks)."""
    return OnnxPolicy(folder, policy).sample_actions(obs, steps, mode, noise)


def example_observation(policy: Any, batch: int = 1, task: str = "pick up the object", seed: int = 0) -> dict[str, Any]:
    """A synthetic observation in the env format, shaped for ``policy`` (for tracing and checks)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    cfg = policy.config
    pixels = {c: rng.integers(0, 256, (batch, cfg.image_size, cfg.image_size, 3), dtype=np.uint8) for c in cfg.cameras}
    return {
        "pixels": pixels,
        "agent_pos": rng.standard_normal((batch, cfg.state_dim)).astype(np.float32),
        "task": [task] * batch,
    }
