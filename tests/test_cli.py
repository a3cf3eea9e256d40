"""cli.main: user errors are one clear message and a non-zero exit, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def micro(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "import cli; cli.main()", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (("embed", "x.parquet", "--out", "y", "--bogus"), "No such option: --bogus"),
        (("fit",), "Missing argument"),
        (("fit", "/nonexistent-run"), "error: /nonexistent-run: not a run folder"),
        (("data", "prepare", "nope", "x.json", "-o", "y.parquet"), "unknown recipe 'nope'"),
    ],
)
def test_user_errors_are_one_message_without_traceback(args, message):
    r = micro(*args)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_help_lists_every_stage():
    r = micro("--help")
    assert r.returncode == 0
    for cmd in ("data", "embed", "fit", "route", "eval", "score", "sweep", "demo"):
        assert cmd in r.stdout
