"""The stand-in server's route table, recordings folders and request log."""

import json
from pathlib import Path

import requests

from ecr_pipelines.dev.standins import Reply, StandInServer


def test_routes_from_a_folder_with_query_matching_templates_and_dirs(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a.xml").write_bytes(b"<a/>")
    (tmp_path / "page1.json").write_text('[{"id": 1}]')
    (tmp_path / "page2.json").write_text('[{"id": 2}]')
    (tmp_path / "index.json").write_text('{"url": "{{base_url}}/files/a.xml"}')
    (tmp_path / "routes.json").write_text(
        json.dumps(
            [
                {"path": "/list", "file": "page1.json", "headers": {"numberOfPages": "2"}},
                {"path": "/list", "query": {"pageNumber": "2"}, "file": "page2.json"},
                {"path": "/index.json", "file": "index.json", "template": True},
                {"path": "/files/*", "dir": "files"},
                {"path": "/flaky", "body": "ok", "faults": [{"status": 500, "times": 1}]},
            ]
        )
    )
    with StandInServer.from_folder(tmp_path) as server:
        first = requests.get(server.url("/list"), params={"pageNumber": "1", "pageSize": "10"}, timeout=5)
        assert first.json() == [{"id": 1}] and first.headers["numberOfPages"] == "2"
        assert requests.get(server.url("/list?pageNumber=2"), timeout=5).json() == [{"id": 2}]
        index = requests.get(server.url("/index.json"), timeout=5).json()
        assert index["url"] == server.url("/files/a.xml")
        assert requests.get(index["url"], timeout=5).content == b"<a/>"
        assert requests.get(server.url("/files/missing.xml"), timeout=5).status_code == 404
        assert requests.get(server.url("/files/../routes.json"), timeout=5).status_code == 404
        assert requests.get(server.url("/flaky"), timeout=5).status_code == 500
        assert requests.get(server.url("/flaky"), timeout=5).text == "ok"
        assert requests.get(server.url("/nowhere"), timeout=5).status_code == 404
        assert [r.query for r in server.requests_to("/list")] == [
            {"pageNumber": "1", "pageSize": "10"},
            {"pageNumber": "2"},
        ]


def test_handlers_mounts_head_and_recorded_bodies(tmp_path: Path) -> None:
    (tmp_path / "routes.json").write_text(json.dumps([{"path": "/api/x", "json": {"v": 1}}]))
    with StandInServer() as server:
        server.load_routes(tmp_path, mount="/svc")
        server.route("/echo", method="POST", handler=lambda req: Reply.json({"got": req.json()}, status=201))
        assert requests.get(server.url("/svc/api/x"), timeout=5).json() == {"v": 1}
        head = requests.head(server.url("/svc/api/x"), timeout=5)
        assert head.status_code == 200 and head.content == b"" and head.headers["ETag"]
        answer = requests.post(server.url("/echo"), json={"a": 1}, timeout=5)
        assert (answer.status_code, answer.json()) == (201, {"got": {"a": 1}})
        assert server.requests_to("/echo", "POST")[0].json() == {"a": 1}
