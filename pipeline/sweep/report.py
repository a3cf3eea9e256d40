"""Reading sweep results: aggregation over seeds, the leaderboard, K selection (one-SE rule) and the figures."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.figures import new_figure, save_figure
from pipeline.errors import MicroError
from pipeline.sweep.space import PARAMS

EXTRA = ("test_loglik", "val_loglik", "test_acc_macro", "routed_acc_macro")  # leaderboard columns
K_LADDER = (1, 2, 4, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64, 96, 128)


def param_columns(frame) -> list:
    return [c for c in PARAMS if c in frame.columns]


def swept(frame) -> list:
    """Hyperparameters with more than one value in the table."""
    return [c for c in param_columns(frame) if frame[c].n_unique() > 1]


def aggregate(frame, metric: str, by: list | None = None):
    """Mean / std (ddof 1) / count over seeds of ``metric`` per configuration (error rows dropped)."""
    import polars as pl

    ok = frame.filter(pl.col("error").is_null() & pl.col(metric).is_not_null() & pl.col(metric).is_not_nan())
    by = by or param_columns(frame)
    return ok.group_by(by, maintain_order=True).agg(
        pl.col(metric).mean().alias("mean"),
        pl.col(metric).std(ddof=1).fill_null(0.0).alias("std"),
        pl.len().alias("n"),
        *[pl.col(c).mean().alias(c) for c in EXTRA if c in ok.columns and c != metric],
    )


def leaderboard(frame, rank_by: str, top: int = 10):
    """The best ``top`` configurations by mean ``rank_by`` over seeds (a polars DataFrame)."""
    if rank_by not in frame.columns:
        raise MicroError(f"--rank-by {rank_by!r}: no such column (e.g. test_acc_macro, test_loglik, val_loglik)")
    return aggregate(frame, rank_by).sort("mean", descending=True, nulls_last=True).head(top)


# ---------------------------------------------------------------------------------------------- K selection
@dataclass
class KSelection:
    """Per-K mean ± std of ``metric`` over seeds, the best K and the one-SE choice, and why."""

    table: list  # dicts k, mean, std, n, se, params (the other hyperparameters of that K's best setting)
    best_k: int
    chosen_k: int
    threshold: float
    metric: str
    reason: str

    def to_dict(self) -> dict:
        return {
            "table": self.table,
            "best_k": self.best_k,
            "chosen_k": self.chosen_k,
            "threshold": self.threshold,
            "metric": self.metric,
            "rule": "one standard error",
            "reason": self.reason,
        }


def select_k(frame, metric: str = "val_loglik") -> KSelection:
    """One-standard-error rule over K on ``metric`` (higher is better); see the module docstring."""
    import polars as pl

    agg = aggregate(frame, metric)
    if agg.height == 0:
        raise MicroError(f"K selection: no successful trials with {metric}")
    best_per_k = agg.sort("mean", descending=True).unique("k", keep="first", maintain_order=True).sort("k")
    cols = [c for c in param_columns(frame) if c != "k"]
    table = [
        {
            "k": int(r["k"]),
            "mean": float(r["mean"]),
            "std": float(r["std"]),
            "n": int(r["n"]),
            "se": float(r["std"]) / math.sqrt(r["n"]),
            "params": {c: r[c] for c in cols},
        }
        for r in best_per_k.iter_rows(named=True)
    ]
    best = max(table, key=lambda r: r["mean"])
    thr = best["mean"] - best["se"]
    chosen = min((r for r in table if r["mean"] >= thr), key=lambda r: r["k"])
    others = [c for c in swept(frame) if c != "k"]
    failed = sorted(set(frame.filter(pl.col("error").is_not_null())["k"].to_list()) - {r["k"] for r in table})
    smaller = [r for r in table if r["k"] < chosen["k"]]
    why_not = f"; the next smaller K={smaller[-1]['k']} has {smaller[-1]['mean']:.4f} < threshold" if smaller else ""
    head = (
        f"the highest mean {metric}"
        if chosen is best
        else f"the smallest K whose mean {metric} is within one standard error of the best, K={best['k']} "
        f"({best['mean']:.4f})"
    )
    reason = (
        f"K={chosen['k']}: {head}: {chosen['mean']:.4f} ± {chosen['std']:.4f} (std over {chosen['n']} seeds); "
        f"threshold = best − SE = {best['mean']:.4f} − {best['se']:.4f} = {thr:.4f}{why_not}"
        + (f"; per K the best of {', '.join(others)}" if others else "")
        + (f"; K={failed} failed every trial" if failed else "")
    )
    return KSelection(table, best["k"], chosen["k"], thr, metric, reason)


def k_candidates(lo: int, hi: int) -> list[int]:
    """Every K when the range has ≤ 8 values, else the ladder 1, 2, 4, 6, 8, 10, 12, 16, 20, 24, 32, …
    within it plus both ends (1..12 → 1, 2, 4, 6, 8, 10, 12; 1..16 → 1, 2, 4, 6, 8, 10, 12, 16)."""
    if lo < 1 or hi < lo:
        raise MicroError(f"--k-range: need 1 <= low <= high, got {lo}..{hi}")
    if hi - lo + 1 <= 8:
        return list(range(lo, hi + 1))
    return sorted({lo, hi} | {k for k in K_LADDER if lo <= k <= hi})


def parse_k_range(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition("..")
    try:
        return (int(lo), int(hi)) if sep else (int(text), int(text))
    except ValueError:
        raise MicroError(f"--k-range expects LOW..HIGH, e.g. 1..16, got {text!r}") from None


# ------------------------------------------------------------------------------------------------- output
def print_leaderboard(console, frame, rank_by: str, top: int = 10) -> None:
    """Rich table of :func:`leaderboard` (swept hyperparameters, mean ± std over seeds)."""
    from rich.table import Table

    board = leaderboard(frame, rank_by, top)
    cols = swept(frame) or ["k"]
    t = Table(title=f"top {min(top, board.height)} configurations by {rank_by} (mean ± std over seeds)")
    for c in [
        "#",
        *cols,
        "seeds",
        rank_by,
        *[m for m in ("val_loglik", "test_loglik", "test_acc_macro") if m in board.columns],
    ]:
        t.add_column(c, justify="right")
    for i, r in enumerate(board.iter_rows(named=True)):
        extra = [_fmt(r[m]) for m in ("val_loglik", "test_loglik", "test_acc_macro") if m in board.columns]
        t.add_row(str(i + 1), *[_fmt(r[c]) for c in cols], str(r["n"]), f"{r['mean']:.4f} ± {r['std']:.4f}", *extra)
    console.print(t)


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def plot_k(frame, sel: KSelection, path: str | Path) -> Path:
    """Held-out (and train / test) log-likelihood vs K, mean ± std band over seeds (paper Fig. 5 shape)."""
    import numpy as np
    import polars as pl

    fig = new_figure(6.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    styles = {
        "val_loglik": ("validation (selects K)", "C0", "-"),
        "train_loglik": ("train (fit rows)", "C1", "--"),
        "test_loglik": ("test (not used)", "0.5", ":"),
    }
    for metric, (label, color, ls) in styles.items():
        if metric not in frame.columns:
            continue
        ks, mu, sd = [], [], []
        for row in sel.table:
            sub = frame.filter(pl.col("error").is_null() & (pl.col("k") == row["k"]))
            for c, v in row["params"].items():
                sub = sub.filter(pl.col(c).is_null() if v is None else pl.col(c) == v)
            vals = sub[metric].drop_nulls().drop_nans().to_numpy()
            if len(vals):
                ks.append(row["k"]), mu.append(vals.mean()), sd.append(vals.std(ddof=1) if len(vals) > 1 else 0.0)
        if ks:
            mu, sd = np.array(mu), np.array(sd)
            ax.plot(ks, mu, ls, marker="o", color=color, label=label)
            ax.fill_between(ks, mu - sd, mu + sd, color=color, alpha=0.15)
    ax.axhline(sel.threshold, color="C0", lw=0.8, alpha=0.6, label="best − 1 SE")
    ax.axvline(sel.chosen_k, color="C3", lw=1.0, label=f"chosen K={sel.chosen_k}")
    ax.set_xticks([r["k"] for r in sel.table])
    ax.set_xlabel("K (number of heads)")
    ax.set_ylabel("mean log-likelihood per pair")
    ax.set_title("K selection: one-standard-error rule")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_params(frame, metric: str, stem: str | Path) -> list:
    """``STEM_<param>.png`` for every swept hyperparameter: ``metric`` and validation log-lik vs its values
    (dots: each configuration's mean over seeds; line: the best configuration per value, ± std over seeds)."""
    import numpy as np

    out = []
    metrics = [m for m in dict.fromkeys([metric, "val_loglik"]) if m in frame.columns]
    for p in swept(frame):
        fig = new_figure(4.2 * len(metrics), 3.6)
        for j, m in enumerate(metrics):
            ax = fig.add_subplot(1, len(metrics), j + 1)
            agg = aggregate(frame, m)
            if agg.height == 0:
                continue
            vals = sorted(set(agg[p].to_list()), key=lambda v: (v is None, v))
            numeric = all(isinstance(v, (int, float)) for v in vals)
            xs = {v: (v if numeric else i) for i, v in enumerate(vals)}
            best = []
            for v in vals:
                sub = agg.filter(agg[p].is_null() if v is None else agg[p] == v)
                ax.scatter([xs[v]] * sub.height, sub["mean"].to_numpy(), s=10, color="0.6", zorder=2)
                b = sub.sort("mean", descending=True).row(0, named=True)
                best.append((xs[v], b["mean"], b["std"]))
            x, mu, sd = (np.array(c, dtype=float) for c in zip(*best))
            ax.errorbar(x, mu, yerr=sd, marker="o", color="C0", capsize=3, zorder=3)
            if numeric and min(vals) > 0 and max(vals) / min(vals) >= 20:
                ax.set_xscale("log")
            if not numeric:
                ax.set_xticks(list(xs.values()), [str(v) for v in vals])
            ax.set_xlabel(p)
            ax.set_ylabel(m)
        out.append(save_figure(fig, f"{stem}_{p}.png"))
    return out
