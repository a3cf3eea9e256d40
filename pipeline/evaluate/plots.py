"""Figures of ``micro eval`` (matplotlib, Agg canvas, PNG, written atomically).

* :func:`plot_head_group_accuracy`: head × group accuracy matrix, numbers annotated (paper Table 7/8 shape).
* :func:`plot_router_weights`: mean routed gate weight of every head per group (paper Fig. 3 shape).
* :func:`plot_budget_curve`: routed accuracy vs labelled budget B per group, mean ± std band (paper Fig. 4 shape).

Every function builds a standalone ``Figure`` on an Agg canvas (no pyplot global state, no display needed)
and returns the path written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.core.figures import new_figure, save_figure


def _annotate(ax, values: np.ndarray, fmt: str, vmin: float, vmax: float, dark_high: bool = False) -> None:
    """Write every cell's value; white text on the dark end of the colour map (low for viridis, high for Blues)."""
    mid = (vmin + vmax) / 2
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            text = "–" if not np.isfinite(v) else format(v, fmt)
            dark = np.isfinite(v) and ((v > mid) if dark_high else (v < mid))
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")


def _labels(groups: Sequence, counts: Sequence | None) -> list[str]:
    if counts is None:
        return [str(g) for g in groups]
    return [f"{g}\n(n={n})" for g, n in zip(groups, counts)]


def _finish_heatmap(fig, ax, im, ticks: tuple, labels: tuple, title: str, colorbar: str, path) -> Path:
    """Tick labels (x, y), axis labels (x, y), title and colour bar of a heatmap; the figure saved to ``path``."""
    ax.set_xticks(range(len(ticks[0])), ticks[0], fontsize=8)
    ax.set_yticks(range(len(ticks[1])), ticks[1], fontsize=8)
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label=colorbar)
    return save_figure(fig, path)


def _log_budget_axis(ax, budgets: np.ndarray) -> None:
    """A log x axis with one tick per budget."""
    ax.set_xscale("log")
    ax.set_xticks(budgets, [str(int(x)) for x in budgets])
    ax.minorticks_off()


def plot_head_group_accuracy(
    acc: np.ndarray,
    groups: Sequence,
    path: str | Path,
    *,
    counts: Sequence | None = None,
    title: str = "Accuracy of each Stage-1 head alone per group (test split)",
) -> Path:
    """Heatmap of ``acc`` (K heads, G groups); the best head of each group is outlined."""
    acc = np.asarray(acc, dtype=float)
    K, G = acc.shape
    fig = new_figure(max(4.5, 1.3 * G + 2.5), max(3.0, 0.42 * K + 1.8))
    ax = fig.add_subplot(1, 1, 1)
    finite = acc[np.isfinite(acc)]
    vmin = float(min(0.5, finite.min())) if finite.size else 0.0
    vmax = float(max(vmin + 1e-6, finite.max())) if finite.size else 1.0
    im = ax.imshow(acc, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    _annotate(ax, acc, ".3f", vmin, vmax)
    if finite.size:
        from matplotlib.patches import Rectangle

        for j in range(G):
            col = acc[:, j]
            if np.isfinite(col).any():
                k = int(np.nanargmax(col))
                ax.add_patch(Rectangle((j - 0.5, k - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    ticks = (_labels(groups, counts), [f"head {k}" for k in range(K)])
    return _finish_heatmap(
        fig, ax, im, ticks, ("group", "reward head"), title, "accuracy (P(chosen ≻ rejected) > 0.5)", path
    )


def plot_router_weights(
    weights: np.ndarray,
    groups: Sequence,
    path: str | Path,
    *,
    title: str = "Mean routed mixture weight per group (test prompts)",
) -> Path:
    """Heatmap of ``weights`` (G groups, K heads): rows sum to 1."""
    w = np.asarray(weights, dtype=float)
    G, K = w.shape
    fig = new_figure(max(4.5, 0.55 * K + 3.0), max(2.6, 0.5 * G + 1.6))
    ax = fig.add_subplot(1, 1, 1)
    vmax = max(1e-6, float(np.nanmax(w))) if np.isfinite(w).any() else 1.0
    im = ax.imshow(w, cmap="Blues", vmin=0.0, vmax=vmax, aspect="auto")
    _annotate(ax, w, ".2f", 0.0, vmax, dark_high=True)
    ticks = ([str(k) for k in range(K)], [str(g) for g in groups])
    return _finish_heatmap(fig, ax, im, ticks, ("reward head", "group"), title, "mean gate weight f_k", path)


def plot_budget_curve(
    budgets: Sequence[int],
    mean: np.ndarray,
    std: np.ndarray,
    groups: Sequence,
    path: str | Path,
    *,
    reference: np.ndarray | None = None,
    reference_label: str = "Stage-1 gate (no routing)",
    title: str = "Routed accuracy vs labelled pairs per group (mean ± std over seeds)",
) -> Path:
    """Lines of ``mean`` (nB, G) with ± ``std`` bands over ``budgets``; optional dashed per-group ``reference`` (G,)."""
    b = np.asarray(budgets, dtype=float)
    mean, std = np.asarray(mean, dtype=float), np.asarray(std, dtype=float)
    fig = new_figure(8.2, 4.4)
    ax = fig.add_subplot(1, 1, 1)
    colors = [f"C{j % 10}" for j in range(len(groups))]
    for j, g in enumerate(groups):
        ax.plot(b, mean[:, j], marker="o", color=colors[j], label=str(g))
        ax.fill_between(b, mean[:, j] - std[:, j], mean[:, j] + std[:, j], color=colors[j], alpha=0.2)
        if reference is not None and np.isfinite(reference[j]):
            ax.axhline(reference[j], color=colors[j], linestyle="--", linewidth=1, alpha=0.7)
    if reference is not None:
        ax.plot([], [], color="grey", linestyle="--", label=reference_label)
    _log_budget_axis(ax, b)
    ax.set_xlabel("labelled routing pairs per group (B)")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), title="group", title_fontsize=8)
    return save_figure(fig, path)


def plot_selection(selection: dict, path: str | Path) -> Path:
    """Held-out (calibrated) log-likelihood per pair along the fit's L2 path (relative L2, log scale), one line per
    candidate width, the chosen point marked."""
    fig = new_figure(5.6, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    dims = sorted({p.get("dim") for p in selection["path"]}, key=lambda d: d or 0)
    for i, dim in enumerate(dims):
        pts = sorted((p for p in selection["path"] if p.get("dim") == dim), key=lambda p: p["c"])
        ax.plot(
            [p["c"] for p in pts],
            [p["val_loglik"] for p in pts],
            "o-",
            color=f"C{i}",
            label=f"width {dim}" if len(dims) > 1 else "held-out prompts",
        )
    ax.axvline(
        selection["chosen_c"],
        color="C3",
        lw=1.0,
        label=f"chosen: l2 {selection['l2']:.3g}, gate l2 {selection['gate_l2']:.3g}",
    )
    ax.set_xscale("log")
    ax.set_xlabel("relative L2 (× mean feature variance)")
    ax.set_ylabel("mean log-likelihood per pair")
    ax.set_title(f"Stage-1 selection: {selection['fit_pairs']} fit / {selection['val_pairs']} held-out pairs")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_lgo_budget(
    budgets: Sequence[int],
    curves: dict,
    references: dict,
    groups: Sequence,
    path: str | Path,
    *,
    title: str = "New users (leave-group-out): accuracy vs adaptation pairs B",
) -> Path:
    """One panel per group (new user): ``curves`` {method: (nB, G) mean accuracy} as lines over ``budgets``,
    ``references`` {method: (G,)} (budget-free rows) as dashed horizontal lines."""
    b = np.asarray(budgets, dtype=float)
    G = len(groups)
    cols = min(G, 3)
    rows = int(np.ceil(G / cols))
    fig = new_figure(3.4 * cols + 1.8, 2.8 * rows + 0.6)
    for j, g in enumerate(groups):
        ax = fig.add_subplot(rows, cols, j + 1)
        for i, (m, v) in enumerate(curves.items()):
            ax.plot(b, np.asarray(v)[:, j], marker="o", color=f"C{i}", label=m)
        for i, (m, v) in enumerate(references.items()):
            ax.axhline(float(np.asarray(v)[j]), color=f"C{i + len(curves)}", linestyle="--", linewidth=1, label=m)
        _log_budget_axis(ax, b)
        ax.set_title(str(g), fontsize=9)
        ax.grid(alpha=0.3)
        if j % cols == 0:
            ax.set_ylabel("test accuracy")
        if j == G - 1:
            ax.legend(fontsize=6, loc="lower right", framealpha=0.8)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
