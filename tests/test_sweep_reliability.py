"""Sweep / ``fit --k auto`` reliability (issue 17): a trial's identity covers the features it read, duplicate
trials are run once, ``--k auto`` honours ``--holdout`` and refuses empty validation slices, stale temp files are
cleaned, a full disk is one error line, SIGINT stops a sweep quickly with its finished trials saved."""

from __future__ import annotations

import polars as pl
import pytest

from _stage2 import make_run, synthetic_rows
from pipeline.errors import MicroError

FAST = "n_init=1; max_iter=30"
quiet = lambda m: None  # noqa: E731


def reversed_rows(rows):
    return [dict(r, chosen=r["rejected"], rejected=r["chosen"]) for r in rows]


def test_changed_texts_or_labels_rerun_trials(tmp_path):
    from pipeline.sweep.runner import run_sweep

    rows = synthetic_rows(n_per_group=20, seed=3)
    out = tmp_path / "res.parquet"
    run = make_run(tmp_path, rows, "run")
    first = run_sweep(run, f"k=1,2; {FAST}", seeds=2, jobs=1, out=out, log=quiet, plots=False)
    assert (first.new, first.skipped) == (4, 0)
    same = run_sweep(run, f"k=1,2; {FAST}", seeds=2, jobs=1, out=out, log=quiet, plots=False)
    assert (same.new, same.skipped) == (0, 4)
    # every pair reversed (same pair ids, same splits and groups): the features differ, so every trial is new
    make_run(tmp_path, reversed_rows(rows), "run")
    rev = run_sweep(run, f"k=1,2; {FAST}", seeds=2, jobs=1, out=out, log=quiet, plots=False)
    assert (rev.new, rev.skipped) == (4, 0)
    assert not set(rev.frame["config_hash"]) & set(first.frame["config_hash"])
    # the groups relabelled (texts unchanged): new trials too
    relabelled = [dict(r, group={"g0": "g1", "g1": "g2", "g2": "g0"}[r["group"]]) for r in reversed_rows(rows)]
    make_run(tmp_path, relabelled, "run")
    lab = run_sweep(run, f"k=1,2; {FAST}", seeds=2, jobs=1, out=out, log=quiet, plots=False)
    assert (lab.new, lab.skipped) == (4, 0)
    assert pl.read_parquet(out).height == 12


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("rel")
    return make_run(root, synthetic_rows(n_per_group=20, seed=4), "run")


def test_duplicate_trials_run_once_with_a_note(run, tmp_path):
    from pipeline.sweep.runner import run_sweep

    notes = []
    res = run_sweep(run, f"k=2,2,02; {FAST}", seeds=[0, 1, 1], jobs=1, out=tmp_path / "a.parquet", log=notes.append)
    assert res.new == 2 and res.frame.height == 2 and sorted(res.frame["seed"].to_list()) == [0, 1]
    assert any("2 duplicate configuration(s) dropped" in n and "1 distinct of 3 given" in n for n in notes), notes
    assert any("1 repeated seed(s) dropped" in n for n in notes), notes
    notes.clear()
    res = run_sweep(
        run,
        "k=1,2; n_init=1; max_iter=30",
        samples=5,
        seeds=1,
        jobs=1,
        out=tmp_path / "b.parquet",
        log=notes.append,
        plots=False,
    )
    assert res.new == 2 and sorted(res.frame["k"].to_list()) == [1, 2]
    assert any("3 duplicate configuration(s) dropped" in n and "2 distinct of 5 drawn" in n for n in notes), notes


def test_empty_validation_slice_is_an_error_not_a_success(run, tmp_path):
    from pipeline.fit.select_k import auto_k
    from pipeline.sweep.runner import run_sweep

    res = run_sweep(run, f"k=1,2; {FAST}", seeds=2, holdout=1e-4, jobs=1, out=tmp_path / "r.parquet", log=quiet)
    assert res.frame.height == 4 and res.frame["error"].is_not_null().all()
    assert all("empty validation slice" in e for e in res.frame["error"].to_list())
    assert res.k_selection is None
    with pytest.raises(MicroError, match="K selection failed: no successful trials .*empty validation slice"):
        auto_k(
            run, "1..2", {"n_init": 1, "max_iter": 30}, seeds=2, holdout=1e-4, jobs=1, out_dir=tmp_path / "k", log=quiet
        )
    with pytest.raises(MicroError, match=r"--k auto needs --holdout > 0"):
        auto_k(run, "1..2", {}, holdout=0.0, out_dir=tmp_path / "k0", log=quiet)


def test_fit_k_auto_honours_holdout(run, tmp_path, monkeypatch, capsys):
    import json

    import pipeline.core.parallel as B
    from _stage2 import run_cli

    monkeypatch.setattr(B, "n_cores", lambda: 1)
    args = ["fit", run, "--k", "auto", "--k-range", "1..2", "--n-init", "1", "--max-iter", "30", "--quiet"]
    code, out, err = run_cli(monkeypatch, capsys, *args, "--holdout", "0.5", "--out", tmp_path / "m")
    assert code == 0, err
    sel = json.loads((tmp_path / "m" / "k_selection" / "k_selection.json").read_text())
    trials = pl.read_parquet(tmp_path / "m" / "k_selection" / "results.parquet")
    assert sel["holdout"] == 0.5 and set(trials["holdout"].to_list()) == {0.5}
    train_n = trials["train_n"] + trials["val_n"]
    assert (trials["val_n"] / train_n).mean() > 0.35  # half the train prompts validate, not the default 20 %
    code, out, err = run_cli(monkeypatch, capsys, *args, "--holdout", "0", "--out", tmp_path / "m0")
    assert code == 2 and err.strip().splitlines()[-1] == (
        "error: --k auto needs --holdout > 0: K is chosen on the held-out train prompts"
    )


@pytest.fixture
def small_disk(tmp_path):
    """A real 512 KiB tmpfs at tmp_path/disk (skipped where mounting is not permitted), unmounted afterwards."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk) -> None:
    """Write a filler file until the disk is full."""
    with open(disk / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


def files(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != "filler"}


def test_full_disk_is_one_error_line_and_loses_nothing(run, small_disk, monkeypatch, capsys):
    from _stage2 import run_cli

    out = small_disk / "s" / "res.parquet"
    sweep = ["sweep", run, "--seeds", "2", "--jobs", "1", "--out", out]
    code, _, err = run_cli(monkeypatch, capsys, *sweep, "--grid", f"k=1,2; {FAST}")
    assert code == 0, err
    before = files(small_disk)
    fill(small_disk)
    code, _, err = run_cli(monkeypatch, capsys, *sweep, "--grid", f"k=1,2,3; {FAST}")
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err and sum(ln.startswith("error:") for ln in lines) == 1, err
    assert lines[-1].startswith(f"error: cannot write {out}: No space left on device; 2 finished trial(s) not saved")
    assert files(small_disk) == before  # the saved trials intact, no temp file left
    code, _, err = run_cli(
        monkeypatch, capsys, "fit", run, "--k", "2", "--n-init", "1", "--quiet", "--out", small_disk / "m"
    )
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err and lines[-1].startswith("error: cannot write "), err
    assert "No space left on device" in lines[-1] and str(small_disk / "m") in lines[-1]
    assert files(small_disk) == before
    (small_disk / "filler").unlink()  # space again: the rerun runs only the trials not saved
    code, out_text, err = run_cli(monkeypatch, capsys, *sweep, "--grid", f"k=1,2,3; {FAST}")
    assert code == 0 and "(2 new, 4 already there)" in " ".join((out_text + err).split()), err


def test_stale_temp_files_of_killed_runs_are_removed(run, tmp_path):
    import subprocess
    import tempfile
    from pathlib import Path

    from pipeline.sweep.runner import run_sweep

    out = tmp_path / "res.parquet"
    tmp = tmp_path / f".{out.name}.k1ll3d.tmp"  # what atomic_path leaves when kill -9 cuts a write short
    tmp.write_bytes(b"PAR1 half written")
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = Path(tempfile.gettempdir()) / f"micro-sweep-{dead.pid}-abc"  # a killed run's shared feature copy
    stale.mkdir()
    (stale / "delta.npy").write_bytes(b"x" * 100)
    notes = []
    res = run_sweep(run, f"k=1; {FAST}", seeds=1, jobs=1, out=out, log=notes.append, plots=False)
    assert res.new == 1 and not tmp.exists() and not stale.exists()
    assert any(f"removed {tmp}" in n for n in notes), notes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res.parquet"]


def test_sigint_stops_a_sweep_quickly_and_saves_finished_trials(run, tmp_path):
    import os
    import re
    import signal
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out, log = tmp_path / "res.parquet", tmp_path / "log.txt"
    cmd = [
        sys.executable,
        "-c",
        "import sys, cli; sys.exit(cli.main())",
        "sweep",
        str(run),
        "--grid",
        "k=5; n_init=1; max_iter=1000000; tol=1e-2,0",  # tol=1e-2: ~1 s; tol=0: a million EM steps (an hour)
        "--seeds",
        "1",
        "--jobs",
        "2",
        "--out",
        str(out),
    ]
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    with open(log, "w") as fh:
        p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=root)
    try:
        t0 = time.monotonic()
        while "[1/" not in log.read_text() and p.poll() is None and time.monotonic() - t0 < 240:
            time.sleep(0.1)
        assert p.poll() is None, log.read_text()
        p.send_signal(signal.SIGINT)
        t = time.monotonic()
        rc = p.wait(timeout=120)
        seconds = time.monotonic() - t
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    text = log.read_text()
    print(f"SIGINT -> exit in {seconds:.2f} s")
    assert rc == 130 and "Traceback" not in text, text
    # the other worker is inside a trial that needs an hour: stopping in a minute means it was abandoned, not awaited
    # (~1.1 s here, most of it the interpreter's exit with torch loaded; before WAKE_S it waited for that trial)
    assert seconds < 60, f"took {seconds:.1f} s to stop"
    m = re.search(r"interrupted: (\d+) finished trial\(s\) of this run saved to (\S+);", text)
    assert m and m.group(2) == str(out), text
    saved = pl.read_parquet(out)
    assert saved.height == int(m.group(1)) == 1 and saved["error"].is_null().all()
    assert saved["tol"].to_list() == [1e-2]  # the quick trial, saved; the hour-long one abandoned
    assert sorted(q.name for q in tmp_path.iterdir()) == ["log.txt", "res.parquet"]  # no temp file
    assert not list(Path(tempfile.gettempdir()).glob(f"micro-sweep-{p.pid}-*"))  # the shared features removed


def test_long_eval_steps_are_never_silent(tmp_path, monkeypatch):
    import time

    import pipeline.evaluate.evaluate as E
    import pipeline.route.route as R
    from _stage2 import make_bundle

    rows = synthetic_rows(n_per_group=16, topic=True, seed=5)
    bundle = make_bundle(tmp_path, rows, k=2, n_init=1, max_iter=20)
    original = R.route_seeds

    def slow(*a, **k):  # a step as slow as the routers of a many-group eval
        time.sleep(1.2)
        return original(*a, **k)

    monkeypatch.setattr(R, "route_seeds", slow)
    monkeypatch.setattr(E, "HEARTBEAT", 0.3)
    lines = []
    res = E.evaluate(bundle, tmp_path / "bundle_run", seeds=(0,), log=lines.append)
    beats = [i for i, ln in enumerate(lines) if ln.startswith("  ... micro (routers): still running, ")]
    assert len(beats) >= 2, lines  # (other steps may beat too on a loaded machine: only ones over 0.3 s)
    before = next(i for i, ln in enumerate(lines) if ln.startswith("  hyre + micro-hyre:"))
    after = next(i for i, ln in enumerate(lines) if ln.startswith("  micro (B="))
    assert before < beats[0] and beats[-1] < after and res.rows, lines  # while the step runs, not after it
    n = len(lines)
    time.sleep(0.7)
    assert len(lines) == n  # the heartbeat stops with the command
