"""Closed-loop evaluation: N episodes per task over a pool of env worker processes.

Seeds: episode i of task T resets with ``episode_seed(T, i, "eval", seed)`` (sha256 of
"eval/<seed>/<T>/<i>", see ``policydistill.seeding.episode_seed``): a pure function of the
task id, the episode index and the base seed, so a teacher and a student evaluated in separate
runs — with any worker count, batch size or task list — start from identical initial states.

Success of an episode = ``info["is_success"]`` at any step (the Meta-World envs terminate at
the first success, so its length is the steps to success). Rates come with Wilson 95% intervals.
Every episode also reports the smoothness of what was executed (``chunk_jump``, ``jerk``: see
``smoothness``).

Latency in the loop: with ``realtime`` set (a profile, see ``realtime``), chunk policies run
against a simulated clock in ``execution`` mode "sync", "async" or "rtc" (real-time chunking: the
policy is handed the actions it is committed to, ``sample_actions(..., rtc=RTCPrefix)``); steps
the robot spends holding while it waits count as episode steps, because the world moved on. ``realtime=None`` (the
default) is the usual evaluation, in which the world waits for the policy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections import deque
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..seeding import episode_seed
from .conventions import match_cameras, protocol_n_action_steps, reset_options, select_convention
from .metrics import summarize_episodes
from .policy import ChunkPolicy, to_numpy
from .smoothness import chunk_jump, jerk
from .workers import WorkerPool


@dataclass
class EvalConfig:
    tasks: list[str] | str = "metaworld/push-v3"  # env ids / suites / bare task names
    episodes: int = 10  # per task
    nfe: int | None = None  # denoising steps for chunk policies (None: the policy's own)
    mode: str | None = None  # sampling mode for chunk policies ("flowmap" | "diagonal" | ...)
    workers: int = 1  # env processes (0: in this process)
    batch_size: int | None = None  # concurrent episodes = policy batch (default: 4 per worker, >= 2)
    n_action_steps: int | None = None  # actions executed per chunk before re-planning (None: policy's own)
    seed: int = 0  # base of the episode seeds
    image_size: int | None = None  # camera size; None: the policy's input size (config.image_size) or 96
    max_episode_steps: int | None = None
    video_dir: str | None = None  # MP4s of the first `videos_per_task` episodes of each task
    videos_per_task: int = 2
    progress: bool = True
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    #: the envs' observation convention: "policydistill" | "lerobot" | None (chosen from the policy,
    #: see ``conventions.select_convention``)
    convention: str | None = None
    #: env camera -> policy camera; None: matched automatically (``conventions.match_cameras``)
    camera_map: dict[str, str] | None = None
    rank: int = 0  # shard the episodes over ranks (torchrun): this rank runs the
    world_size: int = 1  # episodes with (task index * episodes + i) % world_size == rank
    realtime: str | None = None  # latency profile (zero | measured | a device profile | a JSON file); None: off
    #: with realtime: "sync" (hold while waiting) | "async" (keep executing) | "rtc" (async, and the
    #: policy continues the actions committed while it computes)
    execution: str = "sync"
    #: each episode's executed actions, which were holds, where chunks start and (with realtime) its
    #: inferences, in episodes_detail: for analysis; off by default (they make the JSON large)
    keep_actions: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} out of range for world_size {self.world_size}")
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")
        if self.n_action_steps is not None and self.n_action_steps < 1:
            raise ValueError(f"n_action_steps must be >= 1, got {self.n_action_steps}")
        if self.nfe is not None and self.nfe < 1:
            raise ValueError(f"nfe must be >= 1, got {self.nfe}")
        from .realtime import check_execution

        check_execution(self.execution)

    @property
    def slots(self) -> int:
        return self.batch_size or max(2, 4 * max(self.workers, 1))


@dataclass
class _Slot:
    task: str
    index: int
    seed: int
    obs: dict[str, Any]
    instruction: str
    steps: int = 0
    success: bool = False
    steps_to_success: int | None = None
    queue: deque = field(default_factory=deque)
    frames: list[np.ndarray] | None = None
    done: bool = False
    init_hash: str = ""
    period_s: float | None = None
    executed: list[np.ndarray] = field(default_factory=list)
    held: list[bool] = field(default_factory=list)
    boundaries: list[int] = field(default_factory=list)  # where each chunk's first executed action is
    new_chunk: bool = False
    sched: Any = None  # SimulatedExecution with latency in the loop
    holds: int = 0
    action_dim: int = 0
    delays_ms: list[float] = field(default_factory=list)
    key: int = -1  # the pool slot it runs in


def _batch(slots: list[_Slot], camera_map: dict[str, str] | None = None) -> dict[str, Any]:
    cams = list(slots[0].obs["pixels"])
    if camera_map is not None:
        cams = [c for c in cams if c in camera_map]
    names = {c: (camera_map or {}).get(c, c) for c in cams}
    return {
        "pixels": {names[c]: np.stack([s.obs["pixels"][c] for s in slots]) for c in cams},
        "agent_pos": np.stack([s.obs["agent_pos"] for s in slots]).astype(np.float32),
        "task": [s.instruction for s in slots],
    }


def _configure(policy: Any, cfg: EvalConfig) -> None:
    """Settings of a select_action policy that has them (FlowPolicy-like)."""
    if cfg.nfe is not None and hasattr(policy, "nfe"):
        policy.nfe = cfg.nfe
    if cfg.mode is not None and hasattr(policy, "sampling_mode"):
        policy.sampling_mode = cfg.mode
    conf = getattr(policy, "config", None)
    if cfg.n_action_steps is not None and conf is not None and hasattr(conf, "n_action_steps"):
        conf.n_action_steps = cfg.n_action_steps


def _chunk_horizon(policy: Any, cfg: EvalConfig, chunk_len: int) -> int:
    if cfg.n_action_steps is not None and cfg.n_action_steps > chunk_len:
        raise ValueError(
            f"n_action_steps {cfg.n_action_steps} exceeds the policy's chunk of {chunk_len} actions: "
            f"execute at most {chunk_len} actions per chunk"
        )
    n = cfg.n_action_steps or getattr(getattr(policy, "config", None), "n_action_steps", None) or chunk_len
    return max(1, min(int(n), chunk_len))


class NonFiniteActions(ValueError):
    """The policy produced NaN/inf actions; nothing of them reached the simulator."""


def _check_finite_actions(actions: np.ndarray, slots: list[_Slot]) -> None:
    """NaN/inf actions are never stepped: MuJoCo would integrate them into a NaN state and the
    episode would simply read as a failure, hiding a broken policy behind a 0% success rate."""
    finite = np.isfinite(actions)
    if finite.all():
        return
    row = int(np.argwhere(~finite)[0][0])
    slot = slots[row]
    raise NonFiniteActions(
        f"the policy returned NaN or inf actions ({int((~finite).sum())} of {finite.size} values; first for "
        f"{slot.task} episode {slot.index} at step {slot.steps}); they were not sent to the simulator. Its weights "
        "overflow or were trained into NaN: evaluate an earlier checkpoint."
    )


def evaluate_policy(policy: Any, cfg: EvalConfig) -> dict[str, Any]:
    """Run ``cfg.episodes`` episodes of every task; returns the results dict (JSON-serialisable):
    success_rate, success_ci95, steps_to_success, episode_length, per_task {...}, episodes_detail,
    env_steps, seconds, steps_per_second, policy_calls, config."""
    from policydistill.envs import expand

    tasks = expand(cfg.tasks)
    everything = [(t, i, episode_seed(t, i, "eval", cfg.seed)) for t in tasks for i in range(cfg.episodes)]
    todo = deque(e for k, e in enumerate(everything) if k % cfg.world_size == cfg.rank)
    total = len(todo)
    if total == 0:
        raise ValueError(f"rank {cfg.rank} of {cfg.world_size} has no episodes: use more episodes or fewer ranks")
    convention, convention_reason = select_convention(policy, tasks, cfg.convention)
    cfg = dataclasses.replace(
        cfg, n_action_steps=protocol_n_action_steps(policy, tasks, convention, cfg.n_action_steps)
    )
    if convention == "lerobot":
        # lerobot's envs render at their own sizes (480 px Meta-World, 360 px LIBERO): the policy
        # resizes, as it does under lerobot-eval
        image_size = cfg.image_size
        env_kwargs = {"convention": "lerobot", **cfg.env_kwargs}
        if image_size is not None:
            env_kwargs["image_size"] = int(image_size)
    else:
        # render at the policy's own input size unless told: demonstrations are generated at that size
        # (policydistill train), so training and evaluation frames then match pixel for pixel
        image_size = cfg.image_size or getattr(getattr(policy, "config", None), "image_size", None) or 96
        env_kwargs = {"image_size": int(image_size), **cfg.env_kwargs}
    policy_cameras = list(getattr(getattr(policy, "config", None), "cameras", None) or [])
    camera_map: dict[str, str] | None = None
    rendered_size: int | None = None
    if cfg.max_episode_steps is not None:
        env_kwargs["max_episode_steps"] = cfg.max_episode_steps
    chunked = isinstance(policy, ChunkPolicy)
    if not chunked and not hasattr(policy, "select_action"):
        raise TypeError(
            f"{type(policy).__name__} has neither sample_actions(obs, steps, mode) nor "
            "select_action(obs): see policydistill.eval.policy"
        )
    if not chunked:
        _configure(policy, cfg)
    profile, clock = None, None
    if cfg.realtime is not None:
        from .realtime import Clock, load_profile

        if not chunked:
            raise TypeError(
                f"--realtime needs a chunk policy (sample_actions(obs, steps, mode)); {type(policy).__name__} only "
                "has select_action"
            )
        if cfg.execution == "rtc":
            check_rtc_policy(policy)
        profile = load_profile(cfg.realtime)
        clock = Clock(profile)
    records: list[dict[str, Any]] = []
    counters = {"env_steps": 0, "policy_calls": 0}
    video_dir = Path(cfg.video_dir) if cfg.video_dir else None
    t0 = time.perf_counter()
    progress = _Progress(total, cfg.progress)
    n_slots = min(cfg.slots, total)

    def start(pool: WorkerPool, assignments: dict[int, tuple[str, int, int]]) -> dict[int, _Slot]:
        nonlocal camera_map, rendered_size
        res = pool.reset({s: (t, seed, reset_options(t, i, convention)) for s, (t, i, seed) in assignments.items()})
        if rendered_size is None:
            rendered_size = int(next(iter(next(iter(res.values()))[0]["pixels"].values())).shape[0])
        if camera_map is None and policy_cameras:  # once, from the first observation, before any action
            first = next(iter(res.values()))[0]["pixels"]
            camera_map = match_cameras(list(first), policy_cameras, cfg.camera_map)
        out = {}
        for s, (t, i, seed) in assignments.items():
            obs, info = res[s]
            frames = [] if video_dir is not None and i < cfg.videos_per_task else None
            # a fingerprint of the initial state: equal across runs <=> identical initial states
            init_hash = hashlib.sha1(np.asarray(obs["agent_pos"], np.float32).tobytes()).hexdigest()[:12]
            out[s] = _Slot(
                t,
                i,
                seed,
                obs,
                info["task"],
                frames=frames,
                init_hash=init_hash,
                period_s=info.get("control_period_s"),
                key=s,
            )
            if clock is not None:
                clock.start_episode(s, seed)
            if frames is not None:
                frames.append(next(iter(obs["pixels"].values())))
        return out

    def finish(slot: _Slot) -> None:
        slot.done = True
        rec = {
            "task": slot.task,
            "index": slot.index,
            "seed": slot.seed,
            "initial_state": slot.init_hash,
            "success": slot.success,
            "length": slot.steps,
            "steps_to_success": slot.steps_to_success,
            "chunk_jump": chunk_jump(slot.executed, slot.boundaries, slot.held),
            "jerk": jerk(slot.executed),
        }
        if profile is not None:
            rec["hold_steps"] = slot.holds
            rec["chunks"] = len(slot.delays_ms)
            rec["inference_ms"] = float(np.mean(slot.delays_ms)) if slot.delays_ms else None
            if cfg.execution == "rtc":
                rec["rtc_late_chunks"] = sum(c.late for c in slot.sched.chunks) if slot.sched else 0
        if cfg.keep_actions:
            rec["actions"] = [a.tolist() for a in slot.executed]
            rec["held"] = list(slot.held)
            rec["chunk_starts"] = list(slot.boundaries)
            if slot.sched is not None:
                rec["inferences"] = [dataclasses.asdict(c) for c in slot.sched.chunks]
        if slot.frames is not None and video_dir is not None:
            from .video import write_mp4

            name = f"{slot.task.replace('/', '_')}_ep{slot.index:03d}_{'success' if slot.success else 'fail'}.mp4"
            rec["video"] = str(write_mp4(video_dir / name, slot.frames))
        records.append(rec)
        progress.advance(slot.success)

    def apply(
        pool: WorkerPool, slots: dict[int, _Slot], actions: dict[int, np.ndarray], held: Collection[int] = ()
    ) -> list[int]:
        """Step the given slots (``held``: those sending a hold); returns the slots whose episode just ended."""
        for s, a in actions.items():
            slot = slots[s]
            if slot.new_chunk:
                slot.boundaries.append(len(slot.executed))
            slot.new_chunk = False
            slot.executed.append(np.asarray(a, np.float32))
            slot.held.append(s in held)
        # A chunk policy looks at a fraction of the steps: the others skip the camera (``observed``
        # renders the current state when the policy asks); episodes being filmed render every step.
        render = True if not chunked else {s for s in actions if slots[s].frames is not None}
        res = pool.step(actions, render=render)
        ended = []
        for s, (obs, _, terminated, truncated, info) in res.items():
            slot = slots[s]
            slot.obs, slot.steps = obs, slot.steps + 1
            counters["env_steps"] += 1
            if slot.frames is not None:
                slot.frames.append(next(iter(obs["pixels"].values())))
            if info["is_success"] and not slot.success:
                slot.success, slot.steps_to_success = True, slot.steps
            if terminated or truncated:
                finish(slot)
                ended.append(s)
        return ended

    def observed(pool: WorkerPool, batch_slots: list[_Slot]) -> list[_Slot]:
        """The slots with pixels of their current state (rendered now where a step skipped them)."""
        missing = [sl.key for sl in batch_slots if "pixels" not in sl.obs]
        if missing:
            for key, obs in pool.observe(missing).items():
                next(sl for sl in batch_slots if sl.key == key).obs = obs
        return batch_slots

    with progress, WorkerPool(n_slots, cfg.workers, env_kwargs) as pool:
        if profile is not None:
            # camera_map is settled by the first reset, inside the loop: read it when a batch is built
            _realtime_loop(
                policy,
                cfg,
                profile,
                clock,
                pool,
                start,
                apply,
                todo,
                n_slots,
                counters,
                lambda batch_slots: _batch(observed(pool, batch_slots), camera_map),
            )
        elif chunked:
            slots = start(pool, {s: todo.popleft() for s in range(n_slots)})
            while slots:
                need = [s for s, sl in slots.items() if not sl.queue]
                if need:
                    chunk = to_numpy(
                        policy.sample_actions(
                            _batch(observed(pool, [slots[s] for s in need]), camera_map), steps=cfg.nfe, mode=cfg.mode
                        )
                    )
                    if chunk.ndim != 3 or chunk.shape[0] != len(need):
                        raise ValueError(f"sample_actions returned shape {chunk.shape}; expected (B={len(need)}, H, A)")
                    counters["policy_calls"] += 1
                    _check_finite_actions(chunk, [slots[s] for s in need])
                    h = _chunk_horizon(policy, cfg, chunk.shape[1])
                    for row, s in enumerate(need):
                        slots[s].queue.extend(chunk[row, :h])
                        slots[s].new_chunk = True
                ended = apply(pool, slots, {s: sl.queue.popleft() for s, sl in slots.items()})
                refill = {s: todo.popleft() for s in ended if todo}
                for s in ended:
                    del slots[s]
                if refill:
                    slots.update(start(pool, refill))
        else:
            while todo:
                wave = [todo.popleft() for _ in range(min(n_slots, len(todo)))]
                policy.reset()
                slots = start(pool, dict(enumerate(wave)))
                order = sorted(slots)
                while not all(sl.done for sl in slots.values()):
                    act = to_numpy(policy.select_action(_batch([slots[s] for s in order], camera_map)))
                    counters["policy_calls"] += 1
                    if act.ndim != 2 or act.shape[0] != len(order):
                        raise ValueError(f"select_action returned shape {act.shape}; expected (B={len(order)}, A)")
                    _check_finite_actions(act, [slots[s] for s in order])
                    apply(pool, slots, {s: act[row] for row, s in enumerate(order) if not slots[s].done})
    seconds = time.perf_counter() - t0
    records.sort(key=lambda r: (tasks.index(r["task"]), r["index"]))
    out = summarize_episodes(records)
    out.update(
        {
            "tasks": tasks,
            "nfe": cfg.nfe,
            "mode": cfg.mode,
            "n_action_steps": cfg.n_action_steps,
            "episodes_per_task": cfg.episodes,
            "episodes_detail": records,
            "seconds": seconds,
            "env_steps": counters["env_steps"],
            "steps_per_second": counters["env_steps"] / max(seconds, 1e-9),
            "policy_calls": counters["policy_calls"],
            "interface": "chunk" if chunked else "select_action",
            "realtime": None if profile is None else {"execution": cfg.execution, **profile.describe()},
            "image_size": int(image_size) if image_size is not None else rendered_size,
            "convention": convention,
            "convention_reason": convention_reason,
            "camera_map": camera_map,
            "config": {k: v for k, v in asdict(cfg).items() if k != "progress"},
        }
    )
    out["episodes"] = len(records)
    return out


def _policy_nfe(policy: Any, cfg: EvalConfig) -> int | None:
    return cfg.nfe or getattr(policy, "nfe", None) or getattr(getattr(policy, "config", None), "num_steps", None)


def supports_rtc(policy: Any) -> bool:
    """Whether ``policy.sample_actions`` takes the ``rtc`` argument (``policies.rtc.RTCPrefix``)."""
    import inspect

    try:
        return "rtc" in inspect.signature(policy.sample_actions).parameters
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return False


def check_rtc_policy(policy: Any) -> None:
    """``execution="rtc"`` needs a policy that continues committed actions: a clear refusal otherwise."""
    if not supports_rtc(policy):
        raise ValueError(
            f"execution mode 'rtc' hands the policy the actions the robot is committed to "
            f"(sample_actions(obs, steps, mode, rtc=RTCPrefix(...))), but {type(policy).__name__}.sample_actions "
            "takes no rtc argument. Evaluate it with --execution async, or use a flow policy checkpoint (pi0, "
            "pi0.5, SmolVLA, a distilled student; trained or distilled with --rtc-max-delay for a hard prefix)"
        )


def _realtime_loop(
    policy: Any,
    cfg: EvalConfig,
    profile: Any,
    clock: Any,
    pool: WorkerPool,
    start: Any,
    apply: Any,
    todo: deque,
    n_slots: int,
    counters: dict[str, int],
    batch: Any = _batch,
) -> None:
    """Chunk episodes against a simulated clock: each slot's tick is its env step count, and the
    scheduling (which action runs when, what is dropped as stale, what is committed) is
    ``robots.chunking``'s.

    The delay of an inference is settled before the call, because ``rtc`` must tell the policy how
    many actions will run meanwhile: a model profile's delay is drawn first (the same seeded draw
    in every mode), ``measured`` expects the slot's latency estimate and then applies the time the
    call really took (a chunk arriving later than expected leaves a gap the policy was not told of,
    counted in ``rtc_late_chunks``)."""
    from policydistill.robots.chunking import Committed, SimulatedExecution, hold_action

    from .realtime import timed

    nfe = _policy_nfe(policy, cfg)
    if profile.kind == "model" and nfe is None:
        raise ValueError(f"the latency profile {profile.name!r} depends on the NFE: pass --nfe")
    rtc = cfg.execution == "rtc"

    def prefix(batch_slots: list[_Slot], expected_s: list[float]) -> list[Committed | None]:
        """rtc: what each row's inference is committed to (None: nothing queued yet, first chunk)."""
        if not rtc:
            return [None] * len(batch_slots)
        return [
            None if sl.sched is None else sl.sched.rtc_prefix(sl.steps, e) for sl, e in zip(batch_slots, expected_s)
        ]

    def rtc_arg(committed: list[Committed | None]) -> Any:
        """The batch's ``RTCPrefix`` (rows padded to the longest queue; lengths say how many are
        real); None when no row has anything queued."""
        if not any(c is not None and len(c) for c in committed):
            return None
        from policydistill.policies.rtc import RTCPrefix

        queued = [np.stack(c.actions) if c is not None and len(c) else None for c in committed]
        real = [q for q in queued if q is not None]
        actions = np.zeros((len(queued), max(len(q) for q in real), real[0].shape[-1]), np.float32)
        for row, q in enumerate(queued):
            if q is not None:
                actions[row, : len(q)] = q
        return RTCPrefix(
            actions,
            np.array([c.delay if c is not None else 0 for c in committed], np.int64),
            np.array([len(c) if c is not None else 0 for c in committed], np.int64),
        )

    def sample(batch_slots: list[_Slot], committed: list[Committed | None]) -> tuple[np.ndarray, float]:
        kwargs: dict[str, Any] = {"steps": cfg.nfe, "mode": cfg.mode}
        if rtc:
            arg = rtc_arg(committed)
            if arg is not None:
                kwargs["rtc"] = arg
        out, seconds = timed(policy.sample_actions, batch(batch_slots), **kwargs)
        chunk = to_numpy(out)
        if chunk.ndim != 3 or chunk.shape[0] != len(batch_slots):
            raise ValueError(f"sample_actions returned shape {chunk.shape}; expected (B={len(batch_slots)}, H, A)")
        counters["policy_calls"] += 1
        _check_finite_actions(chunk, batch_slots)
        return chunk, seconds

    def submit(slot: _Slot, actions: np.ndarray, delay_s: float, committed: Committed | None) -> None:
        if slot.sched is None:
            if not slot.period_s:
                raise ValueError(f"{slot.task} does not say its control rate: latency in the loop needs it")
            h = _chunk_horizon(policy, cfg, actions.shape[0])
            # async / rtc: the whole chunk may run while the next one computes (re-planning every h)
            slot.sched = SimulatedExecution(h, cfg.execution, slot.period_s, horizon=int(actions.shape[0]))
        slot.action_dim = int(actions.shape[-1])
        slot.delays_ms.append(delay_s * 1e3)
        # nothing queued (the first chunk, or all of the last one arrived stale): nothing committed
        slot.sched.submit(
            actions, slot.steps, delay_s, committed.delay if committed is not None and len(committed) else None
        )

    slots = start(pool, {s: todo.popleft() for s in range(n_slots)})
    while slots:
        for sl in slots.values():
            if sl.sched is not None:
                sl.sched.deliver(sl.steps)
        need = [s for s, sl in slots.items() if sl.sched is None or sl.sched.due(sl.steps)]
        if need and clock.measured:  # one observation per call: its time is one robot's latency
            for s in need:
                sl = slots[s]
                expected = sl.sched.estimate.seconds if sl.sched is not None else 0.0
                committed = prefix([sl], [expected])
                chunk, seconds = sample([sl], committed)
                submit(sl, chunk[0], clock.delay_s(s, nfe or 0, seconds), committed[0])
        elif need:
            # drawn before the call: rtc tells the policy the delay, and the draw order is the same
            # in every mode, so each mode sees the same delays
            delays = [clock.delay_s(s, nfe or 0) for s in need]
            committed = prefix([slots[s] for s in need], delays)
            chunk, _ = sample([slots[s] for s in need], committed)
            for row, s in enumerate(need):
                submit(slots[s], chunk[row], delays[row], committed[row])
        actions, held = {}, set()
        for s, sl in slots.items():
            a = sl.sched.next_action(sl.steps)
            if a is None:
                a = hold_action(sl.executed[-1] if sl.executed else None, sl.action_dim)
                sl.holds += 1
                held.add(s)
            elif sl.sched.log[-1].new_chunk:
                sl.new_chunk = True
            actions[s] = a
        ended = apply(pool, slots, actions, held)
        refill = {s: todo.popleft() for s in ended if todo}
        for s in ended:
            del slots[s]
        if refill:
            slots.update(start(pool, refill))


def merge_results(shards: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine the results of ranks (same config, different shards) into one results dict."""
    records = sorted(
        (r for sh in shards for r in sh["episodes_detail"]),
        key=lambda r: (shards[0]["tasks"].index(r["task"]), r["index"]),
    )
    out = dict(shards[0])
    out.update(summarize_episodes(records))
    out.update(
        {
            "episodes_detail": records,
            "episodes": len(records),
            "env_steps": sum(sh["env_steps"] for sh in shards),
            "policy_calls": sum(sh["policy_calls"] for sh in shards),
            "seconds": max(sh["seconds"] for sh in shards),
        }
    )
    out["steps_per_second"] = out["env_steps"] / max(out["seconds"], 1e-9)
    return out


class _Progress:
    """A rich progress bar over episodes (or nothing), usable as a context manager."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.ok, self.done = total, enabled, 0, 0
        self._bar: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("[bold]eval"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
            )
            self._bar.__enter__()
            self._id = self._bar.add_task("eval", total=self.total, info="")
        return self

    def advance(self, success: bool) -> None:
        self.done += 1
        self.ok += int(success)
        if self._bar is not None:
            self._bar.update(self._id, advance=1, info=f"success {self.ok}/{self.done}")

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
