"""policydistill.envs (installed from the top-level `envs/` folder via setuptools package-dir)."""

if __name__ != "policydistill.envs":  # imported as a top-level package from the repository root
    raise ImportError("import policydistill.envs, not envs: this folder is installed as a sub-package of policydistill")
