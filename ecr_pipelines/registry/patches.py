"""The operator's overrides, the legacy ``PATCH_*`` settings, read from one JSON or YAML file.

The legacy service kept them as Python dicts in ``instance/extra/localsettings.py``; here they are
one file named by ``REGISTRY_PATCHES_FILE`` with any of ``PATCH_COMPANIES``, ``PATCH_USERS``,
``PATCH_GB_OLD_REPR`` (objects keyed by external id) and ``PATCH_LICENCES`` (a list).
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PATCH_KEYS = {
    "PATCH_COMPANIES": "companies",
    "PATCH_USERS": "users",
    "PATCH_GB_OLD_REPR": "gb_old_repr",
    "PATCH_LICENCES": "licences",
}


@dataclass
class Patches:
    """Operator overrides, as the legacy ``PATCH_*`` settings (keys are external ids as strings)."""

    companies: dict[str, dict[str, Any]] = field(default_factory=dict)
    users: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    gb_old_repr: dict[str, dict[str, Any]] = field(default_factory=dict)
    licences: list[dict[str, Any]] = field(default_factory=list)


def load_patches(path: str | None) -> Patches:
    """Read a patches file (no file: no patches)."""
    if not path:
        return Patches()
    text = Path(path).read_text(encoding="utf-8")
    data = yaml.safe_load(text) if path.endswith((".yaml", ".yml")) else json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the patches file holds one mapping")
    unknown = set(data) - set(PATCH_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; expected {sorted(PATCH_KEYS)}")
    values: dict[str, Any] = {PATCH_KEYS[k]: v for k, v in data.items()}
    # YAML and JSON give int or str keys; the sync looks companies up by str(external id).
    for key in ("companies", "users", "gb_old_repr"):
        values[key] = {str(k): v for k, v in values.get(key, {}).items()}
    return Patches(**values)
