"""policydistill.robots (installed from the top-level `robots/` folder via setuptools package-dir)."""

if __name__ != "policydistill.robots":  # imported as a top-level package from the repository root
    raise ImportError(
        "import policydistill.robots, not robots: this folder is installed as a sub-package of policydistill"
    )
