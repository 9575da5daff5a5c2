"""policydistill.cli (installed from the top-level `cli/` folder via setuptools package-dir)."""

if __name__ != "policydistill.cli":  # imported as a top-level package from the repository root
    raise ImportError("import policydistill.cli, not cli: this folder is installed as a sub-package of policydistill")
