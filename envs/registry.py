"""The one registry of simulation tasks: gymnasium registration of our env ids, the suites (names
that expand to several ids), ``expand`` and ``make``.

Registration is idempotent and lazy: importing ``policydistill.envs`` registers the ids (nothing
heavy is built until ``make``). Each family module (``metaworld_env``, ``libero_env``) only says
which ids and suites it has; this module registers them, so the families never import it.

Suites: ``metaworld/mt10`` is Meta-World's MT10 benchmark, ``metaworld/mt50`` all 50 v3 tasks,
``metaworld/walls`` the three wall tasks whose bundled demonstrations are multimodal (around the
wall on the left or on the right), ``metaworld/multimodal`` the tasks the scripted generator has
multimodal variants for, ``libero/<suite>`` every task of a LIBERO suite (with the extra),
``metaworld/moving`` the dynamic tasks whose goal moves during the episode (``metaworld_moving``).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

import gymnasium as gym

MT10 = [
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "window-close-v3",
]
WALLS = ["push-wall-v3", "pick-place-wall-v3", "reach-wall-v3"]
MULTIMODAL = ["push-v3", "pick-place-v3", "push-wall-v3", "pick-place-wall-v3", "reach-wall-v3"]

SUITES: dict[str, list[str]] = {
    "metaworld/mt10": [f"metaworld/{t}" for t in MT10],
    "metaworld/walls": [f"metaworld/{t}" for t in WALLS],
    "metaworld/multimodal": [f"metaworld/{t}" for t in MULTIMODAL],
}

_REGISTERED: list[str] = []


def register_suite(name: str, env_ids: Iterable[str]) -> None:
    SUITES[name] = list(env_ids)


def _register_family(entry_point: str, tasks: Iterable[str], env_id: Any, suite: str) -> list[str]:
    """Register one gymnasium id per task (the class at ``entry_point`` built with ``task=``) and
    the suite holding them all. No max_episode_steps: these envs truncate themselves (per-task limits)."""
    ids = []
    for task in tasks:
        eid = env_id(task)
        if eid not in gym.registry:
            gym.register(id=eid, entry_point=entry_point, kwargs={"task": task}, disable_env_checker=True)
        ids.append(eid)
    register_suite(suite, ids)
    return ids


def _register_metaworld() -> list[str]:
    from .metaworld_env import env_id, task_names

    # every v3 task: the one place MT50 is defined
    return _register_family("policydistill.envs.metaworld_env:MetaWorldEnv", task_names(), env_id, "metaworld/mt50")


def _register_moving() -> list[str]:
    from .metaworld_moving import env_id, moving_task_names

    return _register_family(
        "policydistill.envs.metaworld_moving:MovingGoalEnv", moving_task_names(), env_id, "metaworld/moving"
    )


def _register_libero() -> list[str]:
    try:  # LIBERO ids register without importing LIBERO (it is an optional extra)
        from .libero_env import LIBERO_SUITES, registrations, suite_env_ids
    except ImportError:
        return []
    ids = []
    for eid, kwargs in registrations():
        if eid not in gym.registry:
            # no max_episode_steps (TimeLimit): the env truncates itself, as the Meta-World envs do
            gym.register(
                id=eid, entry_point="policydistill.envs.libero_env:LiberoEnv", kwargs=kwargs, disable_env_checker=True
            )
        ids.append(eid)
    for name in LIBERO_SUITES:
        register_suite(f"libero/{name}", suite_env_ids(name))
    return ids


def register_all() -> list[str]:
    if not _REGISTERED:
        _REGISTERED.extend(_register_metaworld())
        _REGISTERED.extend(_register_moving())
        _REGISTERED.extend(_register_libero())
    return list(_REGISTERED)


def registered_ids() -> list[str]:
    """Every env id this package registers."""
    return register_all()


def suite_names() -> list[str]:
    register_all()
    return sorted(SUITES)


def _did_you_mean(name: str) -> str:
    # compare the part after the family prefix, so that "mt01" and "metaworld/psuh-v3" both find theirs
    by_tail: dict[str, str] = {}
    for full in [*suite_names(), *registered_ids()]:
        by_tail.setdefault(full.split("/", 1)[-1], full)
    close = difflib.get_close_matches(name.split("/", 1)[-1], list(by_tail), n=3, cutoff=0.6)
    return f" Did you mean {' or '.join(repr(by_tail[c]) for c in close)}?" if close else ""


def expand(names: str | Iterable[str]) -> list[str]:
    """Expand a comma-separated string or list of env ids / suite names / bare Meta-World task
    names (``push-v3`` means ``metaworld/push-v3``) into env ids, keeping order, without duplicates."""
    if isinstance(names, str):
        names = names.split(",")
    known = set(registered_ids())
    out: list[str] = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name in SUITES:
            ids = SUITES[name]
        elif name in known:
            ids = [name]
        elif f"metaworld/{name}" in known:
            ids = [f"metaworld/{name}"]
        else:
            raise ValueError(
                f"unknown task or suite {name!r}: use an env id such as metaworld/push-v3 "
                f"or a suite ({', '.join(suite_names())}); `policydistill envs list` shows all "
                f"ids.{_did_you_mean(name)}"
            )
        out.extend(i for i in ids if i not in out)
    if not out:
        raise ValueError("no task given")
    return out


def make(env_id: str, **kwargs: Any) -> gym.Env:
    """``gymnasium.make`` for our ids, with a helpful error for unknown ones or suite names."""
    ids = register_all()
    if env_id in SUITES:
        raise ValueError(
            f"{env_id!r} is a suite, not an env: make one of its ids (policydistill.envs.expand({env_id!r}))"
        )
    if env_id not in gym.registry:
        if f"metaworld/{env_id}" in gym.registry:
            env_id = f"metaworld/{env_id}"
        else:
            raise ValueError(
                f"unknown env id {env_id!r}; registered: {', '.join(ids[:12])}, ... "
                f"(`policydistill envs list` shows all).{_did_you_mean(env_id)}"
            )
    if env_id.startswith(("metaworld/", "libero/")) and "max_episode_steps" in kwargs:
        # gymnasium.make would swallow it into a TimeLimit wrapper; the env truncates itself
        kwargs["max_steps"] = kwargs.pop("max_episode_steps")
    return gym.make(env_id, **kwargs)
