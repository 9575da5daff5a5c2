"""Suite names -> env ids. A suite is a name that expands to several registered env ids.

``metaworld/mt10`` is Meta-World's MT10 benchmark, ``metaworld/mt50`` all 50 v3 tasks,
``metaworld/walls`` the three wall tasks whose bundled demonstrations are multimodal
(around the wall on the left or on the right), ``metaworld/multimodal`` the tasks the scripted
generator has multimodal variants for. Other families (e.g. LIBERO) add their suites with
``register_suite``.
"""

from __future__ import annotations

from collections.abc import Iterable

MT10 = ["reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
        "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3"]
WALLS = ["push-wall-v3", "pick-place-wall-v3", "reach-wall-v3"]
MULTIMODAL = ["push-v3", "pick-place-v3", "push-wall-v3", "pick-place-wall-v3", "reach-wall-v3"]

SUITES: dict[str, list[str]] = {
    "metaworld/mt10": [f"metaworld/{t}" for t in MT10],
    "metaworld/walls": [f"metaworld/{t}" for t in WALLS],
    "metaworld/multimodal": [f"metaworld/{t}" for t in MULTIMODAL],
}


def register_suite(name: str, env_ids: Iterable[str]) -> None:
    SUITES[name] = list(env_ids)


def _mt50() -> list[str]:
    from .metaworld_env import env_id, task_names

    return [env_id(t) for t in task_names()]


def suite_names() -> list[str]:
    return sorted([*SUITES, "metaworld/mt50"])


def expand(names: str | Iterable[str]) -> list[str]:
    """Expand a comma-separated string or list of env ids / suite names / bare Meta-World task
    names (``push-v3`` means ``metaworld/push-v3``) into env ids, keeping order, without duplicates."""
    from .registration import registered_ids

    if isinstance(names, str):
        names = [n for n in names.split(",")]
    known = set(registered_ids())
    out: list[str] = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name in SUITES:
            ids = SUITES[name]
        elif name == "metaworld/mt50":
            ids = _mt50()
        elif name in known:
            ids = [name]
        elif f"metaworld/{name}" in known:
            ids = [f"metaworld/{name}"]
        else:
            raise ValueError(f"unknown task or suite {name!r}: use an env id such as metaworld/push-v3 "
                             f"or a suite ({', '.join(suite_names())}); `policydistill envs list` shows all ids")
        out.extend(i for i in ids if i not in out)
    if not out:
        raise ValueError("no task given")
    return out
