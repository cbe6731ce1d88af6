"""The package layout holds: Dagster-free code does not import Dagster, production code does not
import the development code (which the Docker image leaves out).

Dagster-free by the layout: every module of ``ecr_pipelines`` except ``<service>/defs/``,
``resources/``, ``platform/``, ``dev/``, ``__main__.py`` and the top-level Dagster helpers
``definitions.py``, ``checks.py``, ``metadata.py`` and ``automation.py``.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ecr_pipelines"
DAGSTER_PACKAGES = ("resources", "platform", "dev")
# Top-level modules that are Dagster-side by design (the code location and helpers for defs/).
DAGSTER_MODULES = ("definitions", "checks", "metadata", "automation", "stages")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def dagster_free_modules() -> list[str]:
    names = []
    for path in _modules():
        inner = path.relative_to(PACKAGE).parts
        if "defs" in inner[:-1] or inner[0] in DAGSTER_PACKAGES or path.name == "__main__.py":
            continue
        if len(inner) == 1 and path.stem in DAGSTER_MODULES:
            continue
        names.append(_module_name(path))
    return names


# Runs in a fresh interpreter. A finder refuses the blocked packages, so nothing of them ever
# loads and each module is judged on its own imports, in one process: a module that imports a
# blocked package (itself or through another module) fails to import, and the finder records
# which project modules were importing at that moment.
_PROBE = """
import importlib, json, sys, traceback

BLOCKED = tuple(sys.argv[1].split(","))
attempts = []

class Refuse:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            frame, chain = sys._getframe(1), []
            while frame is not None:
                module = frame.f_globals.get("__name__", "")
                if module.startswith("ecr_pipelines") and module not in chain:
                    chain.append(module)
                frame = frame.f_back
            attempts.append((name, list(reversed(chain))))
            raise ModuleNotFoundError(f"{name} is blocked by the layout test", name=name)
        return None

sys.meta_path.insert(0, Refuse)
report = {}
for module in sys.argv[2:]:
    attempts.clear()
    try:
        importlib.import_module(module)
        error = None
    except ModuleNotFoundError as exc:
        error = None if attempts else traceback.format_exc(limit=3)
    except Exception:
        error = traceback.format_exc(limit=3)
    if attempts or error:
        report[module] = {"imports": attempts[:1], "error": error}
print(json.dumps(report))
"""


def _probe(blocked: tuple[str, ...], modules: list[str]) -> dict[str, dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, ",".join(blocked), *modules],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _describe(report: dict[str, dict[str, object]]) -> str:
    lines = []
    for module, found in report.items():
        if found["imports"]:
            blocked, chain = found["imports"][0]  # type: ignore[index]
            lines.append(f"{module} imports {blocked} via {' -> '.join(chain)}")
        else:
            lines.append(f"{module} fails to import:\n{found['error']}")
    return "\n".join(lines)


def test_the_layout_lists_the_dagster_free_modules() -> None:
    modules = dagster_free_modules()
    assert "ecr_pipelines.lib.settings" in modules and "ecr_pipelines.lib.database" in modules
    assert not any(
        ".defs" in m or m.startswith(("ecr_pipelines.dev", "ecr_pipelines.platform")) for m in modules
    )


def test_dagster_free_modules_do_not_import_dagster() -> None:
    report = _probe(("dagster",), dagster_free_modules())
    assert report == {}, "modules that must stay Dagster-free:\n" + _describe(report)


def test_the_code_location_loads_without_the_development_code() -> None:
    # As in the Docker image, where ecr_pipelines/dev does not exist.
    report = _probe(("ecr_pipelines.dev",), ["ecr_pipelines.definitions", "ecr_pipelines.__main__"])
    assert report == {}, "production modules that need ecr_pipelines.dev:\n" + _describe(report)


def test_only_the_command_line_refers_to_the_development_code() -> None:
    # Statically, so that a lazy import inside a function (which the probe above cannot see
    # unless it runs) is caught too; the command line imports it lazily, behind a clear message.
    offenders = []
    for path in _modules():
        inner = path.relative_to(PACKAGE).parts
        if inner[0] == "dev" or path.name == "__main__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{_module_name(path)}: {n}" for n in names if n.startswith("ecr_pipelines.dev")]
    assert offenders == []
