"""Secrets (the FHIR token, password and client secret) come from the environment or a file,
never from a flag that ``ps`` shows; a database password on the command line is warned about."""

from __future__ import annotations

import logging

import pytest

from dicomhub.cli import main, parse_command_line
from dicomhub.settings import Settings

SECRETS = ["fhir_token", "fhir_password", "fhir_client_secret"]


def test_the_secrets_are_these():
    assert Settings.secrets() == SECRETS


@pytest.mark.parametrize("name", SECRETS)
@pytest.mark.parametrize("form", ["separate", "joined"])
def test_a_secret_flag_is_refused(capsys, name, form):
    flag = "--" + name.replace("_", "-")
    argv = [flag, "s3cret-value"] if form == "separate" else [f"{flag}=s3cret-value"]
    with pytest.raises(SystemExit) as stopped:
        parse_command_line(["serve", *argv])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"{flag} is not taken on the command line" in err
    assert f"DICOMHUB_{name.upper()}" in err and f"{flag}-file FILE" in err
    assert "s3cret-value" not in err


def test_secrets_from_the_environment(monkeypatch):
    monkeypatch.setenv("DICOMHUB_FHIR_TOKEN", "from-env")
    monkeypatch.setenv("DICOMHUB_FHIR_CLIENT_SECRET", "secret-env")
    _, settings = parse_command_line(["serve"])
    assert settings.fhir.token == "from-env" and settings.fhir.client_secret == "secret-env"


def test_secrets_from_files(tmp_path, monkeypatch):
    (tmp_path / "token").write_text("from-file\n")
    (tmp_path / "password").write_text("pa:ss  \n")
    monkeypatch.setenv("DICOMHUB_FHIR_PASSWORD_FILE", str(tmp_path / "password"))
    _, settings = parse_command_line(["serve", "--fhir-token-file", str(tmp_path / "token")])
    fhir = settings.fhir
    assert (fhir.token, fhir.password, fhir.client_secret) == ("from-file", "pa:ss", "")
    assert "from-file" not in repr(fhir) and "pa:ss" not in repr(fhir)
    # what serve --workers hands its server processes names the file, not the secret
    assert Settings.load(None, settings.environ()).fhir.token == "from-file"


@pytest.mark.parametrize(
    "problem, message",
    [
        ("missing", "cannot read the fhir_token file"),
        ("empty", "is empty"),
        ("both", "DICOMHUB_FHIR_TOKEN and fhir_token_file are both set"),
    ],
)
def test_a_bad_secret_stops_the_start(tmp_path, monkeypatch, problem, message):
    path = tmp_path / "token"
    if problem != "missing":
        path.write_text("" if problem == "empty" else "token")
    if problem == "both":
        monkeypatch.setenv("DICOMHUB_FHIR_TOKEN", "token")
    argv = ["db", "upgrade", "--data-dir", str(tmp_path), "--fhir-token-file", str(path)]
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert message in str(stopped.value.code)
    assert not (tmp_path / "index.sqlite").exists()  # stopped before anything ran


def test_a_database_password_on_the_command_line_is_warned_about(tmp_path, monkeypatch, caplog):
    def start(argv: list[str]) -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, "dicomhub"), pytest.raises(SystemExit):
            main(["db", "upgrade", "--data-dir", str(tmp_path), *argv])  # nothing listens
        return [r.getMessage() for r in caplog.records if "--index-url" in r.getMessage()]

    url = "postgresql://dicomhub:pw@127.0.0.1:1/dicomhub"
    [warning] = start(["--index-url", url])
    assert "DICOMHUB_INDEX_URL, PGPASSWORD or ~/.pgpass" in warning and "pw" not in warning
    assert start(["--index-url", "postgresql://dicomhub@127.0.0.1:1/dicomhub"]) == []
    monkeypatch.setenv("DICOMHUB_INDEX_URL", url)
    assert start([]) == []
