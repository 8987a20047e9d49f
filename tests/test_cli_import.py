"""`dicomhub import`: the CLI run as a process against a real `dicomhub serve` process, over
real sockets: folders, ZIP and tar files, DICOMDIR media, non-DICOM files skipped and listed,
duplicates, refusals, and an interrupted import resumed without sending anything twice."""

from __future__ import annotations

import io
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import httpx
import pytest
from pydicom.data import get_testdata_file

from tests.conftest import ROOT, running_server
from tests.dicomfiles import storable_files
from tests.issuer import AUDIENCE, Issuer

ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"))  # the server and the CLI run this code
VALID_UID = re.compile(r"[0-9.]{1,64}")  # bad_sequence.dcm's is not: the server refuses it
NOT_DICOM = {"README.txt": b"not an image\n", "notes.json": b"{}", "short.dcm": b"DICM"}


def served(tmp_path: Path, **settings: str):
    data = tmp_path / "served"
    data.mkdir()
    return running_server(data, **settings)


@pytest.fixture
def server(tmp_path):
    with served(tmp_path) as (url, _):
        yield url


def dicomhub_import(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dicomhub", "import", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=env or ENV,
    )


def summary(stdout: str) -> dict[str, int]:
    """The counts of the summary (its first word after each name)."""
    out = {}
    for line in stdout.splitlines():
        name, _, value = line.partition(" ")
        if name in ("stored", "duplicates", "refused", "skipped", "resumed"):
            out[name] = int(value.split()[0])
    return out


def stored_instances(url: str) -> list[str]:
    """The SOP Instance UIDs the server holds (QIDO-RS, page by page)."""
    uids: list[str] = []
    while True:
        r = httpx.get(f"{url}/v2/instances", params={"limit": 200, "offset": len(uids)})
        assert r.status_code in (200, 204), r.text
        page = r.json() if r.status_code == 200 else []
        uids += [item["00080018"]["Value"][0] for item in page]
        if len(page) < 200:
            return uids


def media(tmp_path: Path) -> tuple[Path, set[str]]:
    """pydicom's and pydicom-data's files as a user finds them: a folder tree, a ZIP of some,
    a tar.gz of others, and files that are not DICOM instances among them."""
    files = [f for f in storable_files(extra=True) if VALID_UID.fullmatch(f.study)]
    root = tmp_path / "media"
    (root / "a" / "b").mkdir(parents=True)
    third = len(files) // 3
    for n, f in enumerate(files[:third]):
        (root / "a" / ("b" if n % 2 else "") / f"{n:04d}_{f.name}").write_bytes(f.data)
    with zipfile.ZipFile(root / "some.zip", "w") as z:
        for n, f in enumerate(files[third : 2 * third]):
            z.writestr(f"zipped/{n:04d}_{f.name}", f.data)
        z.writestr("zipped/README.txt", NOT_DICOM["README.txt"])
    with tarfile.open(root / "a" / "others.tar.gz", "w:gz") as t:
        for n, f in enumerate(files[2 * third :]):
            info = tarfile.TarInfo(f"tarred/{n:04d}_{f.name}")
            info.size = len(f.data)
            t.addfile(info, io.BytesIO(f.data))
    for name, data in NOT_DICOM.items():
        (root / "a" / "b" / name).write_bytes(data)
    return root, {f.sop for f in files}


def test_a_folder_with_zip_and_tar_files_then_again_as_duplicates(server, tmp_path):
    root, sops = media(tmp_path)
    run = dicomhub_import("--url", server + "/v2", str(root), cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    counts = summary(run.stdout)
    assert counts == {
        "stored": len(sops),
        "duplicates": 0,
        "refused": 0,
        "skipped": len(NOT_DICOM) + 1,
        "resumed": 0,
    }
    assert sorted(stored_instances(server)) == sorted(sops)
    for name in NOT_DICOM:  # skipped files are listed by name
        assert re.search(rf"^  {re.escape(str(root))}/a/b/{name}$", run.stdout, re.M), name
    assert f"{root}/some.zip!zipped/README.txt" in run.stdout
    assert not list(tmp_path.glob(".dicomhub-import-*")), "a finished import keeps no state"
    # stderr is not a terminal: plain progress lines, the last one at 100%
    lines = run.stderr.splitlines()
    assert lines and "\r" not in run.stderr and "\x1b" not in run.stderr
    assert re.fullmatch(r"import: \[#+\] (\S+)/\1 files .* instances/s  ETA \S+", lines[-1])

    again = dicomhub_import(str(root), cwd=tmp_path, env={**ENV, "DICOMHUB_URL": server})
    assert again.returncode == 0, again.stdout + again.stderr
    assert summary(again.stdout)["stored"] == 0
    assert summary(again.stdout)["duplicates"] == len(sops)
    assert len(stored_instances(server)) == len(sops)


def test_dicomdir_media_imports_the_files_it_references(server, tmp_path):
    disc = tmp_path / "disc"
    shutil.copytree(Path(get_testdata_file("DICOMDIR")).parent / "TINY_ALPHA", disc)
    run = dicomhub_import("--url", server, str(disc / "DICOMDIR"), cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert summary(run.stdout)["stored"] == 50  # the DICOMDIR's 50 IMAGE records
    assert summary(run.stdout)["skipped"] == 1
    assert f"skipped: a DICOMDIR, not an instance: 1 file(s)\n  {disc}/DICOMDIR\n" in run.stdout
    assert len(stored_instances(server)) == 50

    folder = dicomhub_import("--url", server, str(disc), cwd=tmp_path)  # the disc's folder
    assert folder.returncode == 0, folder.stdout + folder.stderr
    counts = summary(folder.stdout)
    assert (counts["duplicates"], counts["stored"], counts["skipped"]) == (50, 0, 2)  # + README


def test_an_interrupted_import_resumes_without_sending_anything_twice(server, tmp_path):
    root, sops = media(tmp_path)
    command = [sys.executable, "-m", "dicomhub", "import", "--url", server]
    command += ["--parallel", "1", "--batch", "1", str(root)]
    first = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C reaches it even when this run ignores SIGINT (a job started in the
        # background by a shell without job control), which the child would inherit
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    for line in first.stderr:  # some progress, then Ctrl-C
        if line.startswith("import: "):
            first.send_signal(signal.SIGINT)
            break
    out, err = first.communicate(timeout=60)
    assert first.returncode == 130, out + err
    assert "stopping once the requests under way are answered" in err
    sent = summary(out)["stored"]
    assert 0 < sent < len(sops)
    [state] = tmp_path.glob(".dicomhub-import-*.jsonl")
    assert f"state       {state.name} (kept" in out
    assert len(stored_instances(server)) == sent

    second = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"resuming: {sent} files acknowledged by an earlier run" in second.stderr
    counts = summary(second.stdout)
    assert (counts["resumed"], counts["stored"]) == (sent, len(sops) - sent)
    assert counts["duplicates"] == 0, "nothing acknowledged was sent again"
    assert sorted(stored_instances(server)) == sorted(sops)
    assert not state.exists()


def test_refused_files_are_listed_with_the_reason_and_exit_1(server, tmp_path):
    good = storable_files()[:3]
    folder = tmp_path / "mixed"
    folder.mkdir()
    for f in good:
        (folder / f.name).write_bytes(f.data)
    shutil.copy(get_testdata_file("JPEGLSNearLossless_08.dcm"), folder / "no-study.dcm")
    run = dicomhub_import("--url", server, str(folder), cwd=tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert summary(run.stdout)["stored"] == len(good)
    assert summary(run.stdout)["refused"] == 1
    assert (
        "refused: 0xA900 validation failure: DICOM100: StudyInstanceUID is missing or empty: "
        f"1 file(s)\n  {folder}/no-study.dcm\n"
    ) in run.stdout
    [state] = tmp_path.glob(".dicomhub-import-*.jsonl")  # kept: a rerun tries the refused again
    rerun = dicomhub_import("--url", server, str(folder), cwd=tmp_path)
    counts = summary(rerun.stdout)
    assert (counts["resumed"], counts["refused"], counts["stored"]) == (len(good), 1, 0)


def test_usage_errors_exit_2_and_an_unreachable_server_exits_1(tmp_path):
    missing = dicomhub_import(
        "--url", "http://127.0.0.1:9/v2", str(tmp_path / "nope"), cwd=tmp_path
    )
    assert missing.returncode == 2
    assert "no such file or folder" in missing.stderr
    bad = dicomhub_import("--parallel", "0", str(tmp_path), cwd=tmp_path)
    assert bad.returncode == 2
    (tmp_path / "ct.dcm").write_bytes(storable_files()[0].data)
    down = dicomhub_import("--url", "http://127.0.0.1:9/v2", str(tmp_path / "ct.dcm"), cwd=tmp_path)
    assert down.returncode == 1
    assert "dicomhub import: http://127.0.0.1:9/v2: " in down.stderr
    with pytest.raises(SystemExit):  # no flag carries the token
        from dicomhub.cli import _parser

        _parser().parse_args(["import", "--token", "secret", str(tmp_path)])


def test_the_token_comes_from_a_file_or_the_environment_and_401_403_exit_2(tmp_path):
    issuer = Issuer()
    ct = tmp_path / "ct.dcm"
    ct.write_bytes(storable_files()[0].data)
    try:
        with served(tmp_path, auth_issuer=issuer.url, auth_audience=AUDIENCE) as (url, _):
            anonymous = dicomhub_import("--url", url, str(ct), cwd=tmp_path)
            assert anonymous.returncode == 2, anonymous.stdout + anonymous.stderr
            assert "401" in anonymous.stderr
            reader = {**ENV, "DICOMHUB_TOKEN": issuer.token(roles=["globalReader"])}
            refused = dicomhub_import("--url", url, str(ct), cwd=tmp_path, env=reader)
            assert refused.returncode == 2, refused.stdout + refused.stderr
            assert "403" in refused.stderr
            (tmp_path / "token").write_text(issuer.token(roles=["globalWriter"]) + "\n")
            writer = dicomhub_import(
                "--url", url, "--token-file", str(tmp_path / "token"), str(ct), cwd=tmp_path
            )
            assert writer.returncode == 0, writer.stdout + writer.stderr
            assert summary(writer.stdout)["stored"] == 1
    finally:
        issuer.server.shutdown()


def test_on_a_terminal_a_bar_is_redrawn_in_place(server, tmp_path):
    folder = tmp_path / "few"
    folder.mkdir()
    for f in storable_files()[:20]:
        (folder / f.name).write_bytes(f.data)
    primary, secondary = pty.openpty()  # stderr is a terminal; stdout is not
    run = subprocess.run(
        [sys.executable, "-m", "dicomhub", "import", "--url", server, "--batch", "2", str(folder)],
        stdout=subprocess.PIPE,
        stderr=secondary,
        cwd=tmp_path,
        env=ENV,
        timeout=120,
    )
    os.close(secondary)
    shown = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the terminal's other end is closed
            break
        if not chunk:
            break
        shown += chunk
    os.close(primary)
    assert run.returncode == 0, run.stdout
    text = shown.decode()
    assert text.count("\r") >= 2 and "\x1b[K" in text and text.endswith("\n")
    assert re.search(r"\[#{30}\] 20/20 files +\S+/\S+ MB +[\d,]+ instances/s +ETA 0:00", text)


def test_straight_into_a_data_folder_that_no_server_is_using(tmp_path):
    root, sops = media(tmp_path)
    data = tmp_path / "served"
    run = dicomhub_import("--data-dir", str(data), str(root), cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert summary(run.stdout)["stored"] == len(sops)
    with running_server(data) as (url, _):  # what a server then serves from that folder
        assert sorted(stored_instances(url)) == sorted(sops)
        busy = dicomhub_import("--data-dir", str(data), str(root), cwd=tmp_path)
        assert busy.returncode == 1
        assert f"another dicomhub serve is using {data}" in busy.stderr
    again = dicomhub_import("--data-dir", str(data), str(root), cwd=tmp_path)
    assert summary(again.stdout)["duplicates"] == len(sops)
