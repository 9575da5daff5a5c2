"""Meta-World v3 tasks as gymnasium environments with a camera image, a state vector and an instruction.

Ids: ``metaworld/<task>-v3`` (gymnasium grammar namespace/name-vN), one per Meta-World v3 task
(all 50, so MT10 and MT50 are covered), e.g. ``metaworld/push-v3``. Create with
``policydistill.envs.make("metaworld/push-v3", image_size=96)``.

Observation (``gymnasium.spaces.Dict``)::

    {
        "pixels": {"corner2": uint8(H, W, 3)},  # H = W = image_size (default 96; 64..128 recommended)
        "agent_pos": float32(
            D,
        ),
    }  # see `state` below

The image is Meta-World's ``corner2`` camera flipped on both axes (MuJoCo renders it upside
down), rendered with shadows, MSAA and reflections off (``vis.quality.shadowsize = offsamples = 0``,
``mjRND_REFLECTION = 0``) because software/EGL rendering with the defaults is ~7x slower
(docs/architecture.md, Rendering). Worker processes also set ``LP_NUM_THREADS=1`` (one llvmpipe thread each).

``state="full"`` (default, D = 21): Meta-World's current-frame observation — hand xyz (3),
gripper opening (1), first object xyz + quaternion (7), second object xyz + quaternion (7, zero
when the task has one object) — followed by the goal xyz (3). It is privileged (object and goal
positions come from the simulator) but it is what makes small visuomotor policies learn the tasks
in minutes; the previous-frame copy Meta-World appends is dropped. ``state="proprio"`` (D = 4):
hand xyz + gripper only, for image-only policies. ``render_images=False`` skips rendering
(the pixels are black) for fast state-only rollouts such as expert statistics.

The instruction is ``env.unwrapped.task_description`` and ``info["task"]``. It is deliberately
NOT an observation key: gymnasium's vector envs batch a ``Text`` space poorly, and the evaluator
knows each slot's task anyway (it adds ``obs["task"]: list[str]`` for the policy).

Actions: ``Box(-1, 1, (4,), float32)`` — end-effector xyz displacement (scaled by 1/100 m per
step inside Meta-World) and gripper effort (+1 closes).

``info["is_success"]`` is Meta-World's success flag for the current step. With
``terminate_on_success=True`` (default) the episode terminates at the first success, so episode
length = steps to success. The episode is truncated at ``max_episode_steps`` (default 200 for
most tasks, 300 for the wall tasks whose detour is longer; Meta-World's own cap is 500);
``make(id, max_episode_steps=N)`` sets it (passed to the env as ``max_steps``, not as gymnasium's
``TimeLimit``, so that the env and its ``max_episode_steps`` attribute agree).

Seeding: ``reset(seed=s)`` makes the initial state (object and goal positions) a function of s
alone. Meta-World 3 ignores reset's seed and by default freezes one random vector per task
(``_freeze_rand_vec``); we unfreeze it and switch on ``seeded_rand_vec`` so the positions are
drawn from the env's own generator, which ``reset(seed=s)`` re-seeds. ``reset()`` without a seed
continues that generator, so a seeded first reset fixes the whole sequence.

``convention="lerobot"`` gives what lerobot's own Meta-World env (``lerobot.envs.metaworld``, with
``lerobot-eval``'s ``preprocess_observation``) hands a policy, so that a checkpoint trained on lerobot's
Meta-World data sees at evaluation what it saw in training:

* the camera is ``pixels["image"]`` (lerobot's ``observation.image``, no ``.images.`` prefix:
  ``LEROBOT_FEATURE_KEYS``), corner2 moved to lerobot's pose ``(0.75, 0.075, 0.7)``, flipped on both
  axes, 480 x 480 (Meta-World's default frame, which lerobot renders whatever its config says) with
  Meta-World's default rendering (shadows, 4x MSAA, reflections): about 10x slower than ours;
* ``agent_pos`` is 4-D: hand xyz and gripper opening (``state`` is ignored);
* the instruction is lerobot's (``LEROBOT_INSTRUCTIONS``, e.g. "Push the puck to a goal");
* episodes last up to 500 steps (lerobot's ``_max_episode_steps``) and end at the first success;
* the env is built as lerobot builds it (``MT1(task, seed=42)``, its first training task, one reset)
  and ``reset(seed=s)`` seeds Meta-World exactly as lerobot does, so the same seed gives the same
  initial state as lerobot's env (``tests/fixtures/lerobot_env`` holds one recorded from lerobot).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must be set before mujoco loads a GL backend
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import gymnasium as gym  # noqa: E402
from gymnasium import spaces  # noqa: E402

NAMESPACE = "metaworld"
CAMERA = "corner2"
STATE_DIMS = {"full": 21, "proprio": 4}
DEFAULT_IMAGE_SIZE = 96
#: observation conventions: ours (see above) or lerobot's Meta-World env (see ``MetaWorldEnv``)
CONVENTIONS = ("policydistill", "lerobot")
#: lerobot's Meta-World env: the camera it names ``observation.image``, its render size (Meta-World's
#: default frame, whatever ``observation_width`` says), its episode limit (``_max_episode_steps``, which
#: ``lerobot-eval`` runs to), the seed of its ``MT1`` task sampler and where it moves corner2 to
LEROBOT_CAMERA_KEY = "image"
LEROBOT_IMAGE_SIZE = 480
LEROBOT_MAX_STEPS = 500
LEROBOT_MT1_SEED = 42
LEROBOT_CORNER2_POS = (0.75, 0.075, 0.7)
#: our observation names -> the lerobot policy inputs they become (lerobot's ``preprocess_observation``
#: names a bare ``pixels`` array ``observation.image``, without the ``.images.`` prefix)
LEROBOT_FEATURE_KEYS = {"pixels/image": "observation.image", "agent_pos": "observation.state"}
DEFAULT_MAX_STEPS = 200
#: the wall tasks' multimodal demonstrations go around the wall, which takes longer
MAX_STEPS = {"push-wall-v3": 300, "pick-place-wall-v3": 300, "reach-wall-v3": 300}

#: one instruction per Meta-World v3 task (the language the multi-task policies condition on)
INSTRUCTIONS: dict[str, str] = {
    "assembly-v3": "pick up the nut and place it onto the peg",
    "basketball-v3": "pick up the ball and dunk it into the basket",
    "bin-picking-v3": "grasp the puck from one bin and place it into the other bin",
    "box-close-v3": "grasp the lid and close the box with it",
    "button-press-topdown-v3": "press the button from the top",
    "button-press-topdown-wall-v3": "press the button from the top, behind the wall",
    "button-press-v3": "press the button",
    "button-press-wall-v3": "press the button behind the wall",
    "coffee-button-v3": "push the button on the coffee machine",
    "coffee-pull-v3": "pull the mug from the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "rotate the dial 180 degrees",
    "disassemble-v3": "pick the nut off the peg",
    "door-close-v3": "close the door",
    "door-lock-v3": "lock the door by rotating the lock clockwise",
    "door-open-v3": "open the door",
    "door-unlock-v3": "unlock the door by rotating the lock counter-clockwise",
    "hand-insert-v3": "insert the gripper into the hole",
    "drawer-close-v3": "push the drawer closed",
    "drawer-open-v3": "open the drawer",
    "faucet-open-v3": "rotate the faucet counter-clockwise",
    "faucet-close-v3": "rotate the faucet clockwise",
    "hammer-v3": "hammer the screw into the wall",
    "handle-press-side-v3": "press the handle down sideways",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up sideways",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever up",
    "peg-insert-side-v3": "insert the peg sideways into the hole",
    "pick-place-wall-v3": "pick up the puck and place it at the goal behind the wall",
    "pick-out-of-hole-v3": "pick the puck out of the hole",
    "reach-v3": "reach the goal position",
    "push-back-v3": "push the puck back to the goal",
    "push-v3": "push the puck to the goal",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "plate-slide-v3": "slide the plate into the cabinet",
    "plate-slide-side-v3": "slide the plate sideways into the cabinet",
    "plate-slide-back-v3": "slide the plate out of the cabinet",
    "plate-slide-back-side-v3": "slide the plate sideways out of the cabinet",
    "peg-unplug-side-v3": "unplug the peg sideways",
    "soccer-v3": "kick the ball into the goal",
    "stick-push-v3": "grasp the stick and push the box with it",
    "stick-pull-v3": "grasp the stick and pull the box with it",
    "push-wall-v3": "push the puck to the goal behind the wall",
    "reach-wall-v3": "reach the goal position behind the wall",
    "shelf-place-v3": "pick up the puck and place it onto the shelf",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the table",
    "window-open-v3": "push the window open",
    "window-close-v3": "push the window closed",
}

#: lerobot's instruction for each task (its Meta-World env's ``task_description`` and the task strings of its
#: Meta-World datasets): a language-conditioned lerobot checkpoint was trained on exactly these words
LEROBOT_INSTRUCTIONS: dict[str, str] = {
    "assembly-v3": "Pick up a nut and place it onto a peg",
    "basketball-v3": "Dunk the basketball into the basket",
    "bin-picking-v3": "Grasp the puck from one bin and place it into another bin",
    "box-close-v3": "Grasp the cover and close the box with it",
    "button-press-topdown-v3": "Press a button from the top",
    "button-press-topdown-wall-v3": "Bypass a wall and press a button from the top",
    "button-press-v3": "Press a button",
    "button-press-wall-v3": "Bypass a wall and press a button",
    "coffee-button-v3": "Push a button on the coffee machine",
    "coffee-pull-v3": "Pull a mug from a coffee machine",
    "coffee-push-v3": "Push a mug under a coffee machine",
    "dial-turn-v3": "Rotate a dial 180 degrees",
    "disassemble-v3": "Pick a nut out of a peg",
    "door-close-v3": "Close a door with a revolving joint",
    "door-lock-v3": "Lock the door by rotating the lock clockwise",
    "door-open-v3": "Open a door with a revolving joint",
    "door-unlock-v3": "Unlock the door by rotating the lock counter-clockwise",
    "hand-insert-v3": "Insert the gripper into a hole",
    "drawer-close-v3": "Push and close a drawer",
    "drawer-open-v3": "Open a drawer",
    "faucet-open-v3": "Rotate the faucet counter-clockwise",
    "faucet-close-v3": "Rotate the faucet clockwise",
    "hammer-v3": "Hammer a screw on the wall",
    "handle-press-side-v3": "Press a handle down sideways",
    "handle-press-v3": "Press a handle down",
    "handle-pull-side-v3": "Pull a handle up sideways",
    "handle-pull-v3": "Pull a handle up",
    "lever-pull-v3": "Pull a lever down 90 degrees",
    "peg-insert-side-v3": "Insert a peg sideways",
    "pick-place-wall-v3": "Pick a puck, bypass a wall and place the puck",
    "pick-out-of-hole-v3": "Pick up a puck from a hole",
    "reach-v3": "Reach a goal position",
    "push-back-v3": "Push the puck to a goal",
    "push-v3": "Push the puck to a goal",
    "pick-place-v3": "Pick and place a puck to a goal",
    "plate-slide-v3": "Slide a plate into a cabinet",
    "plate-slide-side-v3": "Slide a plate into a cabinet sideways",
    "plate-slide-back-v3": "Get a plate from the cabinet",
    "plate-slide-back-side-v3": "Get a plate from the cabinet sideways",
    "peg-unplug-side-v3": "Unplug a peg sideways",
    "soccer-v3": "Kick a soccer into the goal",
    "stick-push-v3": "Grasp a stick and push a box using the stick",
    "stick-pull-v3": "Grasp a stick and pull a box with the stick",
    "push-wall-v3": "Bypass a wall and push a puck to a goal",
    "reach-wall-v3": "Bypass a wall and reach a goal",
    "shelf-place-v3": "Pick and place a puck onto a shelf",
    "sweep-into-v3": "Sweep a puck into a hole",
    "sweep-v3": "Sweep a puck off the table",
    "window-open-v3": "Push and open a window",
    "window-close-v3": "Push and close a window",
}


def task_names() -> list[str]:
    """The Meta-World v3 task names we expose (every task that has an instruction and a class)."""
    # no metaworld import here: registering ids must stay cheap; the constructor checks the class exists
    return list(INSTRUCTIONS)


def env_id(task: str) -> str:
    return f"{NAMESPACE}/{task}"


def _release_current_context() -> None:
    """Unbind the GL context from this thread after a render. An EGL context can be current in
    one thread at a time: left bound, it makes the env unusable from any other thread (a robot
    I/O thread, an inference worker) with EGL_BAD_ACCESS. Re-binding before the next render is
    cheap, so every render leaves the thread clean."""
    if os.environ.get("MUJOCO_GL", "").lower() != "egl":
        return
    import mujoco.egl
    from OpenGL import EGL

    if mujoco.egl.EGL_DISPLAY is not None:
        EGL.eglMakeCurrent(mujoco.egl.EGL_DISPLAY, EGL.EGL_NO_SURFACE, EGL.EGL_NO_SURFACE, EGL.EGL_NO_CONTEXT)


class MetaWorldEnv(gym.Env):
    """One Meta-World v3 task with a ``corner2`` image, a state vector and an instruction."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(
        self,
        task: str,
        image_size: int | None = None,
        state: str = "full",
        max_steps: int | None = None,
        terminate_on_success: bool = True,
        render_mode: str | None = "rgb_array",
        camera: str = CAMERA,
        render_images: bool = True,
        convention: str = "policydistill",
    ) -> None:
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        if convention not in CONVENTIONS:
            raise ValueError(f"convention={convention!r}: use one of {', '.join(CONVENTIONS)}")
        lerobot = convention == "lerobot"
        if task not in ALL_V3_ENVIRONMENTS or task not in INSTRUCTIONS:
            raise ValueError(f"unknown Meta-World task {task!r}; valid: {', '.join(sorted(INSTRUCTIONS))}")
        if image_size is None:
            image_size = LEROBOT_IMAGE_SIZE if lerobot else DEFAULT_IMAGE_SIZE
        if not 16 <= int(image_size) <= 512:
            raise ValueError(f"image_size={image_size} out of range: use 64..128 (16..512 accepted; lerobot's is 480)")
        if state not in STATE_DIMS:
            raise ValueError(f"state={state!r}: use one of {sorted(STATE_DIMS)}")
        if lerobot and camera != CAMERA:
            raise ValueError(f"camera={camera!r}: lerobot's Meta-World convention renders {CAMERA!r} only")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode={render_mode!r}: only 'rgb_array' is supported (offscreen)")
        default_limit = LEROBOT_MAX_STEPS if lerobot else MAX_STEPS.get(task, DEFAULT_MAX_STEPS)
        limit = int(max_steps or default_limit)
        if not 1 <= limit <= 500:
            raise ValueError(f"max_episode_steps={limit}: Meta-World allows 1..500")

        self.task = task
        self.convention = convention
        self.task_description = LEROBOT_INSTRUCTIONS[task] if lerobot else INSTRUCTIONS[task]
        self.image_size = int(image_size)
        # lerobot's env gives the hand position and gripper opening only (``agent_pos = raw_obs[:4]``)
        self.state_mode = "proprio" if lerobot else state
        self.camera = camera
        self.camera_key = LEROBOT_CAMERA_KEY if lerobot else camera
        self.max_episode_steps = limit
        self.terminate_on_success = terminate_on_success
        self.render_mode = render_mode
        self.render_images = render_images

        if lerobot:
            mw = self._make_lerobot(task)
        else:
            mw = ALL_V3_ENVIRONMENTS[task](
                render_mode="rgb_array", camera_name=camera, width=self.image_size, height=self.image_size
            )
            # goal-observable, per-reset random positions drawn from the env's own seeded generator
            mw._partially_observable = False
            del mw.sawyer_observation_space  # cached_property: recompute with the goal visible
            mw._freeze_rand_vec = False
            mw.seeded_rand_vec = True
            mw._set_task_called = True
            mw.max_path_length = max(mw.max_path_length, limit)
            # shadows and multisampling off before the first render: ~75 steps/s instead of ~10 (docs/architecture.md)
            mw.model.vis.quality.shadowsize = 0
            mw.model.vis.quality.offsamples = 0
        self.mw = mw
        self._seeded = False
        if render_images:
            viewer = mw.mujoco_renderer._get_viewer("rgb_array")
            if not lerobot:
                # reflections render the scene twice (the brick and table materials are reflective):
                # off, a frame costs ~25% less CPU and differs by 0.05/255 on average
                import mujoco

                viewer.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
            self._viewer = viewer

        # finite bounds from Meta-World's own observation space (same slices as the state vector)
        low, high = mw.sawyer_observation_space.low, mw.sawyer_observation_space.high
        keep = np.r_[0:18, len(low) - 3 : len(low)] if self.state_mode == "full" else np.r_[0:4]
        self.observation_space = spaces.Dict(
            {
                "pixels": spaces.Dict(
                    {self.camera_key: spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8)}
                ),
                "agent_pos": spaces.Box(low[keep].astype(np.float32), high[keep].astype(np.float32), dtype=np.float32),
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (4,), np.float32)
        self._raw: np.ndarray | None = None
        self._image: np.ndarray | None = None
        self._steps = 0

    # -- helpers -----------------------------------------------------------------------------------
    def _make_lerobot(self, task: str) -> Any:
        """The Meta-World env as lerobot's ``MetaworldEnv`` builds it: ``MT1(task, seed=42)``, its first
        training task, corner2 moved, one reset with that task's frozen positions, then positions drawn
        per reset from the env's seeded generator. Rendering keeps Meta-World's defaults (shadows, 4x
        MSAA, reflections) at its default 480 px frame unless ``image_size`` says otherwise."""
        import metaworld

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mt1 = metaworld.MT1(task, seed=LEROBOT_MT1_SEED)
            mw = mt1.train_classes[task](
                render_mode="rgb_array", camera_name=self.camera, width=self.image_size, height=self.image_size
            )
            mw.set_task(mt1.train_tasks[0])
            # lerobot moves camera index 2, which is corner2 in every v3 task
            mw.model.cam_pos[mw.model.camera(CAMERA).id] = LEROBOT_CORNER2_POS
            mw.reset()
        mw._freeze_rand_vec = False
        mw.seeded_rand_vec = True
        mw.max_path_length = max(mw.max_path_length, self.max_episode_steps)
        return mw

    def _render_image(self) -> np.ndarray:
        if not self.render_images:  # state-only rollouts (expert statistics, benchmarks): black frames
            return np.zeros((self.image_size, self.image_size, 3), np.uint8)
        # Several envs in one process each own a GL context, and gymnasium's renderer makes its
        # context current only when it was created. Freeing any other env's context (close or
        # garbage collection: mujoco's EGL free calls eglReleaseThread) unbinds the current one,
        # after which renders come back black; rendering while another env's context is current
        # draws with the wrong context. So bind ours before every render (cheap when already bound).
        self._viewer.make_context_current()
        try:
            img = self.mw.render()
        finally:
            _release_current_context()
        return np.ascontiguousarray(img[::-1, ::-1])  # corner2 renders upside down: flip both axes

    def _observation(self, raw: np.ndarray) -> dict[str, Any]:
        self._raw = np.asarray(raw, dtype=np.float64)
        self._image = self._render_image()
        if self.state_mode == "full":
            state = np.concatenate([raw[:18], raw[-3:]])
        else:
            state = raw[:4]
        return {"pixels": {self.camera_key: self._image}, "agent_pos": state.astype(np.float32)}

    @property
    def raw_observation(self) -> np.ndarray:
        """Meta-World's 39-D observation (privileged: used by the scripted experts)."""
        if self._raw is None:
            raise RuntimeError("call reset() first")
        return self._raw.copy()

    # -- gymnasium API -----------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        inner_seed = None
        if seed is not None:
            inner_seed = int(seed)
        elif not self._seeded:  # first unseeded reset: derive the inner generator from ours
            inner_seed = int(self.np_random.integers(2**31 - 1))
        if inner_seed is not None:
            self.mw.seed(inner_seed)
            self._seeded = True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # lerobot also hands the seed to Meta-World's reset, which re-seeds the same generator
            raw, _ = self.mw.reset(seed=inner_seed) if self.convention == "lerobot" else self.mw.reset()
        self._steps = 0
        return self._observation(raw), {"is_success": False, "task": self.task_description}

    def step(self, action: np.ndarray):
        if self._raw is None:
            raise RuntimeError("call reset() before step()")
        if self._steps >= self.max_episode_steps:
            raise RuntimeError(f"episode already ended after {self._steps} steps: call reset()")
        action = np.clip(np.asarray(action, dtype=np.float32).reshape(4), -1.0, 1.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw, reward, _, _, mw_info = self.mw.step(action)
        self._steps += 1
        success = bool(mw_info.get("success", 0.0) > 0.5)
        terminated = success and self.terminate_on_success
        truncated = (not terminated) and self._steps >= self.max_episode_steps
        info = {"is_success": success, "task": self.task_description}
        return self._observation(raw), float(reward), terminated, truncated, info

    def observe(self) -> dict[str, Any]:
        """The observation of the current state, rendered now: what the last ``step``/``reset``
        returned, for a caller that stepped with ``render_images = False`` and needs pixels only
        when its policy looks (an evaluator re-planning every few steps renders a fraction of them)."""
        if self._raw is None:
            raise RuntimeError("call reset() before observe()")
        return self._observation(self._raw)

    def render(self) -> np.ndarray:
        """The last observed camera image (already flipped), uint8 (H, W, 3)."""
        if self._image is None:
            raise RuntimeError("call reset() before render()")
        return self._image

    def close(self) -> None:
        # free the GL context explicitly: EGL teardown at interpreter exit prints spurious errors
        mw = getattr(self, "mw", None)
        if mw is not None:
            mw.close()
            self.mw = None  # type: ignore[assignment]
        # Drop our handle on the viewer whose context mw.close() just freed: when it is garbage
        # collected later, its __del__ frees that context a second time, and EGL may by then have
        # handed the same handle to a newer env, whose renders then come back black.
        self._viewer = None
