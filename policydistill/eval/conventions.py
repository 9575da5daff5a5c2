"""Which observation convention an evaluation renders, and which env camera feeds which policy camera.

Two conventions exist for the simulated tasks (``policydistill.envs``): ours ("policydistill": cameras
``corner2`` / ``agentview`` + ``wrist``, small fast-rendered frames) and lerobot's ("lerobot": the
camera names, image sizes, rendering, state and instructions of lerobot's own Meta-World and LIBERO
envs). A policy must be evaluated in the convention it was trained in:

1. ``--convention`` (``EvalConfig.convention``) when given;
2. else the convention of the policy's origin (``config.origin``: "lerobot" for a policy converted
   from a lerobot checkpoint, which its distilled students inherit; "policydistill" for ours), unless
   the policy's inputs fit only the other convention's env: its cameras all carry the other
   convention's names and its state has the other's size (a lerobot checkpoint fine-tuned on our
   Meta-World data: camera ``corner2``, 21-D state; one of ours trained on a lerobot dataset: cameras
   ``image``, ``image2``).

Cameras are then matched by name; a policy camera the env does not have takes the env camera that
plays the same role in the other convention (``agentview`` <-> ``image``, ``wrist`` <-> ``image2``,
``corner2`` <-> ``image``), or the only camera left when one policy camera and one env camera remain.
An explicit map (``--camera-map env=policy``) comes first. A policy camera that still has no env camera
is an error that names both sets: evaluating without a camera the policy was trained on is not the
policy's performance.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

CONVENTIONS = ("policydistill", "lerobot")

#: task family -> camera names of each convention (the envs' pixel keys)
CAMERAS: dict[str, dict[str, tuple[str, ...]]] = {
    "metaworld": {"policydistill": ("corner2",), "lerobot": ("image",)},
    "libero": {"policydistill": ("agentview", "wrist"), "lerobot": ("image", "image2")},
}

#: task family -> state sizes each convention's env gives (ours: Meta-World "full" or "proprio")
STATE_DIMS: dict[str, dict[str, tuple[int, ...]]] = {
    "metaworld": {"policydistill": (21, 4), "lerobot": (4,)},
    "libero": {"policydistill": (8,), "lerobot": (8,)},
}

#: env camera pairs that show the same view under the two conventions (either direction)
SAME_VIEW: tuple[tuple[str, str], ...] = (("agentview", "image"), ("wrist", "image2"), ("corner2", "image"))

#: cameras lerobot pads with blank frames (``empty_cameras``): never fed from an env
EMPTY_CAMERA_PREFIX = "empty_camera"


def task_families(tasks: Iterable[str]) -> set[str]:
    return {t.split("/", 1)[0] for t in tasks}


def fits(convention: str, cameras: list[str], state_dim: int | None, families: Iterable[str]) -> bool:
    """True when a policy with these cameras and state size reads the env of ``convention`` for every
    task family as it is (camera names and state size; families we know nothing of fit any)."""
    for f in families:
        if f not in CAMERAS:
            continue
        if any(c not in CAMERAS[f][convention] for c in cameras):
            return False
        if state_dim is not None and state_dim not in STATE_DIMS[f][convention]:
            return False
    return True


def select_convention(policy: Any, tasks: Iterable[str], requested: str | None = None) -> tuple[str, str]:
    """(convention, why) for evaluating ``policy`` on the env ids ``tasks`` (see the module docstring)."""
    if requested is not None:
        if requested not in CONVENTIONS:
            raise ValueError(f"convention {requested!r} is not one of {', '.join(CONVENTIONS)} (or auto)")
        return requested, "requested"
    config = getattr(policy, "config", None)
    if config is None:  # scripted and random policies act on our envs
        return "policydistill", "the policy is not a trained checkpoint"
    origin = getattr(config, "origin", "policydistill")
    origin = origin if origin in CONVENTIONS else "policydistill"
    other = "policydistill" if origin == "lerobot" else "lerobot"
    cameras = [c for c in (getattr(config, "cameras", None) or []) if not c.startswith(EMPTY_CAMERA_PREFIX)]
    state_dim = getattr(config, "state_dim", None)
    families = task_families(tasks)
    made = "converted from a lerobot checkpoint" if origin == "lerobot" else "policydistill's own"
    if cameras and not fits(origin, cameras, state_dim, families) and fits(other, cameras, state_dim, families):
        return other, (
            f"the policy is {made}, but its inputs (cameras {cameras}, state of {state_dim}) are those of the "
            f"{other} env convention"
        )
    return origin, f"the policy is {made}"


#: lerobot's published LIBERO results execute 10 actions of each pi0 / pi0.5 chunk (as openpi does),
#: whatever ``n_action_steps`` the checkpoint stores (``--policy.n_action_steps=10`` in its docs)
LEROBOT_LIBERO_N_ACTION_STEPS = {"pi0": 10, "pi05": 10}


def protocol_n_action_steps(policy: Any, tasks: Iterable[str], convention: str, requested: int | None) -> int | None:
    """Actions executed per chunk: ``requested`` when given; lerobot's LIBERO protocol for pi0 / pi0.5
    evaluated in lerobot's convention; else None (the policy's own ``n_action_steps``)."""
    if requested is not None:
        return requested
    arch = "pi05" if getattr(policy, "is_pi05", False) else str(getattr(policy, "architecture", ""))
    if convention == "lerobot" and "libero" in task_families(tasks) and arch in LEROBOT_LIBERO_N_ACTION_STEPS:
        return LEROBOT_LIBERO_N_ACTION_STEPS[arch]
    return None


def reset_options(task: str, index: int, convention: str) -> dict[str, Any] | None:
    """Options for resetting episode ``index`` of ``task``: in lerobot's convention a LIBERO episode
    starts from the official initial state its index names (lerobot's protocol: episode i, state i mod
    50) instead of the one its reset seed draws."""
    if convention == "lerobot" and task.startswith("libero/"):
        return {"episode_index": int(index)}
    return None


def parse_camera_map(text: str) -> dict[str, str]:
    """``"agentview=image,wrist=image2"`` -> {"agentview": "image", "wrist": "image2"} (env -> policy)."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        env_cam, sep, policy_cam = (x.strip() for x in part.partition("="))
        if not sep or not env_cam or not policy_cam:
            raise ValueError(
                f"camera map entry {part!r} is not ENV_CAMERA=POLICY_CAMERA (e.g. agentview=image,wrist=image2)"
            )
        if env_cam in out:
            raise ValueError(f"camera map names env camera {env_cam!r} twice")
        out[env_cam] = policy_cam
    return out


def match_cameras(
    env_cameras: Iterable[str], policy_cameras: Iterable[str], explicit: Mapping[str, str] | None = None
) -> dict[str, str]:
    """{env camera: policy camera} feeding every policy camera (see the module docstring); env cameras
    the policy does not use are left out. Raises ValueError naming both sets when a policy camera
    cannot be fed."""
    env = list(env_cameras)
    wanted = [c for c in policy_cameras if not c.startswith(EMPTY_CAMERA_PREFIX)]
    out: dict[str, str] = {}
    for e, p in (explicit or {}).items():
        if e not in env:
            raise ValueError(f"camera map names env camera {e!r}, but the env's cameras are {env}")
        if p not in wanted:
            raise ValueError(f"camera map names policy camera {p!r}, but the policy's cameras are {wanted}")
        if p in out.values():
            raise ValueError(f"camera map feeds policy camera {p!r} from two env cameras")
        out[e] = p
    fed = set(out.values())
    for p in wanted:  # same name
        if p not in fed and p in env and p not in out:
            out[p] = p
            fed.add(p)
    for p in wanted:  # the same view under the other convention
        if p in fed:
            continue
        for a, b in SAME_VIEW:
            e = a if p == b else b if p == a else None
            if e is not None and e in env and e not in out:
                out[e] = p
                fed.add(p)
                break
    missing = [p for p in wanted if p not in fed]
    free = [e for e in env if e not in out]
    if len(missing) == 1 and len(free) == 1:  # one camera each left: they can only mean each other
        out[free[0]] = missing[0]
        missing = []
    if missing:
        raise ValueError(
            f"the policy's cameras {wanted} cannot all be fed from the env's cameras {env} "
            f"(no env camera for {missing}). Map them with --camera-map ENV=POLICY (e.g. "
            f"--camera-map {','.join(f'{e}={p}' for e, p in zip(free or env, missing))}), or pick the env's "
            "convention with --convention lerobot|policydistill."
        )
    return out


def rename_pixels(pixels: Mapping[str, Any], camera_map: Mapping[str, str]) -> dict[str, Any]:
    """The env's images under the policy's camera names (only the cameras the policy uses)."""
    return {camera_map[e]: img for e, img in pixels.items() if e in camera_map}
