"""Scratch files and folders that a killed process never leaves behind for long (no Dagster).

Everything goes under ``ECR_HOME/scratch/<pid>-...``; each new scratch area first removes the
areas of processes that are no longer alive, so a run killed with SIGKILL mid-file leaves its
temporary copies only until the next stage starts.
"""

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ecr_pipelines.lib.settings import ecr_home


def scratch_root() -> Path:
    root = ecr_home() / "scratch"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(root: Path | None = None) -> int:
    """Remove the scratch entries of dead processes; returns how many went."""
    root = root or scratch_root()
    removed = 0
    for entry in root.iterdir():
        pid_text = entry.name.split("-", 1)[0]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed += 1
    return removed


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A private folder, removed on exit (and by the next sweep if this process dies)."""
    root = scratch_root()
    sweep(root)
    path = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-{prefix}", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def scratch_file(prefix: str, suffix: str = "") -> Iterator[str]:
    """A private file path (the file exists, empty), removed on exit."""
    root = scratch_root()
    fd, path = tempfile.mkstemp(prefix=f"{os.getpid()}-{prefix}", suffix=suffix, dir=root)
    os.close(fd)
    try:
        yield path
    finally:
        if os.path.exists(path):
            os.unlink(path)
