"""What recovers instead of failing: read-only caches serve every read, damaged manifests are rebuilt from the
shards (and reported), and the error boundary itself (MICRO_DEBUG / --debug, internal errors)."""

from __future__ import annotations

import json

import pytest
from _corpus import corpus_template, snapshot, ws  # noqa: F401 (fixtures)

from _stage2 import patch_backend, run_cli


def manifest(ws):
    (m,) = ws.root.glob("cache/*/manifest.json")
    return m


def ok(monkeypatch, capsys, *args):
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0 and "Traceback" not in err and "error:" not in err, err
    return out, err


def test_read_only_cache_serves_every_read(ws, monkeypatch, capsys):
    """embed (fully cached), fit, eval, route --online and score run on a read-only cache; nothing in it changes
    (no lock file, no manifest rewrite)."""
    p = ws.paths
    built = patch_backend(monkeypatch)
    ws.freeze("cache")
    before = snapshot(ws.path("cache"))
    _, err = ok(monkeypatch, capsys, "embed", p["pairs"], "--out", ws.path("rerun"), "--cache-dir", p["cache"])
    assert "newly embedded 0" in err and "cache hits 0" not in err
    ok(monkeypatch, capsys, "fit", p["run"], "--out", ws.path("m"), "--k", "2", "--n-init", "1", "--quiet")
    out, _ = ok(monkeypatch, capsys, "eval", ws.path("m"), p["run"], "--seeds", "1", "--budget-per-group", "5")
    assert "| micro |" in out
    ok(
        monkeypatch,
        capsys,
        "route",
        p["bundle"],
        "--user-data",
        p["user_table"],
        "--online",
        "--user",
        "g1",
        "--out",
        ws.path("prof"),
    )
    ok(monkeypatch, capsys, "score", p["bundle"], "--input", p["rows"], "-o", ws.path("r.jsonl"))
    assert all(not b.embedded for b in built)  # everything came from the cache
    assert snapshot(ws.path("cache")) == before


@pytest.mark.parametrize("damage", ["truncated", "not-json", "no-shards", "bad-entry"])
def test_damaged_manifest_is_rebuilt_and_reported(ws, monkeypatch, capsys, damage):
    m = manifest(ws)
    good = json.loads(m.read_text())
    m.write_text(
        {
            "truncated": m.read_text()[: len(m.read_text()) // 2],
            "not-json": "\x00\x01",
            "no-shards": json.dumps({"dim": 15}),
            "bad-entry": json.dumps({**good, "shards": [{"file": 3}]}),
        }[damage]
    )
    built = patch_backend(monkeypatch)
    _, err = ok(
        monkeypatch, capsys, "fit", ws.paths["run"], "--out", ws.path("m"), "--k", "2", "--n-init", "1", "--quiet"
    )
    assert "warning:" in err and "manifest.json" in err and f"rebuilt from the {len(good['shards'])} shard(s)" in err
    again = json.loads(m.read_text())
    assert sorted(s["file"] for s in again["shards"]) == sorted(s["file"] for s in good["shards"])
    assert again["rows"] == good["rows"] and again["dim"] == good["dim"] and not built


def test_damaged_manifest_in_a_read_only_cache_is_rebuilt_in_memory(ws, monkeypatch, capsys):
    m = manifest(ws)
    m.write_text("{")
    ws.freeze("cache")
    _, err = ok(
        monkeypatch, capsys, "fit", ws.paths["run"], "--out", ws.path("m"), "--k", "2", "--n-init", "1", "--quiet"
    )
    assert "rebuilt from the" in err and m.read_text() == "{"


def test_debug_shows_the_traceback(ws, monkeypatch, capsys):
    for args, env in (((), "1"), (("--debug",), None)):
        if env:
            monkeypatch.setenv("MICRO_DEBUG", env)
        code, _, err = run_cli(monkeypatch, capsys, *args, "fit", ws.path("norun"))
        assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")
        monkeypatch.delenv("MICRO_DEBUG", raising=False)


def test_a_bug_is_one_line_with_exit_1(ws, monkeypatch, capsys):
    import pipeline.fit.fit

    def bug(*a, **k):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(pipeline.fit.fit, "fit_run", bug)
    code, _, err = run_cli(monkeypatch, capsys, "fit", ws.paths["run"], "--out", ws.path("m"))
    assert code == 1 and "Traceback" not in err
    assert err.strip() == (
        "error: internal error (ZeroDivisionError: division by zero); this is a bug: rerun with "
        "MICRO_DEBUG=1 for the traceback and report it"
    )


def test_value_errors_of_the_math_are_user_errors(ws, monkeypatch, capsys):
    """heads/ checks its input with ValueError: exit 2 and one line, while a ValueError elsewhere is a bug."""
    import pipeline.fit.fit
    from heads.mixture import MixtureBT

    def fit_run(*a, **k):
        MixtureBT(n_components=0)._validate_params()

    monkeypatch.setattr(pipeline.fit.fit, "fit_run", fit_run)
    code, _, err = run_cli(monkeypatch, capsys, "fit", ws.paths["run"], "--out", ws.path("m"))
    assert code == 2 and err == (
        "error: The 'n_components' parameter of MixtureBT must be an int in the range [1, inf). Got 0 instead.\n"
    )

    def not_heads(*a, **k):
        raise ValueError("oops")

    monkeypatch.setattr(pipeline.fit.fit, "fit_run", not_heads)
    code, _, err = run_cli(monkeypatch, capsys, "fit", ws.paths["run"], "--out", ws.path("m"))
    assert code == 1 and "internal error (ValueError: oops)" in err
