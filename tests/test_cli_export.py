"""`dicomhub export`: the CLI run as a process against a real `dicomhub serve` process, over
HTTP; exit status 0 completed, 1 failed or unreachable, 2 refused (4xx) or bad usage."""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import httpx
import pytest

from dicomhub.cli import _parser
from dicomhub.clients import export as cli_export
from tests.conftest import ROOT, free_port, running_server
from tests.helpers import MULTIPART, multipart
from tests.test_export import FILES, A, B, C

PLAIN = re.compile(
    r"^export [0-9a-f-]+: (notStarted|running|completed|failed) \d+% exported \d+ skipped \d+$"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    data = tmp_path_factory.mktemp("served")
    with running_server(data, export_allow=f"file://{root}", job_poll_interval="0.1") as (url, _):
        r = httpx.post(
            url + "/v2/studies",
            content=multipart(*FILES.values()),
            headers={"Content-Type": MULTIPART},
            timeout=30,
        )
        assert r.status_code == 200
        yield url, root


def dicomhub_export(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dicomhub", "export", "--poll-interval", "0.1", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )


def result(stdout: str) -> dict[str, str]:
    return dict(line.split(None, 1) for line in stdout.splitlines())


def check_files(root, operation: str, wanted: set) -> None:
    for ids in FILES:
        path = root / operation / "results" / "/".join(ids)
        path = path.with_name(path.name + ".dcm")
        assert (path.read_bytes() if path.exists() else None) == (
            FILES[ids] if ids in wanted else None
        ), ids


def test_export_to_a_folder(server):
    url, root = server
    run = dicomhub_export("--url", url, "--to", f"file://{root}/cli", A, f"{B}/{B}.1")
    assert run.returncode == 0, run.stderr
    out = result(run.stdout)
    wanted = {k for k in FILES if k[0] == A or k[1] == f"{B}.1"}
    assert out["status"] == "completed"
    assert (out["exported"], out["skipped"]) == (str(len(wanted)), "0")
    assert out["errors.log"] == f"file://{root}/cli/{out['operation']}/errors.log"
    check_files(root / "cli", out["operation"], wanted)
    # stderr is not a terminal: plain lines, one per change, ending with the final state
    lines = run.stderr.splitlines()
    assert lines and "\r" not in run.stderr and "\x1b" not in run.stderr
    assert all(PLAIN.match(line) for line in lines), lines
    assert len(lines) == len(set(lines))
    assert (
        lines[-1] == f"export {out['operation']}: completed 100% exported {len(wanted)} skipped 0"
    )


def test_export_by_query_with_a_folder_path(server):
    url, root = server
    run = dicomhub_export("--url", url, "--to", str(root / "q"), "--query", "PatientID=PID-3")
    assert run.returncode == 0, run.stderr
    out = result(run.stdout)
    wanted = {k for k in FILES if k[0] == C}
    assert out["exported"] == str(len(wanted)) and out["skipped"] == "0"
    check_files(root / "q", out["operation"], wanted)


def test_refused_requests_exit_2_with_the_problem_detail(server, tmp_path):
    url, root = server
    run = dicomhub_export("--url", url, "--to", f"file://{tmp_path}", A)
    assert run.returncode == 2 and run.stdout == ""
    assert "refused: 403" in run.stderr and "--export-allow" in run.stderr
    run = dicomhub_export("--url", url, "--to", f"file://{root}", "--query", "StudyDate=x")
    assert run.returncode == 2 and "StudyDate" in run.stderr
    run = dicomhub_export("--url", url, "--to", f"file://{root}", A, "--query", "PatientID=P")
    assert run.returncode == 2 and "one of the two" in run.stderr
    assert not (tmp_path / "results").exists()


def test_an_unreachable_server_exits_1(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    run = dicomhub_export("--url", url, "--to", f"file://{tmp_path}", A)
    assert run.returncode == 1 and url in run.stderr


def test_the_token_comes_from_a_file_or_the_environment(tmp_path, monkeypatch):
    parser = argparse.ArgumentParser()
    cli_export.add_arguments(parser)
    monkeypatch.setenv("DICOMHUB_TOKEN", "from-env")
    assert cli_export.token(parser.parse_args(["--to", "/x", A])) == "from-env"
    (tmp_path / "token").write_text("from-file\n")
    args = parser.parse_args(["--to", "/x", "--token-file", str(tmp_path / "token"), A])
    assert cli_export.token(args) == "from-file"
    with pytest.raises(SystemExit):  # no flag carries it, not even as an abbreviation
        _parser().parse_args(["export", "--to", "/x", "--token", "secret", A])


def test_request_body():
    parser = argparse.ArgumentParser()
    cli_export.add_arguments(parser)
    args = parser.parse_args(
        ["--to", "/srv/x", "--deidentify-option", "cleanDescriptors", "--query", "PatientID=1"]
    )
    assert cli_export.request_body(args) == {
        "source": {"type": "query", "settings": {"query": "PatientID=1"}},
        "destination": {"type": "blob", "settings": {"url": "file:///srv/x"}},
        "deidentify": {"options": ["cleanDescriptors"]},
    }
    args = parser.parse_args(["--to", "https://acct.blob.core.windows.net/c", "--deidentify", A])
    body = cli_export.request_body(args)
    assert body["source"] == {"type": "identifiers", "settings": {"values": [A]}}
    assert body["destination"]["type"] == "azureblob" and body["deidentify"] == {"options": []}


def test_on_a_terminal_one_bar_is_redrawn_in_place():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    show = cli_export._Progress(out, "op")
    for percent, exported in ((0, 0), (50, 3), (100, 6)):
        results = {"exported": exported, "skipped": 1}
        show.update({"status": "running", "percentComplete": percent, "results": results})
    show.end()
    text = out.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n") and text.count("\n") == 1
    assert "[###############---------------]  50%  exported 3  skipped 1" in text


def test_a_failed_export_exits_1_and_the_token_is_sent(monkeypatch, capsys):
    """Over a real socket, to a stand-in for the server's two routes: a real export fails only
    after minutes of retries, with no setting to shorten them."""
    seen: list[tuple[str, str, str | None]] = []

    class Api(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: dict) -> None:
            seen.append((self.command, self.path, self.headers.get("Authorization")))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self._answer(202, {"id": "op-1", "href": "x"})

        def do_GET(self):
            state = {"operationId": "op-1", "status": "failed", "percentComplete": 40}
            self._answer(200, {**state, "results": None, "errors": ["disk full"]})

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("DICOMHUB_TOKEN", "t0ken")
        url = f"http://127.0.0.1:{server.server_port}/base/"
        args = _parser().parse_args(["export", "--url", url, "--to", "/x", A])
        assert cli_export.run(args) == 1
    finally:
        server.shutdown()
    out, err = capsys.readouterr()
    assert "status     failed" in out and "dicomhub export: disk full" in err
    assert seen == [
        ("POST", "/base/v2/export", "Bearer t0ken"),
        ("GET", "/base/v2/operations/op-1", "Bearer t0ken"),
    ]
