"""policydistill.envs (installed from the top-level `envs/` folder via setuptools package-dir).

Gymnasium-registered simulation tasks: ``metaworld/<task>-v3`` for every Meta-World v3 task
(see ``metaworld_env`` for the observation, action, seeding and episode-limit conventions),
suites (``metaworld/mt10``, ...), ``expand`` and ``make(id, **kwargs)``, all in ``registry``.
"""

if __name__ != "policydistill.envs":  # imported as a top-level package from the repository root
    raise ImportError("import policydistill.envs, not envs: this folder is installed as a sub-package of policydistill")

from .registry import SUITES, expand, make, register_all, register_suite, registered_ids, suite_names  # noqa: E402

register_all()

__all__ = ["make", "register_all", "registered_ids", "SUITES", "expand", "register_suite", "suite_names"]
