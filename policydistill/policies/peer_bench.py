"""``policydistill bench peer``: lerobot's pi0 and ours on the same weights, timed side by side.

lerobot cannot live in the project's environment (it pins its own torch and transformers), so the
measurement runs in a separate interpreter that has lerobot installed — named by ``--lerobot-python``
or the ``PD_LEROBOT_PYTHON`` environment variable — with this package put on its ``PYTHONPATH``
(a temporary folder holding only a link to the package, so nothing else of this environment leaks
into it). There ``peer_worker`` builds lerobot's pi0 and ours at each size from the same weights,
checks that their 10-step chunks agree, and times lerobot eager, lerobot compiled (lerobot's own
``compile_model`` path), ours eager and ours compiled, interleaved in one process on the same inputs
and noise, at 10 and 1 denoising steps. Both run on that interpreter's torch, so the comparison is
of the two model codes, not of two torch builds.

Ratios are ours / lerobot (below 1: ours is faster): per mode (eager vs eager, compiled vs compiled)
the median over rounds of each round's ratio, and ``best`` = our faster mode against lerobot's
faster mode. The machine, its load before and after, the threads and every version are recorded.

Making an interpreter with lerobot (outside the project's environment)::

    python3.12 -m venv /path/lerobot-venv
    /path/lerobot-venv/bin/pip install "lerobot[pi]"
    policydistill bench peer --lerobot-python /path/lerobot-venv/bin/python
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .pi0.configuration import PRESETS

ENV_VAR = "PD_LEROBOT_PYTHON"
#: printed by the worker before its progress lines (everything else on its stderr is lerobot's chatter)
LOG_PREFIX = "[peer] "
HOW_TO_INSTALL = (
    "make one outside the project's environment: python3.12 -m venv /path/lerobot-venv && "
    "/path/lerobot-venv/bin/pip install lerobot (with its pi extra)"
)
#: sizes the peer bench builds (full is 3.3 B parameters: four copies do not fit a workstation's memory)
PEER_SIZES = ("tiny", "small", "ref")


@dataclass
class PeerSettings:
    sizes: tuple[str, ...] = ("small", "ref")
    steps: tuple[int, ...] = (10, 1)
    rounds: int = 20  # interleaved rounds; every timed function in turn per round
    per_round: int = 3  # timed calls per function per round (after 10 ms of untimed calls)
    settle_ms: float = 10.0
    warmup: int = 2
    threads: int = 1
    compile: bool = True
    seed: int = 0
    #: the two 10-step chunks must agree this closely (relative to their scale) or nothing is timed
    parity_tol: float = 1e-4
    timeout_s: float = 3600.0

    def validate(self) -> PeerSettings:
        bad = [s for s in self.sizes if s not in PEER_SIZES]
        if bad or not self.sizes:
            full = " (full is 3.3 B parameters: lerobot's and our eager and compiled copies do not fit)"
            raise ValueError(
                f"peer bench sizes must be among {', '.join(PEER_SIZES)}; got {', '.join(bad) or 'none'}"
                + (full if "full" in bad else "")
            )
        assert set(PEER_SIZES) <= set(PRESETS)
        if not self.steps or any(n < 1 for n in self.steps):
            raise ValueError(f"denoising steps must be positive integers, got {self.steps}")
        for name in ("rounds", "per_round", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        return self


def resolve_lerobot_python(option: str | None = None) -> str:
    """The interpreter with lerobot: ``option``, else ``$PD_LEROBOT_PYTHON`` (one path), checked to
    exist and to import lerobot's pi0. Errors say what is missing and how to make one."""
    value, source = (option, "--lerobot-python") if option else (os.environ.get(ENV_VAR, ""), ENV_VAR)
    if not value:
        raise ValueError(
            f"the peer bench needs a Python interpreter with lerobot installed: pass --lerobot-python PATH "
            f"or set {ENV_VAR}=PATH; {HOW_TO_INSTALL}"
        )
    if os.pathsep in value and source == ENV_VAR:
        raise ValueError(
            f"{ENV_VAR} names several interpreters ({value}); choose the lerobot to compare with: --lerobot-python PATH"
        )
    found = shutil.which(value) or value
    if not Path(found).is_file() or not os.access(found, os.X_OK):
        raise FileNotFoundError(f"{source} {value}: no such executable; {HOW_TO_INSTALL}")
    probe = subprocess.run(
        [found, "-c", "import importlib.metadata as m, lerobot.policies.pi0.modeling_pi0; print(m.version('lerobot'))"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")},
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        raise ImportError(f"{source} {value} cannot import lerobot's pi0 ({last}); {HOW_TO_INSTALL}")
    return found


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cpu_count": os.cpu_count(), "platform": platform.platform()}


def run_peer(settings: PeerSettings, python: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the worker under ``python`` (an interpreter with lerobot) and return its results with the
    machine, the load and the settings. Raises ``RuntimeError`` with the worker's error when a size
    fails (a parity mismatch included)."""
    settings.validate()
    package = Path(__file__).resolve().parents[1]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="pd_peer_") as tmp:
        (Path(tmp) / "policydistill").symlink_to(package, target_is_directory=True)
        spec, out = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec.write_text(json.dumps({**asdict(settings), "sizes": list(settings.sizes), "steps": list(settings.steps)}))
        threads = str(settings.threads)
        env = {
            **os.environ,
            "PYTHONPATH": tmp,  # this package only: the lerobot interpreter keeps its own torch
            "OMP_NUM_THREADS": threads,
            "OPENBLAS_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        tail: deque[str] = deque(maxlen=40)
        proc = subprocess.Popen(
            [python, "-m", "policydistill.policies.peer_worker", str(spec), str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp,
        )
        try:
            assert proc.stderr is not None
            for line in proc.stderr:
                line = line.rstrip()
                tail.append(line)
                if line.startswith(LOG_PREFIX):
                    log(line[len(LOG_PREFIX) :])
            proc.wait(timeout=settings.timeout_s)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if not out.exists():
            raise RuntimeError(
                f"the peer bench process under {python} exited with status {proc.returncode} before writing "
                "results; its last output:\n" + "\n".join(tail)
            )
        result = json.loads(out.read_text())
    if "failed" in result:
        f = result["failed"]
        raise RuntimeError(f"peer bench, size {f['size']}: {f['error']}")
    result.update(
        machine=machine(),
        loadavg_1min_before_after=[load_before[0], os.getloadavg()[0]],
        settings={**asdict(settings), "sizes": list(settings.sizes), "steps": list(settings.steps)},
        driver_python=sys.executable,
        note=(
            "ours/lerobot < 1: ours faster. Both implementations ran in one process on the lerobot "
            "interpreter's torch, same weights, inputs and noise, interleaved rounds; times are processed "
            "inputs -> normalised padded chunk (lerobot PI0Pytorch.sample_actions, our sample_chunk)."
        ),
    )
    return result


__all__ = ["ENV_VAR", "PEER_SIZES", "PeerSettings", "machine", "resolve_lerobot_python", "run_peer"]
