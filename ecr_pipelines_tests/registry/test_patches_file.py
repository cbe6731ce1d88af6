"""The legacy PATCH_* settings, loaded from a JSON or YAML file (REGISTRY_PATCHES_FILE)."""

import json
from pathlib import Path

import pytest
import yaml

from ecr_pipelines.registry.defs.resources import RegistryResource
from ecr_pipelines.registry.patches import load_patches

PATCHES = {
    "PATCH_COMPANIES": {10085: {"name": "Polar Cooling Ltd"}},
    "PATCH_USERS": {
        "10085": [{"username": "extra1", "first_name": "Ann", "last_name": "Lee", "email": "a@example.test"}]
    },
    "PATCH_LICENCES": [{"company_id": 26610, "year": 2025, "substance": "Halon 1211", "quantity": 3}],
}


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_patches_load_from_json_and_yaml(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"patches{suffix}"
    path.write_text(json.dumps(PATCHES) if suffix == ".json" else yaml.safe_dump(PATCHES))
    patches = RegistryResource(patches_file=str(path)).patches()
    assert patches.companies == {"10085": {"name": "Polar Cooling Ltd"}}  # keys normalised to strings
    assert patches.users["10085"][0]["username"] == "extra1"
    assert patches.licences[0]["company_id"] == 26610 and patches.gb_old_repr == {}


def test_unknown_patch_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "patches.json"
    path.write_text(json.dumps({"PATCH_COMPANY": {}}))
    with pytest.raises(ValueError, match="unknown keys"):
        load_patches(str(path))
    assert load_patches(None).companies == {}
