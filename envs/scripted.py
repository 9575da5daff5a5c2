"""Scripted Meta-World demonstrations, unimodal and multimodal.

Meta-World's scripted experts (``metaworld.policies``) are deterministic functions of the state:
one way to do each task. Real teleoperated data is multimodal, and distillation only shows its
worth when the naive 1-step map averages modes into a failure. So the
generator has multimodal experts whose mode is drawn per episode at random, independent of the
observation, and whose AVERAGE fails:

* wall tasks (``push-wall-v3``, ``pick-place-wall-v3``, ``reach-wall-v3``): the object (or the
  hand) goes around the wall LOW, on the left or on the right, through two waypoints at
  x = -0.10 or x = +0.30 (the wall spans x in [-0.02, 0.22] at y = 0.75, 12 cm high). The mean of
  the two routes heads for x = 0.10, the middle of the wall, with the object jammed against it.
* free-space tasks (``push-v3``, ``pick-place-v3``): the object is carried along an arc that
  bulges 10 cm to the left or to the right of the straight line (two via-points). A policy that
  learns the mean of the two arcs would go straight, which succeeds: these modes show up in the
  distribution of action chunks rather than in success. (The per-step mean executor below still
  fails here, because each mode waits for its own via-point, which the averaged hand never
  reaches.)

* moving-goal tasks (``reach-moving-v3``, ``push-moving-v3``, see ``metaworld_moving``): the hand
  (or the carried puck) approaches through a via-point 10 cm left or right of the straight line,
  then tracks the moving goal: proportional control plus the goal's own displacement of the last
  step as feed-forward (privileged: the goal position comes from the simulator), so it does not lag
  behind a goal moving at up to 0.23 m/s. ``multimodal=False`` goes straight (mode "direct").

Every multimodal expert also exposes the per-step ``mean`` executor (``MeanOfModes``) used to
measure that the average fails. Experts read the 21-D ``state="full"`` vector of
``policydistill.envs`` (privileged: object and goal positions from the simulator).
Design and measurements: docs/multimodal_demos.md.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data.episode import Episode
from ..data.errors import DatasetError
from ..seeding import episode_seed

FPS = 80.0  # Meta-World: 5 substeps of 2.5 ms per env step
WALL_Y = 0.75  # the wall's centre line in the three wall tasks (it spans x in [-0.02, 0.22])
SIDES = ("left", "right")


def _task_name(task: str) -> str:
    return task.split("/", 1)[1] if task.startswith("metaworld/") else task


def full_to_raw(state: np.ndarray) -> np.ndarray:
    """21-D full state -> Meta-World's 39-D observation (the previous frame, which no scripted
    expert reads, is filled with the current one)."""
    s = np.asarray(state, dtype=np.float64)
    if s.shape[-1] != 21:
        raise ValueError(
            f"scripted experts need the 21-D state of state='full' envs, got {s.shape[-1]}-D; "
            "make the env with state='full' (the default)"
        )
    return np.concatenate([s[:18], s[:18], s[18:21]])


def _move(hand: np.ndarray, target: np.ndarray, p: float) -> np.ndarray:
    return np.clip(p * (np.asarray(target) - hand), -1.0, 1.0)


# ------------------------------------------------------------------------------------- experts
class Expert:
    """A scripted expert: ``reset(rng)`` starts an episode (and draws its mode), ``act(state)``."""

    modes: tuple[str, ...] = ("default",)
    mode: str = "default"

    def reset(self, rng: np.random.Generator | None = None, mode: str | None = None) -> None:
        if mode is not None and mode not in self.modes:
            raise ValueError(f"mode {mode!r} not in {self.modes}")
        self.mode = mode or (self.modes[int(rng.integers(len(self.modes)))] if rng is not None else self.modes[0])

    def act(self, state: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class MetaWorldExpert(Expert):
    """Meta-World's own scripted policy for the task (one mode)."""

    def __init__(self, task: str) -> None:
        from metaworld.policies import ENV_POLICY_MAP

        name = _task_name(task)
        if name not in ENV_POLICY_MAP:
            raise ValueError(f"Meta-World has no scripted expert for {name!r}")
        self.policy = ENV_POLICY_MAP[name]()

    def act(self, state: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():  # "Constant(s) may be too high": the env clips anyway
            warnings.simplefilter("ignore")
            return np.clip(self.policy.get_action(full_to_raw(state)), -1.0, 1.0).astype(np.float32)


@dataclass
class _Grasp:
    """Meta-World's approach-and-grasp logic for a puck (push / pick-place family)."""

    xy_tol: float  # hand over the object within this XY distance before descending
    above: float  # approach height above the object
    down: float  # descend to object z + down
    effort: float  # gripper effort once around the object
    only_on_table: bool  # pick-place: descend only while the object is still on the table

    def target(self, hand: np.ndarray, obj: np.ndarray, carrying: bool = False) -> np.ndarray | None:
        """Where to go while grasping, or None once grasped (transport may start).

        ``carrying``: hysteresis — a dragged object lags the hand by 1-2 cm, which must not
        send the expert back to re-grasp (Meta-World's straight-line experts never notice)."""
        puck = obj + np.array([-0.005, 0.0, 0.0])
        if carrying:
            if np.linalg.norm(hand[:2] - puck[:2]) < 0.045 and abs(hand[2] - puck[2]) < 0.08:
                return None
        if np.linalg.norm(hand[:2] - puck[:2]) > self.xy_tol:
            return puck + np.array([0.0, 0.0, self.above])
        if abs(hand[2] - puck[2]) > 0.04 and (not self.only_on_table or puck[2] < 0.03):
            return puck + np.array([0.0, 0.0, self.down])
        return None

    def gripper(self, hand: np.ndarray, obj: np.ndarray, carrying: bool = False) -> float:
        tol = 0.045 if carrying else self.xy_tol
        if np.linalg.norm(hand[:2] - obj[:2]) > tol or abs(hand[2] - obj[2]) > 0.1:
            return 0.0
        return self.effort


PUSH_GRASP = _Grasp(xy_tol=0.02, above=0.2, down=0.03, effort=0.6, only_on_table=False)
PICK_GRASP = _Grasp(xy_tol=0.015, above=0.1, down=0.03, effort=0.9, only_on_table=True)


class WaypointExpert(Expert):
    """Grasp (if the task has an object), then follow mode-dependent waypoints, then the goal.

    Waypoints are passed in order: the next one becomes active once the hand is within
    ``reach_tol`` of the current one (XY), so the route is a property of the episode's mode."""

    modes = SIDES
    reach_tol = 0.02

    def __init__(self, task: str, grasp: _Grasp | None, p: float = 10.0) -> None:
        self.task = _task_name(task)
        self.grasp, self.p = grasp, p
        self._next = 0
        self._route: list[np.ndarray] = []
        self._carrying = False

    def reset(self, rng: np.random.Generator | None = None, mode: str | None = None) -> None:
        super().reset(rng, mode)
        self._next = 0
        self._route = []
        self._carrying = False

    def route(self, hand: np.ndarray, obj: np.ndarray, goal: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def act(self, state: np.ndarray) -> np.ndarray:
        s = np.asarray(state, dtype=np.float64)
        hand, obj, goal = s[0:3], s[4:7], s[18:21]
        grip = 0.0
        target = None
        if self.grasp is not None:
            target = self.grasp.target(hand, obj, self._carrying)
            grip = self.grasp.gripper(hand, obj, self._carrying)
            self._carrying = target is None
        if target is None:
            if not self._route:  # fixed when transport starts: from where the object is now
                self._route = self.route(hand, obj, goal)
            while (
                self._next < len(self._route)
                and np.linalg.norm(hand[:2] - self._route[self._next][:2]) < self.reach_tol
            ):
                self._next += 1
            target = self._route[self._next] if self._next < len(self._route) else goal
        action = np.zeros(4, np.float32)
        action[:3] = _move(hand, target, self.p)
        action[3] = grip
        return action


class WallDetourExpert(WaypointExpert):
    """Around the wall, low, on the left (x = -0.10) or the right (x = +0.30)."""

    side_x = {"left": -0.10, "right": 0.30}
    before_y, after_y = 0.66, 0.84

    def __init__(self, task: str) -> None:
        name = _task_name(task)
        grasp = {"push-wall-v3": PUSH_GRASP, "pick-place-wall-v3": PICK_GRASP, "reach-wall-v3": None}[name]
        super().__init__(name, grasp, p=10.0)
        # the carry height keeps the object (or the hand) below the wall's top (0.12 m)
        self.z = {"push-wall-v3": None, "pick-place-wall-v3": 0.07, "reach-wall-v3": 0.08}[name]

    def route(self, hand: np.ndarray, obj: np.ndarray, goal: np.ndarray) -> list[np.ndarray]:
        x = self.side_x[self.mode]
        z = hand[2] if self.z is None else self.z
        after_z = hand[2] if self.z is None else goal[2]
        return [
            np.array([x, self.before_y, z]),
            np.array([x, self.after_y, z]),
            np.array([goal[0], self.after_y + 0.02, after_z]),
        ]


class ArcExpert(WaypointExpert):
    """Carry the object to the goal along an arc bulging 10 cm left or right of the straight line."""

    bulge = {"left": -0.10, "right": 0.10}

    def __init__(self, task: str) -> None:
        name = _task_name(task)
        super().__init__(name, {"push-v3": PUSH_GRASP, "pick-place-v3": PICK_GRASP}[name], p=10.0)
        self.reach_tol = 0.03

    def route(self, hand: np.ndarray, obj: np.ndarray, goal: np.ndarray) -> list[np.ndarray]:
        dx = self.bulge[self.mode]
        z = hand[2] if self.task == "push-v3" else max(hand[2], 0.08)
        a = np.array([obj[0] + dx, obj[1] + 0.35 * (goal[1] - obj[1]), z])
        b = np.array([goal[0] + dx, obj[1] + 0.75 * (goal[1] - obj[1]), z])
        return [a, b]


ACTION_SCALE = 0.01  # Meta-World moves the hand by action × 1 cm per step


class _GoalTracking:
    """Feed-forward on a moving goal: adds the goal's displacement over the last step (in action
    units) once the expert heads for the goal itself, so tracking has no steady-state lag."""

    def _setup_tracking(self, multimodal: bool) -> None:
        self.reach_tol = 0.03
        if not multimodal:
            self.modes = ("direct",)
        self._reset_tracking()

    def _reset_tracking(self) -> None:
        self._prev_goal: np.ndarray | None = None

    def reset(self, rng: np.random.Generator | None = None, mode: str | None = None) -> None:
        super().reset(rng, mode)  # the expert's own reset (the next class in the MRO)
        self._reset_tracking()

    def _feed_forward(self, action: np.ndarray, state: np.ndarray, on_goal: bool) -> np.ndarray:
        goal = np.asarray(state[18:21], dtype=np.float64)
        prev, self._prev_goal = self._prev_goal, goal
        if on_goal and prev is not None:
            action = action.copy()
            action[:3] = np.clip(action[:3] + (goal - prev) / ACTION_SCALE, -1.0, 1.0)
        return action


class MovingReachExpert(_GoalTracking, WaypointExpert):
    """Reach a moving goal: through a via-point bulging 10 cm left or right (or straight), then track."""

    modes = SIDES
    bulge = {"left": -0.10, "right": 0.10, "direct": 0.0}

    def __init__(self, task: str, multimodal: bool = True) -> None:
        super().__init__(_task_name(task), None, p=10.0)
        self._setup_tracking(multimodal)

    def route(self, hand: np.ndarray, obj: np.ndarray, goal: np.ndarray) -> list[np.ndarray]:
        if self.mode == "direct":
            return []
        mid = 0.5 * (hand + goal)
        return [np.array([mid[0] + self.bulge[self.mode], mid[1], mid[2]])]

    def act(self, state: np.ndarray) -> np.ndarray:
        action = super().act(state)
        return self._feed_forward(action, np.asarray(state), self._next >= len(self._route))


class MovingPushExpert(_GoalTracking, ArcExpert):
    """Push onto a moving goal: grasp, carry along an arc bulging left or right (or straight), then
    track the goal with the puck."""

    modes = SIDES

    def __init__(self, task: str, multimodal: bool = True) -> None:
        WaypointExpert.__init__(self, _task_name(task), PUSH_GRASP, p=10.0)
        self._setup_tracking(multimodal)

    def route(self, hand: np.ndarray, obj: np.ndarray, goal: np.ndarray) -> list[np.ndarray]:
        if self.mode == "direct":
            return []
        dx = {"left": -0.10, "right": 0.10}[self.mode]
        return [np.array([obj[0] + dx, obj[1] + 0.5 * (goal[1] - obj[1]), hand[2]])]

    def act(self, state: np.ndarray) -> np.ndarray:
        action = super().act(state)
        on_goal = self._carrying and self._next >= len(self._route) and bool(self._route or self.mode == "direct")
        return self._feed_forward(action, np.asarray(state), on_goal)


#: experts of the moving-goal tasks, which Meta-World has none for: (task) -> expert, multimodal or not
TRACKING_EXPERTS: dict[str, Callable[..., Expert]] = {
    "reach-moving-v3": MovingReachExpert,
    "push-moving-v3": MovingPushExpert,
}

MULTIMODAL_EXPERTS: dict[str, Callable[[str], Expert]] = {
    "push-wall-v3": WallDetourExpert,
    "pick-place-wall-v3": WallDetourExpert,
    "reach-wall-v3": WallDetourExpert,
    "push-v3": ArcExpert,
    "pick-place-v3": ArcExpert,
    **TRACKING_EXPERTS,
}


class MeanOfModes(Expert):
    """Executes the average of every mode's action at each step (each mode tracks its own
    waypoints on the shared state): what a policy that regresses to the mean would do."""

    modes = ("mean",)

    def __init__(self, task: str) -> None:
        factory = MULTIMODAL_EXPERTS[_task_name(task)]
        self.experts = []
        for m in factory(task).modes:
            e = factory(task)
            e.reset(mode=m)
            self.experts.append(e)

    def reset(self, rng: np.random.Generator | None = None, mode: str | None = None) -> None:
        self.mode = "mean"
        for e in self.experts:
            e.reset(mode=e.mode)

    def act(self, state: np.ndarray) -> np.ndarray:
        return np.mean([e.act(state) for e in self.experts], axis=0).astype(np.float32)


def make_expert(task: str, multimodal: bool = True) -> Expert:
    """The multimodal expert where one exists (and ``multimodal``), else Meta-World's own."""
    name = _task_name(task)
    if name in TRACKING_EXPERTS:
        return TRACKING_EXPERTS[name](name, multimodal)
    if multimodal and name in MULTIMODAL_EXPERTS:
        return MULTIMODAL_EXPERTS[name](name)
    return MetaWorldExpert(name)


# ------------------------------------------------------------------------------- fork statistic
def fork_coordinate(task: str, states: np.ndarray) -> float | None:
    """The lateral (x) hand coordinate where the modes split: at the wall line (y = 0.75) for
    the wall tasks; for the arc tasks half-way between the object's start and the goal, minus
    the straight line's x there. None for tasks without a fork (or if the hand never got there)."""
    name = _task_name(task)
    hand_y, hand_x = states[:, 1], states[:, 0]
    if name in ("push-wall-v3", "pick-place-wall-v3", "reach-wall-v3"):
        y_fork = WALL_Y
        x_ref = 0.0
    elif name == "reach-moving-v3":  # half-way between the hand's start and the goal's
        y_fork = 0.5 * (states[0, 1] + states[0, 19])
        x_ref = 0.5 * (states[0, 0] + states[0, 18])
    elif name in ("push-v3", "pick-place-v3", "push-moving-v3"):
        # relative to the straight line from the object's start to the goal, half-way along it
        y_fork = 0.5 * (states[0, 5] + states[0, 19])
        x_ref = 0.5 * (states[0, 4] + states[0, 18])
    else:
        return None
    idx = np.nonzero(hand_y >= y_fork)[0]
    return float(hand_x[idx[0]] - x_ref) if len(idx) else None


def bimodality_coefficient(x: np.ndarray) -> float:
    """Sarle's bimodality coefficient (skew² + 1) / (excess kurtosis + 3(n-1)²/((n-2)(n-3))).
    A uniform distribution gives 0.555; above it suggests two modes (two separated clusters → 1)."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n < 4 or x.std() == 0:
        return float("nan")
    z = (x - x.mean()) / x.std()
    g = np.mean(z**3) * np.sqrt(n * (n - 1)) / (n - 2)
    k = np.mean(z**4) - 3.0
    k = ((n + 1) * k + 6) * (n - 1) / ((n - 2) * (n - 3))
    return float((g**2 + 1) / (k + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3))))


def multimodality_summary(episodes: list[Episode] | list[dict[str, Any]]) -> dict[str, Any]:
    """Per task: episodes per mode, the fork coordinate per mode, its bimodality coefficient and
    the share of episodes within 2 cm of the pooled mean (≈ 0 when the middle is empty).
    Accepts Episodes or episode records ({"task", "meta"}) as the stores keep them."""
    by_task: dict[str, dict[str, list[float | None]]] = {}
    for ep in episodes:
        task, meta = (ep.task, ep.meta) if isinstance(ep, Episode) else (ep["task"], ep["meta"])
        by_task.setdefault(task, {}).setdefault(str(meta.get("mode", "default")), []).append(meta.get("fork_x"))
    out: dict[str, Any] = {}
    for task, modes in by_task.items():
        xs = np.array([x for v in modes.values() for x in v if x is not None], dtype=np.float64)
        row: dict[str, Any] = {"episodes_per_mode": {m: len(v) for m, v in modes.items()}}
        row["fork_x_per_mode"] = {
            m: {"mean": float(np.mean(v)), "std": float(np.std(v))}
            for m, vals in modes.items()
            if (v := [x for x in vals if x is not None])
        }
        if len(xs) >= 4:
            row["fork_x_bimodality"] = bimodality_coefficient(xs)
            row["fork_x_share_near_mean"] = float(np.mean(np.abs(xs - xs.mean()) < 0.02))
        out[task] = row
    return out


# --------------------------------------------------------------------------------- generation
@dataclass
class GenerateConfig:
    task: str = "metaworld/push-v3"
    episodes: int = 50
    multimodal: bool = True
    action_noise: float = 0.1  # std of Gaussian noise added to the xyz action (executed and recorded)
    seed: int = 0  # base of the per-episode reset seeds (split "demo")
    image_size: int = 96
    max_attempts_factor: float = 3.0  # give up after episodes * factor attempts
    render_images: bool = True

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")
        if not 0.0 <= self.action_noise <= 1.0:
            raise ValueError(f"action_noise={self.action_noise}: use a std in [0, 1] (0.1 is the default)")


@dataclass
class RolloutResult:
    episode: Episode
    success: bool
    steps: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def rollout_expert(
    env: Any,
    expert: Expert,
    seed: int,
    rng: np.random.Generator,
    action_noise: float,
    task: str,
    mode: str | None = None,
    keep_images: bool = True,
) -> RolloutResult:
    """One episode of ``expert`` in ``env`` (a policydistill.envs Meta-World env)."""
    t0 = time.perf_counter()
    obs, info = env.reset(seed=seed)
    expert.reset(rng, mode)
    cam = next(iter(obs["pixels"]))
    images, states, actions = [], [], []
    success, done = False, False
    while not done:
        state = obs["agent_pos"]
        action = expert.act(state)
        if action_noise > 0:
            action = action.copy()
            action[:3] += rng.normal(0.0, action_noise, 3).astype(np.float32)
            action = np.clip(action, -1.0, 1.0)
        if keep_images:
            images.append(obs["pixels"][cam])
        states.append(state)
        actions.append(action.astype(np.float32))
        obs, _, terminated, truncated, info = env.step(action)
        success = success or bool(info["is_success"])
        done = terminated or truncated
    states_arr = np.stack(states).astype(np.float32)
    meta = {
        "mode": expert.mode,
        "seed": int(seed),
        "action_noise": float(action_noise),
        "fork_x": fork_coordinate(task, states_arr),
    }
    ep = Episode(
        images={cam: np.stack(images)} if keep_images else {},
        state=states_arr,
        action=np.stack(actions),
        instruction=env.unwrapped.task_description,
        task=task,
        success=success,
        meta=meta,
    )
    return RolloutResult(ep, success, len(actions), time.perf_counter() - t0)


def _attempt_rng(cfg: GenerateConfig, env_id: str, attempt: int) -> np.random.Generator:
    # one generator per attempt (mode draw + action noise): results do not depend on worker count
    return np.random.default_rng(episode_seed(env_id, attempt, split="demo-rng", base=cfg.seed))


_WORKER: dict[str, Any] = {}


def _worker_init(cfg: GenerateConfig, env_id: str, spawned: bool = True) -> None:
    import os

    from policydistill.envs import make

    if spawned:
        os.environ.setdefault("LP_NUM_THREADS", "1")  # one llvmpipe thread per worker process

    _WORKER["env"] = make(env_id, image_size=cfg.image_size, render_images=cfg.render_images)
    _WORKER["expert"] = make_expert(env_id, cfg.multimodal)
    _WORKER["cfg"], _WORKER["env_id"] = cfg, env_id


def _worker_attempt(attempt: int) -> tuple[int, RolloutResult]:
    cfg, env_id = _WORKER["cfg"], _WORKER["env_id"]
    seed = episode_seed(env_id, attempt, split="demo", base=cfg.seed)
    return attempt, rollout_expert(
        _WORKER["env"], _WORKER["expert"], seed, _attempt_rng(cfg, env_id, attempt), cfg.action_noise, env_id
    )


def _attempts(cfg: GenerateConfig, env_id: str, workers: int) -> Iterator[tuple[int, RolloutResult]]:
    """(attempt, result) pairs in attempt order; the consumer stops when it has enough."""
    max_attempts = max(cfg.episodes, int(np.ceil(cfg.episodes * cfg.max_attempts_factor)))
    if workers <= 1:
        _worker_init(cfg, env_id, spawned=False)
        try:
            for attempt in range(max_attempts):
                yield _worker_attempt(attempt)
        finally:
            _WORKER.pop("env").close()
        return
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    with ProcessPoolExecutor(
        workers, mp_context=mp.get_context("spawn"), initializer=_worker_init, initargs=(cfg, env_id)
    ) as pool:
        nxt, pending, ready, next_out = 0, set(), {}, 0
        try:
            while nxt < max_attempts or pending:
                while nxt < max_attempts and len(pending) < 2 * workers:  # a small window: stop early
                    pending.add(pool.submit(_worker_attempt, nxt))
                    nxt += 1
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    attempt, res = fut.result()
                    ready[attempt] = res
                while next_out in ready:  # release in attempt order: the kept set is worker-independent
                    yield next_out, ready.pop(next_out)
                    next_out += 1
        finally:
            for fut in pending:
                fut.cancel()


def generate(
    cfg: GenerateConfig, progress: Callable[[RolloutResult, int], None] | None = None, workers: int = 1
) -> Iterator[Episode]:
    """Yield ``cfg.episodes`` successful episodes of ``cfg.task`` (failed attempts are dropped;
    ``progress(result, attempt)`` is called after every attempt). Attempt k resets with
    ``episode_seed(task, k, "demo", cfg.seed)`` and draws its mode and noise from its own
    generator, and attempts are consumed in order, so the episodes kept (the first
    ``cfg.episodes`` successes) are the same whatever ``workers`` is."""
    from policydistill.envs import expand

    if workers < 1:
        raise DatasetError(f"workers={workers} is not a process count: use 1 (roll out in this process) or more.")
    (env_id,) = expand(cfg.task)
    make_expert(env_id, cfg.multimodal)  # fail fast on a task without an expert
    kept, tried = 0, 0
    for attempt, res in _attempts(cfg, env_id, workers):
        tried += 1
        if progress is not None:
            progress(res, tried)
        if res.success and kept < cfg.episodes:
            kept += 1
            res.episode.meta["attempt"] = attempt
            yield res.episode
        if kept >= cfg.episodes:
            return
    raise RuntimeError(
        f"{env_id}: only {kept}/{cfg.episodes} successful episodes after {tried} attempts; "
        "lower --action-noise or use --no-multimodal"
    )


def mean_of_modes_success(task: str, episodes: int = 20, seed: int = 0, action_noise: float = 0.0) -> dict[str, Any]:
    """Success of executing the mean of the modes' actions, next to each mode alone, on the same
    seeds (state-only rollouts: no rendering)."""
    from policydistill.envs import expand, make

    (env_id,) = expand(task)
    factory = MULTIMODAL_EXPERTS.get(_task_name(env_id))
    if factory is None:
        raise ValueError(f"{env_id} has no multimodal expert; multimodal tasks: {sorted(MULTIMODAL_EXPERTS)}")
    env = make(env_id, image_size=16, render_images=False)
    out: dict[str, Any] = {"task": env_id, "episodes": episodes}
    try:
        for mode in (*factory(env_id).modes, "mean"):
            expert = MeanOfModes(env_id) if mode == "mean" else factory(env_id)
            rng = np.random.default_rng([seed, 2])
            results = [
                rollout_expert(
                    env,
                    expert,
                    episode_seed(env_id, i, "modes", seed),
                    rng,
                    action_noise,
                    env_id,
                    mode=None if mode == "mean" else mode,
                    keep_images=False,
                )
                for i in range(episodes)
            ]
            out[mode] = {
                "success_rate": float(np.mean([r.success for r in results])),
                "mean_steps": float(np.mean([r.steps for r in results])),
            }
    finally:
        env.close()
    return out
