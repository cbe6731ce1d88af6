"""``ecr_pipelines.checks.offending_rows_check`` (shared with IATI): counted by the server,
previewed with a LIMIT."""

import dagster as dg

from ecr_pipelines.checks import offending_rows_check
from ecr_pipelines.metadata import PREVIEW_ROWS
from ecr_pipelines.resources import DatabaseResource


def test_counts_every_row_and_previews_the_first_ones_in_order(db: DatabaseResource) -> None:
    result = offending_rows_check(
        db,
        "SELECT g AS n, 'x|y' AS label FROM generate_series(1, :top) g ORDER BY g DESC -- newest first",
        {"top": 50},
        severity=dg.AssetCheckSeverity.WARN,
    )
    assert not result.passed and result.severity == dg.AssetCheckSeverity.WARN
    assert result.metadata["offending_rows"].value == 50
    preview = result.metadata["preview"].value
    lines = [line for line in preview.splitlines() if line.startswith("| ")]
    assert lines[0] == "| n | label |" and lines[1] == "| 50 | x\\|y |"
    assert len(lines) == 1 + PREVIEW_ROWS and lines[-1].startswith(f"| {50 - PREVIEW_ROWS + 1} ")
    assert f"_{50 - PREVIEW_ROWS} more not shown_" in preview


def test_no_rows_pass(db: DatabaseResource) -> None:
    result = offending_rows_check(db, "SELECT 1 AS one WHERE false;")
    assert result.passed and result.metadata["offending_rows"].value == 0
    assert result.metadata["preview"].value == "_none_"
