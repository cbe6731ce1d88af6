"""``ckan package`` on the command line: the same code, a ZIP file, no Dagster."""

import argparse
import csv
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ecr_pipelines.ckan.cli import add_subcommands, main, run
from ecr_pipelines.dev.standins import StandInServer
from ecr_pipelines.dev.standins.ckan import CkanStandIn, synthetic_table

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ckan(standin: StandInServer) -> CkanStandIn:
    stand_in = CkanStandIn(standin)
    stand_in.add_table("res", synthetic_table(2500))
    return stand_in


def member(path: Path) -> tuple[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        (name,) = archive.namelist()
        return name, archive.read(name)


def test_a_datastore_package(ckan: CkanStandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "p.zip"
    argv = ["package", "--api-url", ckan.api_url, "--resource-id", "res", "--format", "tsv"]
    code = main(
        [
            *argv,
            "--limit",
            "1500",
            "--offset",
            "10",
            "--fields",
            "_id,name",
            "--page-size",
            "400",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    name, content = member(out)
    rows = list(csv.reader(io.StringIO(content.decode()), delimiter="\t"))
    assert name == "resource.tsv" and rows[0] == ["_id", "name"] and rows[1] == ["11", "Specimen 11"]
    assert len(rows) == 1501
    printed = capsys.readouterr().out
    assert "1,500 rows x 2 fields" in printed and "offset paging" in printed


def test_forwarded_options_and_the_api_key_from_the_environment(
    ckan: CkanStandIn, standin: StandInServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckan.add_table("private", synthetic_table(10, api_key="k-123"))
    monkeypatch.setenv("MY_CKAN_KEY", "k-123")
    argv = ["package", "--api-url", ckan.api_url, "--resource-id", "private", "--q", "needle"]
    argv += ["--filters", '{"country": "Denmark"}', "--sort", "_id desc", "--api-key-env", "MY_CKAN_KEY"]
    assert main([*argv, "--out", str(tmp_path / "p.zip")]) == 0
    assert all(s["q"] == "needle" and s["filters"] == {"country": "Denmark"} for s in ckan.searches)
    assert all(s["sort"] == "_id desc" for s in ckan.searches)
    assert all(r.headers.get("Authorization") == "k-123" for r in standin.requests)
    monkeypatch.delenv("MY_CKAN_KEY")
    assert main([*argv, "--out", str(tmp_path / "q.zip")]) == 2


def test_a_url_package(ckan: CkanStandIn, tmp_path: Path) -> None:
    url = ckan.add_file("/files/report.pdf", b"%PDF-1.4 not really")
    out = tmp_path / "u.zip"
    assert (
        main(["package", "--kind", "url", "--resource-url", url, "--resource-id", "r", "--out", str(out)])
        == 0
    )
    assert member(out) == ("report.pdf", b"%PDF-1.4 not really")


def test_refusals_and_failures(ckan: CkanStandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "p.zip"
    assert main(["package", "--resource-id", "res", "--out", str(out)]) == 2
    assert "Parameter api_url is required" in capsys.readouterr().err
    assert (
        main(
            [
                "package",
                "--api-url",
                ckan.api_url,
                "--resource-id",
                "res",
                "--filters",
                "{",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "filters is not valid JSON" in capsys.readouterr().err
    ckan.add_table("broken", synthetic_table(5000, fail_at_row=3000))
    argv = ["package", "--api-url", ckan.api_url, "--resource-id", "broken", "--page-size", "1000"]
    assert main([*argv, "--out", str(out)]) == 1
    assert "nothing written" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_hook_for_the_project_command_line(ckan: CkanStandIn, tmp_path: Path) -> None:
    # What ecr_pipelines/__main__.py adds: a "ckan" sub-command whose arguments run() takes.
    parser = argparse.ArgumentParser(prog="python -m ecr_pipelines")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "p.zip"
    args = parser.parse_args(
        ["ckan", "package", "--api-url", ckan.api_url, "--resource-id", "res", "--out", str(out)]
    )
    assert args.command == "ckan" and args.ckan_command == "package"
    assert run(args) == 0
    assert member(out)[0] == "resource.csv"


@pytest.mark.slow
def test_python_dash_m(ckan: CkanStandIn, tmp_path: Path) -> None:
    out = tmp_path / "p.zip"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ecr_pipelines.ckan",
            "package",
            "--api-url",
            ckan.api_url,
            "--resource-id",
            "res",
        ]
        + ["--format", "xlsx", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "HTTP_RETRIES": "0"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "resource.xlsx, 2,500 rows" in done.stdout
    assert member(out)[0] == "resource.xlsx"


def test_anonymize_emails_rewrites_the_plain_statistics(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlalchemy as sa

    from ecr_pipelines.ckan.statistics import anonymize_email, log_request
    from ecr_pipelines.lib.database import engine_for

    engine = engine_for(database_url)
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE ckan.requests, ckan.errors, ckan.totals RESTART IDENTITY"))
        log_request(conn, resource_id="r", email="Ann@Example.org", count=None)
    monkeypatch.setenv("DATABASE_URL", database_url)
    assert main(["anonymize-emails", "--dry-run"]) == 0
    assert "1 request rows" in capsys.readouterr().out
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT email FROM ckan.requests")).scalar_one() == "Ann@Example.org"
    assert main(["anonymize-emails"]) == 0
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT email FROM ckan.requests")).scalar_one() == anonymize_email(
            "ann@example.org"
        )
