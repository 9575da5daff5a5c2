"""The layout of docs/architecture.md: mapped packages, data-only datasets/, a wheel that holds it all."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAPPED = {"policydistill.envs": "envs", "policydistill.robots": "robots", "policydistill.cli": "cli"}


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _source_packages() -> dict[str, Path]:
    """Every folder with an __init__.py, named as it is installed."""
    found = {}
    for root, name in [(REPO / "policydistill", "policydistill"), *[(REPO / d, p) for p, d in MAPPED.items()]]:
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root)
            found[".".join([name, *rel.parts])] = init.parent
    return found


def test_every_package_is_listed_in_pyproject():
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    missing = set(_source_packages()) - listed
    assert not missing, f"add these to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"


def test_mapped_packages_import_under_policydistill_only():
    for pkg, folder in MAPPED.items():
        # From the repository root a bare `import envs` would find the folder: it must refuse.
        proc = subprocess.run([sys.executable, "-c", f"import {folder}"], cwd=REPO, capture_output=True, text=True)
        assert proc.returncode != 0 and "ImportError" in proc.stderr, proc.stderr
        proc = subprocess.run([sys.executable, "-c", f"import {pkg}"], cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def test_datasets_folder_is_data_only():
    assert not list((REPO / "datasets").rglob("__init__.py")), "datasets/ must not shadow Hugging Face `datasets`"
    assert not list((REPO / "datasets").rglob("*.py"))


def test_tests_conftest_not_at_root():
    assert not (REPO / "conftest.py").exists()


def test_wheel_contains_mapped_packages_and_data(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0 and "No module named" in proc.stderr and "setuptools" in proc.stderr:
        pytest.skip("setuptools is not installed in this environment")
    assert proc.returncode == 0, proc.stderr
    wheel = next(tmp_path.glob("policydistill-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for pkg in _source_packages():
        assert pkg.replace(".", "/") + "/__init__.py" in names, f"{pkg} missing from the wheel"
    for top in ("envs/", "robots/", "cli/"):
        assert not any(n.startswith(top) for n in names), f"{top} must only ship as policydistill.{top[:-1]}"
    # data files that live beside the mapped packages (scene XML, robot configs, ...) ship too
    for pkg, folder in MAPPED.items():
        for f in (REPO / folder).rglob("*"):
            if f.is_file() and f.suffix not in {".py", ".pyc"} and "__pycache__" not in f.parts:
                rel = f.relative_to(REPO / folder).as_posix()
                assert f"{pkg.replace('.', '/')}/{rel}" in names, f"data file {folder}/{rel} missing from the wheel"
    assert any(n.endswith("entry_points.txt") for n in names)
