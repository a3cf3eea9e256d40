"""pipeline.evaluate.plots: every figure is a valid PNG, NaN cells and a single group included."""

from __future__ import annotations

import numpy as np

from pipeline.evaluate import plots

PNG = b"\x89PNG\r\n\x1a\n"


def _ok(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 1024
    assert not list(path.parent.glob(".*.tmp"))  # atomic write left no temp file


def test_head_group_heatmap(tmp_path):
    acc = np.array([[0.8, 0.3, np.nan], [0.4, 0.9, np.nan]])
    p = plots.plot_head_group_accuracy(acc, ["a", "b", "c"], tmp_path / "hg.png", counts=[10, 12, 0])
    assert p == tmp_path / "hg.png"
    _ok(p)


def test_router_weights_heatmap(tmp_path):
    w = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    _ok(plots.plot_router_weights(w, ["a", "b"], tmp_path / "rw.png"))


def test_budget_curve(tmp_path):
    budgets = [5, 10, 25]
    mean = np.array([[0.6, 0.7], [0.65, 0.72], [0.7, 0.75]])
    std = np.full_like(mean, 0.02)
    _ok(
        plots.plot_budget_curve(budgets, mean, std, ["a", "b"], tmp_path / "bc.png", reference=np.array([0.68, np.nan]))
    )
    _ok(plots.plot_budget_curve([50], mean[:1, :1], std[:1, :1], ["all"], tmp_path / "one.png"))
