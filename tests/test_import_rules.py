"""The import rules of docs/architecture.md, read from the source (every import statement, those
inside functions included): core imports nothing of ours, methods only core, train no policy or
model module, data no environment."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# where each installed package lives in the checkout (setuptools package-dir)
ROOTS = {
    "policydistill": REPO / "policydistill",
    "policydistill.envs": REPO / "envs",
    "policydistill.robots": REPO / "robots",
    "policydistill.cli": REPO / "cli",
}


def _modules(package: str) -> dict[str, Path]:
    """Module name → file for every module of ``package`` (mapped folders included)."""
    root = ROOTS.get(package) or ROOTS["policydistill"].joinpath(*package.split(".")[1:])
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join([package, *parts])] = path
    return out


def _imports(module: str, path: Path) -> set[str]:
    """Absolute names of every policydistill module ``module`` imports."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)  # `from pkg import submodule`
    return {name for name in found if name == "policydistill" or name.startswith("policydistill.")}


def _violations(package: str, allowed: tuple[str, ...] = (), forbidden: tuple[str, ...] = ()) -> list[str]:
    def under(name: str, prefixes: tuple[str, ...]) -> bool:
        return any(name == p or name.startswith(p + ".") for p in prefixes)

    bad = []
    for module, path in _modules(package).items():
        for name in sorted(_imports(module, path)):
            if under(name, (package,)) or name == "policydistill":
                continue
            if (allowed and not under(name, allowed)) or under(name, forbidden):
                bad.append(f"{path.relative_to(REPO)} imports {name}")
    return bad


def test_core_imports_nothing_of_ours() -> None:
    assert _violations("policydistill.core", allowed=("policydistill.core",)) == []


def test_methods_import_only_core() -> None:
    # policydistill.registry is the dependency-free "module:Attr" registry every family uses
    assert _violations("policydistill.methods", allowed=("policydistill.core", "policydistill.registry")) == []


def test_train_imports_no_policy_or_model() -> None:
    assert _violations("policydistill.train", forbidden=("policydistill.policies", "policydistill.models")) == []


def test_data_imports_no_environment() -> None:
    assert _violations("policydistill.data", forbidden=("policydistill.envs", "policydistill.robots")) == []


@pytest.mark.parametrize(
    "package", ["policydistill.core", "policydistill.methods", "policydistill.train", "policydistill.data"]
)
def test_the_checker_sees_each_package(package: str) -> None:
    modules = _modules(package)
    assert len(modules) >= 3 and all(path.exists() for path in modules.values())


def test_the_checker_resolves_relative_and_lazy_imports(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("from ..envs import make\ndef f():\n    from ..core.flowmap import FlowBatch\n")
    assert _imports("policydistill.data.m", src) == {
        "policydistill.envs",
        "policydistill.envs.make",
        "policydistill.core.flowmap",
        "policydistill.core.flowmap.FlowBatch",
    }
