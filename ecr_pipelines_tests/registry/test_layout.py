"""The registry's shape: Dagster-free logic, and one asset module per stage named as its logic."""

import subprocess
import sys
from pathlib import Path

import ecr_pipelines.registry

PACKAGE = Path(ecr_pipelines.registry.__file__).resolve().parent


def logic_modules() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).with_suffix("")
        if relative.parts[0] == "defs":
            continue
        parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
        found.append(".".join(("ecr_pipelines", "registry", *parts)))
    return found


def test_logic_modules_import_no_dagster() -> None:
    modules = logic_modules()
    assert (
        "ecr_pipelines.registry.store.collections" in modules and "ecr_pipelines.registry.operator" in modules
    )
    # A fresh interpreter: this one has Dagster loaded already.
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'dagster'"
        " or m.startswith(('ecr_pipelines.resources', 'ecr_pipelines.metadata', 'ecr_pipelines.checks'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]"


def test_every_stage_module_has_a_logic_module_of_its_name() -> None:
    shared = {"__init__", "jobs", "resources"}
    stages = sorted(p.stem for p in (PACKAGE / "defs").glob("*.py") if p.stem not in shared)
    assert stages == [
        "collections", "licences", "links", "old_companies", "operator", "reference", "undertakings",
    ]  # fmt: skip
    for stage in stages:
        assert (PACKAGE / "store" / f"{stage}.py").exists() or (PACKAGE / f"{stage}.py").exists(), stage
