"""The suite's promise to CI: a tier whose component cannot run here is skipped, naming it,
and listed at the end; under CI=true it fails instead, so CI cannot be green without it. Run
on the Orthanc tier with Orthanc hidden from PATH."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def run_without_orthanc(ci: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=os.path.dirname(sys.executable), CI=ci)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_e2e_orthanc_dicomweb.py",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_missing_tier_is_skipped_and_named_locally():
    run = run_without_orthanc("")
    assert run.returncode == 0, run.stdout[-2000:]
    assert "2 skipped" in run.stdout
    assert "Orthanc: skipped: Orthanc: Debian orthanc is not installed" in run.stdout


def test_a_missing_tier_fails_under_ci():
    run = run_without_orthanc("true")
    assert run.returncode != 0
    assert "CI needs every tier: Orthanc: Debian orthanc is not installed" in run.stdout
