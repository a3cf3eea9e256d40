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
