"""Leave-group-out protocol (pipeline/evaluate/lgo.py, `micro eval --protocol leave-group-out`) on a tiny synthetic run.

Synthetic, no model (tests/_stage2.py): g0 prefers high a0, g1 low a0, g2 high a1. With g1 held out, Stage 1 sees
only g0 and g2, whose heads cannot express g1 (the opposite of g0): routing stays near or below chance, the
adapted model learns g1 from its few pairs.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from _stage2 import make_bundle, make_run, run_cli, synthetic_rows

BUDGETS, SEEDS = (10, 30), (0, 1)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(root, bundle, run folder): 3 groups x 90 pairs with contexts, gate on context+prompt."""
    root = tmp_path_factory.mktemp("lgo")
    bundle = make_bundle(root, synthetic_rows(n_per_group=90, topic=True, test_frac=0.3), gate_input="context")
    return root, bundle, root / "bundle_run"


@pytest.fixture(scope="module")
def result(run):
    from pipeline.evaluate.lgo import leave_group_out

    root, bundle, run_dir = run
    lines = []
    res = leave_group_out(
        bundle, run_dir, budgets=BUDGETS, seeds=SEEDS, report=root / "report", jobs=2, log=lines.append
    )
    return res, lines


def test_rows_counts_and_files(run, result):
    from pipeline.evaluate.lgo import BUDGETED, COLUMNS, METHODS

    root, *_ = run
    res, lines = result
    assert res.groups == ["g0", "g1", "g2"] and res.counts == [27, 27, 27]
    df = pl.read_csv(root / "report" / "results.csv")
    assert tuple(df.columns) == COLUMNS
    n_free, n_budgeted = len(METHODS) - len(BUDGETED), len(BUDGETED)
    assert df.height == (n_free + n_budgeted * len(BUDGETS)) * 4  # 3 groups + macro
    for m in METHODS:
        sub = df.filter(pl.col("method") == m)
        assert sorted(set(sub["group"].to_list())) == ["g0", "g1", "g2", "macro"]
        if m in BUDGETED:
            assert sorted(set(sub["budget"].to_list())) == list(BUDGETS)
            assert sub.filter(pl.col("group") != "macro")["accuracy_std"].is_not_null().all()
        else:
            assert sub["budget"].is_null().all() and sub["accuracy_std"].is_null().all()
    assert set(df.filter(pl.col("group") == "g1")["n"].to_list()) == {27}
    assert df.filter(pl.col("method") == "adapted")["residual_share"].is_not_null().all()
    for name in ("results.parquet", "results.md", "accuracy_vs_budget_lgo.png"):
        assert (root / "report" / name).stat().st_size > 0
    assert sum("fold" in line for line in lines) == 4  # 3 folds + the oracle
    macro = res.cell("routing", "macro", 30)
    assert macro["accuracy"] == pytest.approx(np.mean([res.cell("routing", g, 30)["accuracy"] for g in res.groups]))


def test_a_user_outside_the_span_is_learned(result):
    res, _ = result
    cell = lambda m, b=30: res.cell(m, "g1", b)["accuracy"]  # noqa: E731
    assert cell("stage1-gate", None) < 0.5 and cell("routing") < 0.7  # the heads cannot express g1
    assert cell("adapted") >= cell("routing") + 0.1 and cell("adapted") >= cell("oracle", None) - 0.05
    macro = lambda m: res.cell(m, "macro", 30)["accuracy"]  # noqa: E731
    assert macro("adapted") > macro("routing") + 0.2 and macro("adapted") >= macro("hyre") + 0.2
    assert res.cell("adapted", "g1", 30)["residual_share"] == 1.0


def test_cli_leave_group_out_and_errors(run, tmp_path, monkeypatch, capsys):
    root, bundle, run_dir = run
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "eval",
        bundle,
        run_dir,
        "--protocol",
        "leave-group-out",
        "--budgets",
        "12",
        "--seeds",
        "1",
        "--jobs",
        "1",
        "--report",
        tmp_path / "r",
    )
    assert code == 0, err
    assert "B = 12 adaptation pairs" in out and "| adapted |" in out and "| oracle |" in out
    assert pl.read_csv(tmp_path / "r" / "results.csv").height == (3 + 4) * 4
    for args, msg in (
        (["--protocol", "loo"], "error: --protocol must be one of seen, leave-group-out"),
        (["--protocol", "leave-group-out", "--adapt", "span"], "error: --adapt must be one of"),
        (["--protocol", "leave-group-out", "--budgets", "0"], "error: --budgets must all be >= 1"),
    ):
        code, _, err = run_cli(monkeypatch, capsys, "eval", bundle, run_dir, *args)
        assert code == 2 and err.startswith(msg) and len(err.strip().splitlines()) == 1, err


def test_group_without_test_pairs_is_an_error(run, tmp_path, monkeypatch, capsys):
    root, bundle, _ = run
    rows = [
        r
        for r in synthetic_rows(n_per_group=30, topic=True, test_frac=0.3)
        if not (r["group"] == "g2" and r["split"] == "test")
    ]
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "eval",
        bundle,
        make_run(tmp_path, rows, "run", cache=root / "cache"),
        "--protocol",
        "leave-group-out",
    )
    assert code == 2 and err == "error: group 'g2' has no test pairs (split == 'test'): nothing to score it on\n"
    one = [r for r in rows if r["group"] == "g0"]
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "eval",
        bundle,
        make_run(tmp_path, one, "run1", cache=root / "cache"),
        "--protocol",
        "leave-group-out",
    )
    assert code == 2 and "needs at least 2 groups" in err, err
