"""The peer benchmark's measuring process: lerobot's pi0 and ours, same weights, timed side by side.

Runs INSIDE an interpreter that has lerobot installed (``peer_bench.run_peer`` starts it as
``<lerobot python> -m policydistill.policies.peer_worker SPEC.json OUT.json`` with this package on
``PYTHONPATH``); the project's own environment never imports this module. Both policies run on that
interpreter's torch, in one process, on the same processed inputs and the same noise.

Per size: our pi0 is built from the preset with every parameter re-drawn (seeded), written with
``to_lerobot``, and read back by lerobot's own ``PI0Policy.from_pretrained`` — so lerobot runs
exactly our weights. lerobot builds pi0 only at the Gemma-2B / Gemma-300M widths (its config
refuses other variant names and its constructor fixes the vocabulary and the SigLIP tower), so for
the duration of the build its ``get_gemma_config`` and PaliGemma / Gemma constructors are wrapped to
take the preset's widths, depths, vocabulary and vision tower; the model code that runs is lerobot's.
Before anything is timed both 10-step chunks are compared (``parity_max_abs``): a bench of two
different models would be meaningless, so a mismatch fails the run.

Timed (medians over interleaved rounds, ``bench._interleaved_ms``), all under ``torch.no_grad()``
as both libraries' ``select_action`` run, from processed inputs to the normalised, padded chunk:
  lerobot eager     ``PI0Pytorch.sample_actions(images, masks, tokens, masks, state, noise, num_steps)``
  lerobot compiled  the same with ``compile_model=True`` in its config: lerobot itself wraps
                    ``sample_actions`` in ``torch.compile(mode=config.compile_mode)`` ("max-autotune")
  ours eager        ``Pi0Policy.sample_chunk(cond, noise, steps, "diagonal")``
  ours compiled     the same after ``compile_for_inference()``
each at 10 and at 1 denoising step. A compile that fails is recorded with its error, not hidden.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata as ilm
import json
import logging
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from .bench import _flat, _interleaved_ms, random_obs
from .pi0.model import Pi0Policy

IMPLS = ("lerobot_eager", "lerobot_compiled", "ours_eager", "ours_compiled")


def redraw(module: torch.nn.Module, seed: int) -> None:
    """Every parameter re-drawn (randn/sqrt(fan_in), 0.1·randn for vectors): a zero-initialised
    norm or bias would let two different conventions agree in the parity check. The target-time
    branch stays as built (zero output): the policy is a teacher, which lerobot can run."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            if name.startswith("target_time."):
                continue
            std = 1.0 / math.sqrt(math.prod(p.shape[1:])) if p.ndim >= 2 else 0.1
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * std)


@contextlib.contextmanager
def lerobot_at_our_size(ours: dict[str, Any]) -> Iterator[Any]:
    """lerobot's pi0 modeling module with its size hooks pointed at ``ours`` (our config dict) while
    the context is open: the Gemma configs, the vocabulary and the SigLIP tower. Handles lerobot
    >= 0.5 (PiGemma classes) and 0.4.x (openpi-patched transformers classes)."""
    import lerobot.policies.pi0.modeling_pi0 as mp

    new = hasattr(mp, "PiGemmaForCausalLM")
    pg_name = "PaliGemmaForConditionalGenerationWithPiGemma" if new else "PaliGemmaForConditionalGeneration"
    gm_name = "PiGemmaForCausalLM" if new else "GemmaForCausalLM"
    real = {n: getattr(mp, n) for n in (pg_name, gm_name, "get_gemma_config")}
    o = ours
    vlm = dict(
        width=o["vlm_width"],
        depth=o["vlm_depth"],
        mlp_dim=o["vlm_mlp_dim"],
        num_heads=o["num_heads"],
        num_kv_heads=o["num_kv_heads"],
        head_dim=o["head_dim"],
    )
    expert = dict(vlm, width=o["expert_width"], mlp_dim=o["expert_mlp_dim"])

    def paligemma(config: Any) -> Any:
        vc = config.vision_config
        vc.hidden_size, vc.intermediate_size = o["vision_width"], o["vision_mlp_dim"]
        vc.num_hidden_layers, vc.num_attention_heads = o["vision_depth"], o["vision_heads"]
        vc.patch_size = o["patch_size"]
        vc.projection_dim = config.projection_dim = o["vlm_width"]
        config.text_config.vocab_size = config._vocab_size = o["vocab_size"]
        config.image_token_index = o["vocab_size"] - 1
        config.text_config.num_image_tokens = (o["image_size"] // o["patch_size"]) ** 2
        return real[pg_name](config=config)

    def gemma(config: Any) -> Any:
        config.vocab_size = o["vocab_size"]
        return real[gm_name](config=config)

    mp.get_gemma_config = lambda variant: mp.GemmaConfig(**(vlm if variant == "gemma_2b" else expert))
    setattr(mp, pg_name, paligemma)
    setattr(mp, gm_name, gemma)
    try:
        yield mp
    finally:
        for n, v in real.items():
            setattr(mp, n, v)


def load_lerobot(folder: Path, ours: dict[str, Any], compile: bool, work: Path) -> Any:
    """lerobot's ``PI0Policy.from_pretrained`` on a copy of ``folder`` (our ``to_lerobot`` export)
    whose config names the variants lerobot accepts (the sizes come from ``lerobot_at_our_size``)
    and, for the compiled one, ``compile_model=True``."""
    dst = work / ("compiled" if compile else "eager")
    shutil.copytree(folder, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(paligemma_variant="gemma_2b", action_expert_variant="gemma_300m", compile_model=compile)
    (dst / "config.json").write_text(json.dumps(cfg))
    with lerobot_at_our_size(ours) as mp, contextlib.redirect_stdout(sys.stderr):  # lerobot prints its loading
        # strict=False: lerobot's Gemma expert has an lm_head that pi0 never uses and exports do not carry;
        # that the rest loaded is proven by the parity check on the outputs
        policy = mp.PI0Policy.from_pretrained(str(dst), strict=False)
    return policy.eval()


def _matmul_precision() -> str:
    return torch.get_float32_matmul_precision()


def bench_size(size: str, spec: dict[str, Any], work: Path, log: Callable[[str], None]) -> dict[str, Any]:
    seed, steps_list = spec["seed"], spec["steps"]
    torch.manual_seed(seed)
    ours = Pi0Policy.from_preset(size).eval()
    redraw(ours, seed)
    cfg = ours.config
    row: dict[str, Any] = {
        "size": size,
        "params_M": sum(p.numel() for p in ours.parameters()) / 1e6,
        "chunk": cfg.chunk_size,
        "cameras": len(cfg.cameras),
        "image_size": cfg.image_size,
        "tokens": cfg.tokenizer_max_length,
        "errors": {},
    }
    folder = work / "export"
    with warnings.catch_warnings():  # "stock lerobot cannot build this size": lerobot_at_our_size builds it
        warnings.simplefilter("ignore")
        ours.to_lerobot(folder)
    ours_cfg = ours.config_dict()
    lr_eager = load_lerobot(folder, ours_cfg, False, work)

    obs = random_obs(ours, 1, seed)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((1, *ours.sample_shape()), generator=g)
    with torch.no_grad():
        cond = ours.process(obs)
    ncam = cond["images"].shape[1]
    lr_args = (
        [cond["images"][:, i] for i in range(ncam)],
        [cond["image_masks"][:, i] for i in range(ncam)],
        cond["tokens"],
        cond["token_masks"],
        cond["state"],
    )

    def lerobot_fn(policy: Any, n: int) -> Callable[[], Any]:
        return lambda: policy.model.sample_actions(*lr_args, noise=noise.clone(), num_steps=n)

    def ours_fn(policy: Pi0Policy, n: int) -> Callable[[], Any]:
        return lambda: policy.sample_chunk(cond, noise, n, "diagonal")

    with torch.no_grad():
        theirs, mine = lerobot_fn(lr_eager, 10)(), ours_fn(ours, 10)()
    row["parity_max_abs"] = float((theirs - mine).abs().max())
    row["parity_scale"] = float(theirs.abs().max())
    if not row["parity_max_abs"] <= spec["parity_tol"] * max(1.0, row["parity_scale"]):
        raise RuntimeError(
            f"{size}: lerobot's and our 10-step chunks differ by {row['parity_max_abs']:.3g} on the same weights, "
            "inputs and noise: not the same model, nothing timed"
        )
    policies: dict[str, Any] = {"lerobot_eager": lr_eager, "ours_eager": ours}
    row["compile_s"] = {}
    if spec["compile"]:
        for impl in ("lerobot_compiled", "ours_compiled"):
            log(f"{size}: compiling {impl.replace('_', ' ')} (first calls)")
            t0 = time.perf_counter()
            try:
                if impl == "lerobot_compiled":
                    p, fn, eager = load_lerobot(folder, ours_cfg, True, work), lerobot_fn, lr_eager
                else:
                    p, fn, eager = copy.deepcopy(ours).compile_for_inference(), ours_fn, ours
                diff = 0.0
                with torch.no_grad():  # the first calls compile; the chunks must match the eager ones
                    for n in steps_list:
                        diff = max(diff, float((fn(p, n)() - fn(eager, n)()).abs().max()))
            except Exception as exc:  # recorded and shown: a compile that does not work is a result
                row["errors"][impl] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:400]}"
                log(f"{size}: {impl} failed: {row['errors'][impl]}")
                torch._dynamo.reset()
                continue
            row["compile_s"][impl] = time.perf_counter() - t0
            row[f"{impl}_vs_eager_max_abs"] = diff
            policies[impl] = p
    row["float32_matmul_precision"] = _matmul_precision()
    fns = {
        f"{impl}@{n}": (lerobot_fn if impl.startswith("lerobot") else ours_fn)(policies[impl], n)
        for impl in IMPLS
        if impl in policies
        for n in steps_list
    }
    load0 = os.getloadavg()[0]
    one_thread = spec["threads"] == 1
    with torch.no_grad():
        times = _interleaved_ms(
            fns,
            spec["rounds"],
            spec["warmup"],
            lambda: None,
            cpu_time=one_thread,
            per_round=spec["per_round"],
            settle_ms=spec["settle_ms"],
        )
    row["loadavg_1min_before_after"] = [load0, os.getloadavg()[0]]
    row["ms"] = {k: statistics.median(_flat(v)) for k, v in times.items() if not k.endswith("_cpu")}
    row["best_ms"] = {k: min(_flat(v)) for k, v in times.items() if not k.endswith("_cpu")}
    if one_thread:
        row["cpu_ms"] = {k[:-4]: statistics.median(_flat(v)) for k, v in times.items() if k.endswith("_cpu")}
    # ours/lerobot: the median over rounds of each round's ratio (both measured moments apart); with one
    # thread also of the thread's CPU time, which other processes on a busy machine disturb much less
    row["ratios"], row["cpu_ratios"] = {}, {}
    for mode in ("eager", "compiled"):
        for n in steps_list:
            for key, suffix in (("ratios", ""), ("cpu_ratios", "_cpu")):
                a, b = f"ours_{mode}@{n}{suffix}", f"lerobot_{mode}@{n}{suffix}"
                if a in times and b in times:
                    row[key][f"{mode}@{n}"] = statistics.median(
                        statistics.median(x) / statistics.median(y) for x, y in zip(times[a], times[b])
                    )
    for n in steps_list:  # each side's faster mode against the other's
        best = {
            side: min((v for k, v in row["ms"].items() if k.startswith(side) and k.endswith(f"@{n}")), default=None)
            for side in ("ours", "lerobot")
        }
        if best["ours"] and best["lerobot"]:
            row["ratios"][f"best@{n}"] = best["ours"] / best["lerobot"]
    return row


def main(spec_path: str, out_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    if spec.get("keep_freed_memory", True):
        from .cpu_memory import keep_freed_memory

        keep_freed_memory()

    # this process's stderr is read by peer_bench: lines with its LOG_PREFIX are shown to the user
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[peer] %(message)s"))
    logger = logging.getLogger("policydistill.peer_worker")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # once, prefixed, whatever lerobot did to the root logger
    log = logger.info

    result: dict[str, Any] = {
        "versions": {
            "lerobot": ilm.version("lerobot"),
            "torch": torch.__version__,
            "transformers": ilm.version("transformers"),
            "python": platform.python_version(),
        },
        "interpreter": sys.executable,
        "threads": torch.get_num_threads(),
        "float32_matmul_precision_at_start": _matmul_precision(),
        "rows": [],
    }
    with tempfile.TemporaryDirectory(prefix="pd_peer_") as tmp:
        for size in spec["sizes"]:
            log(f"{size}: building lerobot's pi0 and ours on the same weights")
            work = Path(tmp) / size
            work.mkdir()
            try:
                result["rows"].append(bench_size(size, spec, work, log))
            except Exception as exc:
                result["failed"] = {
                    "size": size,
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc()[-4000:],
                }
                break
            finally:
                torch._dynamo.reset()
    Path(out_path).write_text(json.dumps(result, indent=1))
    return 1 if "failed" in result else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
