"""gymnasium registration of our env ids and ``make``. Registration is idempotent and lazy
(importing ``policydistill.envs`` registers; nothing heavy is built until ``make``)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

_REGISTERED: list[str] = []


def register_metaworld() -> list[str]:
    from .metaworld_env import env_id, task_names

    ids = []
    for task in task_names():
        eid = env_id(task)
        if eid not in gym.registry:
            # no max_episode_steps here: the env truncates itself (per-task limits, see metaworld_env)
            gym.register(id=eid, entry_point="policydistill.envs.metaworld_env:MetaWorldEnv",
                         kwargs={"task": task}, disable_env_checker=True)
        ids.append(eid)
    return ids


def register_all() -> list[str]:
    if not _REGISTERED:
        _REGISTERED.extend(register_metaworld())
        try:  # LIBERO ids register without importing LIBERO (it is an optional extra)
            from .libero_env import register_libero
        except ImportError:
            pass
        else:
            _REGISTERED.extend(register_libero())
    return list(_REGISTERED)


def registered_ids() -> list[str]:
    """Every env id this package registers (other families extend ``_REGISTERED``)."""
    return register_all()


def make(env_id: str, **kwargs: Any) -> gym.Env:
    """``gymnasium.make`` for our ids, with a helpful error for unknown ones or suite names."""
    from .suites import SUITES

    ids = register_all()
    if env_id in SUITES or env_id == "metaworld/mt50":
        raise ValueError(f"{env_id!r} is a suite, not an env: make one of its ids "
                         f"(policydistill.envs.expand({env_id!r}))")
    if env_id not in gym.registry:
        if f"metaworld/{env_id}" in gym.registry:
            env_id = f"metaworld/{env_id}"
        else:
            raise ValueError(f"unknown env id {env_id!r}; registered: {', '.join(ids[:12])}, ... "
                             "(`policydistill envs list` shows all)")
    if env_id.startswith(("metaworld/", "libero/")) and "max_episode_steps" in kwargs:
        # gymnasium.make would swallow it into a TimeLimit wrapper; the env truncates itself
        kwargs["max_steps"] = kwargs.pop("max_episode_steps")
    return gym.make(env_id, **kwargs)
