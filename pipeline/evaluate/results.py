"""Tables of ``micro eval``: metrics of probabilities, per-method long rows, the markdown tables, the report files.

:func:`metrics` is the one place accuracy / NLL / ECE of a set of pairs is computed for every evaluation row
(seen groups and leave-group-out); :func:`write_tables` writes results.csv / .parquet / .md atomically.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from heads.defaults import FIXED_L2
from pipeline.errors import MicroError

METHODS = ("single", "static", "shared-base-best", "stage1-best-head", "hyre", "micro-hyre", "micro", "oracle")
COLUMNS = ("method", "group", "accuracy", "accuracy_std", "nll", "ece", "n")
SEEDED = ("hyre", "micro-hyre", "micro")


@dataclass
class EvalResult:
    """What ``micro eval`` computed: the long table (one dict per (method, group)) and the figures."""

    rows: list  # dicts with COLUMNS
    groups: list  # group names (sorted), without "macro"
    counts: list  # test pairs per group
    head_group_accuracy: np.ndarray  # (K, G) accuracy of every bundle head alone per group (test split)
    best_heads: dict  # method -> {group: head index} for the "best head" rows
    stage1_accuracy: np.ndarray  # (G,) Stage-1 gate (no routing) accuracy per group
    router_weights: np.ndarray  # (G, K) mean routed gate weights per group over test prompts and seeds
    budget_curve: dict = field(default_factory=dict)  # budget -> (S, G) routed accuracy per seed
    plots: list = field(default_factory=list)
    files: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    seconds: float = 0.0

    def frame(self):
        """The long table as a polars DataFrame (exact COLUMNS; accuracy_std null where no seeds)."""
        import polars as pl

        return pl.DataFrame(
            {c: [r[c] for r in self.rows] for c in COLUMNS},
            schema={
                "method": pl.Utf8,
                "group": pl.Utf8,
                "accuracy": pl.Float64,
                "accuracy_std": pl.Float64,
                "nll": pl.Float64,
                "ece": pl.Float64,
                "n": pl.Int64,
            },
        )

    def cell(self, method: str, group: str) -> dict:
        """The row of (method, group)."""
        for r in self.rows:
            if r["method"] == method and r["group"] == group:
                return r
        raise KeyError((method, group))

    def markdown(self) -> str:
        """Accuracy table (rows = methods, columns = groups + macro) and a macro NLL / ECE table."""
        cols = [*self.groups, "macro"]
        head = "| method | " + " | ".join(f"{g} (n={n})" for g, n in zip(self.groups, self.counts)) + " | macro |"
        lines = [
            "accuracy on the test split (mean ± std over seeds where seeded)",
            "",
            head,
            "|" + "---|" * (len(cols) + 1),
        ]
        for m in METHODS:
            cells = [format_accuracy(self.cell(m, g)) for g in cols]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "macro-averaged negative log-likelihood and expected calibration error",
            "",
            "| method | nll | ece |",
            "|---|---|---|",
        ]
        for m in METHODS:
            r = self.cell(m, "macro")
            lines.append(f"| {m} | {_fmt(r['nll'])} | {_fmt(r['ece'])} |")
        return "\n".join(lines) + "\n"


def is_number(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def _fmt(v) -> str:
    return f"{v:.3f}" if is_number(v) else "–"


def format_accuracy(r: dict) -> str:
    if not is_number(r["accuracy"]):
        return "–"
    return f"{r['accuracy']:.3f} ± {r['accuracy_std']:.3f}" if is_number(r["accuracy_std"]) else f"{r['accuracy']:.3f}"


def metrics(p: np.ndarray | None) -> tuple[float, float, float, int]:
    """(accuracy, nll, ece, n) of probabilities of the observed outcome; NaNs for no pairs."""
    from heads.metrics import accuracy, expected_calibration_error, log_likelihood

    if p is None or len(p) == 0:
        return math.nan, math.nan, math.nan, 0
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    return accuracy(p), -log_likelihood(p), expected_calibration_error(p), int(p.size)


def method_rows(method: str, per_seed: list[dict], names: list, seeded: bool) -> list[dict]:
    """Long rows of one method from ``per_seed`` = [{group: probabilities (or None)} per seed]."""
    S, G = len(per_seed), len(names)
    acc, nll, ece = (np.full((S, G), np.nan) for _ in range(3))
    n = np.zeros(G, dtype=int)
    for s, probs in enumerate(per_seed):
        for j, g in enumerate(names):
            acc[s, j], nll[s, j], ece[s, j], n[j] = metrics(probs.get(g))
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN groups stay NaN
        for j, g in enumerate(names):
            rows.append(
                {
                    "method": method,
                    "group": g,
                    "accuracy": _f(np.nanmean(acc[:, j])),
                    "accuracy_std": _f(np.nanstd(acc[:, j])) if seeded else None,
                    "nll": _f(np.nanmean(nll[:, j])),
                    "ece": _f(np.nanmean(ece[:, j])),
                    "n": int(n[j]),
                }
            )
        macro = np.nanmean(acc, axis=1)  # (S,) macro accuracy per seed
        rows.append(
            {
                "method": method,
                "group": "macro",
                "accuracy": _f(np.nanmean(macro)),
                "accuracy_std": _f(np.nanstd(macro)) if seeded else None,
                "nll": _f(np.nanmean(np.nanmean(nll, axis=0))),
                "ece": _f(np.nanmean(np.nanmean(ece, axis=0))),
                "n": int(n.sum()),
            }
        )
    return rows


def _f(v) -> float:
    v = float(v)
    return v if math.isfinite(v) else math.nan


def fitted_l2(meta: dict) -> float:
    """The heads' L2 of a bundle: the value its fit chose (``l2_``), else its ``l2`` parameter."""
    v = meta.get("fitted", {}).get("l2_", meta.get("params", {}).get("l2", FIXED_L2))
    return float(v) if v != "auto" else FIXED_L2


def parse_budgets(budgets) -> tuple[int, ...]:
    if isinstance(budgets, str):
        try:
            budgets = [int(b) for b in budgets.replace(" ", "").split(",") if b]
        except ValueError:
            raise MicroError(f"--budgets must be comma-separated integers, got {budgets!r}") from None
    out = tuple(int(b) for b in budgets)
    if not out:
        raise MicroError(f"--budgets must list at least one budget, got {budgets!r}")
    if any(b < 1 for b in out):
        raise MicroError(f"--budgets must all be >= 1, got {list(out)}")
    return tuple(sorted(set(out)))


def write_tables(frame, markdown: str, notes: list, report: Path) -> list[Path]:
    """results.csv, results.parquet (``frame``) and results.md (``markdown`` + notes) in ``report``, atomically."""
    from cache.atomic import atomic_path

    report.mkdir(parents=True, exist_ok=True)
    paths = [report / "results.csv", report / "results.parquet", report / "results.md"]
    with atomic_path(paths[0]) as tmp:
        frame.write_csv(tmp)
    with atomic_path(paths[1]) as tmp:
        frame.write_parquet(tmp)
    with atomic_path(paths[2]) as tmp:
        tmp.write_text(markdown + "".join(f"\nnote: {n}" for n in notes) + "\n")
    return paths
