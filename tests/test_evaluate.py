"""micro eval on a tiny synthetic run: three groups that prefer different directions, no model anywhere.

The data and the fake backend are tests/_stage2.py's (AttrBackend): group g0 prefers high a0, g1 low a0, g2 high
a1, so one BT head cannot serve all three, while the context tells the gate / router the group.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest

from _stage2 import GROUPS, make_run, synthetic_rows
from pipeline.errors import MicroError

PNG = b"\x89PNG\r\n\x1a\n"
FAST = dict(seeds=(0, 1, 2), budget=10, budgets=(5, 10), hyre_n=8, log=lambda m: None)


def make_bundle(run, out, k: int = 3):
    from pipeline.fit.fit import fit_run

    fit_run(run, k=k, alpha=0.0, l2=1e-3, n_init=2, max_iter=60, random_state=0, out=out)
    return out


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    run = make_run(root, synthetic_rows(), "run")
    return root, run, make_bundle(run, root / "bundle")


@pytest.fixture(scope="module")
def evaluated(synth):
    from pipeline.evaluate.evaluate import evaluate

    root, run, bundle = synth
    return evaluate(bundle, run, report=root / "report", **FAST), root / "report"


def test_results_table_shape_and_columns(evaluated):
    from pipeline.evaluate.evaluate import METHODS

    res, report = evaluated
    df = pl.read_csv(report / "results.csv")
    assert df.columns == ["method", "group", "accuracy", "accuracy_std", "nll", "ece", "n"]
    assert df.height == 8 * (len(GROUPS) + 1)
    assert sorted(set(df["method"].to_list())) == sorted(METHODS) and len(METHODS) == 8
    for m in METHODS:
        assert sorted(df.filter(pl.col("method") == m)["group"].to_list()) == sorted([*GROUPS, "macro"])
    pq = pl.read_parquet(report / "results.parquet")
    assert pq.columns == df.columns and pq.height == df.height
    assert (report / "results.md").read_text().startswith("accuracy on the test split")
    acc = df["accuracy"].to_numpy()
    assert np.all((acc >= 0) & (acc <= 1))
    assert np.all(np.isfinite(df["nll"].to_numpy())) and np.all(df["ece"].to_numpy() >= 0)
    assert np.all(df["n"].to_numpy() > 0)


def test_std_only_for_seeded_rows(evaluated):
    res, report = evaluated
    df = pl.read_csv(report / "results.csv")
    for m in ("single", "static", "shared-base-best", "stage1-best-head", "oracle"):
        assert df.filter(pl.col("method") == m)["accuracy_std"].null_count() == len(GROUPS) + 1, m
    for m in ("hyre", "micro-hyre", "micro"):
        std = df.filter(pl.col("method") == m)["accuracy_std"]
        assert std.null_count() == 0 and (std.to_numpy() >= 0).all(), m


def test_orderings_on_disagreeing_groups(evaluated):
    res, _ = evaluated
    macro = {m: res.cell(m, "macro")["accuracy"] for m in ("single", "oracle", "micro", "stage1-best-head")}
    assert macro["oracle"] >= macro["single"]
    assert macro["micro"] >= macro["single"] + 0.1, macro  # one head cannot serve g0 and g1 at once
    assert macro["oracle"] > 0.8 and macro["stage1-best-head"] > 0.8
    # macro = mean over groups; hyre rows score the pairs left after the hyre_n adaptation pairs
    for m in ("single", "micro", "hyre"):
        per = [res.cell(m, g)["accuracy"] for g in GROUPS]
        assert res.cell(m, "macro")["accuracy"] == pytest.approx(np.mean(per))
    n_test = res.cell("single", "g0")["n"]
    assert res.cell("hyre", "g0")["n"] == n_test - FAST["hyre_n"]
    # the micro row is route_seeds' after-routing accuracy
    assert [res.cell("micro", g)["accuracy"] for g in GROUPS] == pytest.approx(res.budget_curve[10].mean(axis=0))
    assert res.router_weights.shape == (3, 3) and np.allclose(res.router_weights.sum(axis=1), 1.0)


def test_plots_are_pngs(evaluated):
    res, report = evaluated
    assert {p.name for p in res.plots} == {"head_group_accuracy.png", "router_weights.png", "accuracy_vs_budget.png"}
    for p in res.plots:
        data = p.read_bytes()
        assert data[:8] == PNG and len(data) > 1024 and p.parent == report
    assert sorted(res.budget_curve) == [5, 10]


def test_no_report_writes_nothing_and_markdown(synth, tmp_path):
    from pipeline.evaluate.evaluate import evaluate

    root, run, bundle = synth
    res = evaluate(bundle, run, seeds=(0,), budget=10, hyre_n=8, log=lambda m: None)
    assert res.plots == [] and res.files == []
    md = res.markdown()
    assert "| micro |" in md and "| oracle |" in md and "macro |" in md


def test_fingerprint_mismatch(synth, tmp_path):
    from pipeline.evaluate.evaluate import evaluate

    root, run, bundle = synth
    other = tmp_path / "other"
    shutil.copytree(run, other)
    meta = json.loads((other / "run.json").read_text())
    meta["fingerprint_id"] = "0123456789abcdef"
    (other / "run.json").write_text(json.dumps(meta))
    with pytest.raises(MicroError, match="embedder"):
        evaluate(bundle, other, **FAST)


def test_empty_test_split(synth):
    from pipeline.evaluate.evaluate import evaluate

    root, run, bundle = synth
    train_only = make_run(root, synthetic_rows(n_per_group=20, split="train"), "train_only")
    with pytest.raises(MicroError, match="test split is empty"):
        evaluate(bundle, train_only, **FAST)


def test_bad_budgets(synth):
    from pipeline.evaluate.evaluate import evaluate

    root, run, bundle = synth
    with pytest.raises(MicroError, match="budgets"):
        evaluate(bundle, run, **(FAST | {"budgets": "5,x"}))


def test_run_without_groups_and_routed_bundle(synth, tmp_path):
    from pipeline.core.model import Model
    from pipeline.core.run import Run
    from pipeline.evaluate.evaluate import evaluate
    from pipeline.route.route import route_seeds, save_routed_bundle

    root, run, bundle = synth
    nogroup = make_run(root, synthetic_rows(n_per_group=40, with_group=False), "nogroup")
    res = evaluate(bundle, nogroup, seeds=(0,), budget=10, hyre_n=8, log=lambda m: None)
    assert res.groups == ["all"] and any("no groups" in n for n in res.notes)
    assert {r["group"] for r in res.rows} == {"all", "macro"} and len(res.rows) == 16

    model = Model.load(bundle)
    feats = Run.load(run)
    r = route_seeds(model, feats.part("train"), feats.part("test"), budget=10, seeds=(0,))
    routed = save_routed_bundle(model, r.routers[0], tmp_path / "routed", {"bundle": bundle})
    res = evaluate(routed, run, seeds=(0,), budget=10, hyre_n=8, log=lambda m: None)
    assert any("routed bundle" in n for n in res.notes)
    assert 0 <= res.cell("micro", "macro")["accuracy"] <= 1


def test_cli_eval(synth, tmp_path):
    from typer.testing import CliRunner

    from cli import app

    root, run, bundle = synth
    out = tmp_path / "rep"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            str(bundle),
            str(run),
            "--report",
            str(out),
            "--seeds",
            "2",
            "--budget-per-group",
            "10",
            "--budgets",
            "5,10",
            "--hyre-n",
            "8",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "| method |" in result.stdout and "| micro |" in result.stdout and "| oracle |" in result.stdout
    assert (out / "results.csv").exists() and (out / "accuracy_vs_budget.png").exists()
    assert "accuracy_vs_budget.png" in result.output
