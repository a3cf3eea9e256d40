"""``micro eval MODEL RUN --protocol leave-group-out``: every group in turn is a NEW user.

For each group g (one fold): Stage 1 is refitted on the train split WITHOUT g, with the bundle's own
hyperparameters (``MixtureBT(**meta["params"])``, so a bundle fitted with other settings is reproduced); then, for
every budget B and seed, B of g's train pairs adapt the model and g's test pairs score it. Rows:

==============  =============================================================================================
``single``      one BT head fitted without g (the bundle's settings with K = 1).
``stage1-gate`` the Stage-1 mixture fitted without g, its gate on g's pairs (no adaptation).
``routing``     the MiCRo router trained on the B pairs (:class:`heads.router.Router`, probability mixture).
``hyre``        HyRe: the heads reweighted by their likelihood on the B pairs (uniform prior).
``user-head``   a per-user head alone: :class:`heads.adapt.ResidualBT` with no prior (population-PCA + isotropic
                Gaussian prior, CV-chosen variances).
``adapted``     :class:`heads.user.UserAdapter` (``--adapt``): routing, or the heads + a per-user residual, chosen
                by cross-validation on the B pairs.
``oracle``      the seen-group oracle: one BT head per group trained on ALL groups' train pairs (g included).
==============  =============================================================================================

Budgeted rows are mean ± std over seeds; ``macro`` is the mean over groups (its std is over seeds of the
per-seed macro). ``residual_share`` is the fraction of (seed) fits where ``adapted`` chose the residual.
Folds (:mod:`pipeline.evaluate.folds`) run in parallel in a process pool (:func:`pipeline.core.parallel.run_jobs`),
on the run's cached features (nothing is re-embedded).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from heads.defaults import LGO_BUDGETS, LGO_SEEDS, ROUTER_EPOCHS, ROUTER_LR, TAU
from pipeline.core.parallel import error_text
from pipeline.core.run import Run
from pipeline.errors import MicroError
from pipeline.evaluate.folds import fold_job
from pipeline.evaluate.results import format_accuracy

METHODS = ("single", "stage1-gate", "routing", "hyre", "user-head", "adapted", "oracle")
BUDGETED = ("routing", "hyre", "user-head", "adapted")
COLUMNS = ("method", "group", "budget", "accuracy", "accuracy_std", "nll", "ece", "n", "residual_share")


@dataclass
class LGOResult:
    """The long table (one dict per (method, group, budget)), the groups and the figure."""

    rows: list
    groups: list
    counts: list  # test pairs per group
    budgets: list
    seeds: list
    notes: list = field(default_factory=list)
    files: list = field(default_factory=list)
    plots: list = field(default_factory=list)
    seconds: float = 0.0

    def frame(self):
        import polars as pl

        types = {
            "method": pl.Utf8,
            "group": pl.Utf8,
            "budget": pl.Int64,
            "accuracy": pl.Float64,
            "accuracy_std": pl.Float64,
            "nll": pl.Float64,
            "ece": pl.Float64,
            "n": pl.Int64,
            "residual_share": pl.Float64,
        }
        return pl.DataFrame({c: [r.get(c) for r in self.rows] for c in COLUMNS}, schema=types)

    def cell(self, method: str, group: str, budget: int | None = None) -> dict:
        for r in self.rows:
            if r["method"] == method and r["group"] == group and (method not in BUDGETED or r["budget"] == budget):
                return r
        raise KeyError((method, group, budget))

    def markdown(self) -> str:
        """One accuracy table per budget: rows = methods, columns = groups (new users) + macro."""
        cols = [*self.groups, "macro"]
        out = []
        for b in self.budgets:
            out += [
                f"leave-group-out accuracy on each new user's test pairs, B = {b} adaptation pairs "
                f"(mean ± std over {len(self.seeds)} seeds)",
                "",
                "| method | " + " | ".join(f"{g} (n={n})" for g, n in zip(self.groups, self.counts)) + " | macro |",
                "|" + "---|" * (len(cols) + 1),
            ]
            for m in METHODS:
                cells = [format_accuracy(self.cell(m, g, b)) for g in cols]
                out.append(f"| {m} | " + " | ".join(cells) + " |")
            share = self.cell("adapted", "macro", b)["residual_share"]
            out += ["", f"adapted chose the residual in {share:.0%} of the fits", ""]
        return "\n".join(out)


def aggregate(raw: list[dict], groups: list, budgets: list) -> list[dict]:
    """Long rows (COLUMNS) from per-(method, group, budget, seed) rows: mean ± std over seeds, and macro rows."""
    out = []
    for m in METHODS:
        for b in budgets if m in BUDGETED else [None]:
            mine = [r for r in raw if r["method"] == m and r.get("budget") == b]
            seeds = sorted({r.get("seed", 0) for r in mine})
            acc = np.full((len(seeds), len(groups)), np.nan)
            nll, ece, res = acc.copy(), acc.copy(), acc.copy()
            n = np.zeros(len(groups), dtype=int)
            for r in mine:
                i, j = seeds.index(r.get("seed", 0)), groups.index(r["group"])
                acc[i, j], nll[i, j], ece[i, j], n[j] = r["accuracy"], r["nll"], r["ece"], r["n"]
                res[i, j] = float(r.get("residual", np.nan))
            sd = (lambda a: float(np.std(a))) if m in BUDGETED else (lambda a: None)
            for j, g in enumerate(groups):
                out.append(
                    {
                        "method": m,
                        "group": g,
                        "budget": b,
                        "accuracy": float(np.mean(acc[:, j])),
                        "accuracy_std": sd(acc[:, j]),
                        "nll": float(np.mean(nll[:, j])),
                        "ece": float(np.mean(ece[:, j])),
                        "n": int(n[j]),
                        "residual_share": float(np.mean(res[:, j])) if m == "adapted" else None,
                    }
                )
            macro = acc.mean(axis=1)
            out.append(
                {
                    "method": m,
                    "group": "macro",
                    "budget": b,
                    "accuracy": float(macro.mean()),
                    "accuracy_std": sd(macro),
                    "nll": float(nll.mean()),
                    "ece": float(ece.mean()),
                    "n": int(n.sum()),
                    "residual_share": float(np.mean(res)) if m == "adapted" else None,
                }
            )
    return out


def _validate(run: Run, budgets, seeds, adapt) -> tuple[list, list]:
    from pipeline.route.methods import get

    get(adapt)
    if not seeds:
        raise MicroError("--seeds must be >= 1")
    groups = list(run.group_names)
    if len(groups) < 2:
        raise MicroError(f"--protocol leave-group-out needs at least 2 groups, the run has {groups}")
    group, train, test = run.group, run.mask("train"), run.mask("test")
    counts, short = [], []
    for j, g in enumerate(groups):
        n_test, n_train = int((test & (group == j)).sum()), int((train & (group == j)).sum())
        if n_test == 0:
            raise MicroError(f"group '{g}' has no test pairs (split == 'test'): nothing to score it on")
        if n_train < 2:
            raise MicroError(f"group '{g}' has {n_train} train pairs: adapting needs at least 2")
        counts.append(n_test)
        if n_train < max(budgets):
            short.append(f"{g} ({n_train} train pairs)")
    notes = [f"budget larger than the available pairs, used all: {', '.join(short)}"] if short else []
    return counts, notes


def leave_group_out(
    bundle: str | Path,
    run_dir: str | Path,
    *,
    budgets: Sequence[int] | str = LGO_BUDGETS,
    seeds: Sequence[int] = tuple(range(LGO_SEEDS)),
    adapt: str = "auto",
    report: str | Path | None = None,
    jobs: int | None = None,
    tau: float | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    log: Callable[[str], None] = print,
) -> LGOResult:
    """Leave-one-group-out evaluation (module docstring); writes results.csv/.parquet/.md and a figure to
    ``report``. ``tau`` / ``epochs`` / ``lr``: the router's (default: heads.defaults)."""
    from pipeline.core.model import Model
    from pipeline.core.parallel import n_cores, run_jobs
    from pipeline.core.run import read_run
    from pipeline.evaluate.results import fitted_l2, parse_budgets

    t0 = time.perf_counter()
    budgets = list(parse_budgets(budgets))
    seeds = [int(s) for s in seeds]
    model = Model.load(bundle)
    model.check_run(read_run(run_dir), str(run_dir))
    run = Run.load(run_dir)
    counts, notes = _validate(run, budgets, seeds, adapt)
    groups = list(run.group_names)
    params = {k: v for k, v in model.estimator.get_params().items() if k not in ("verbose", "on_iter")}
    router = {
        "tau": TAU if tau is None else tau,
        "epochs": ROUTER_EPOCHS if epochs is None else epochs,
        "lr": ROUTER_LR if lr is None else lr,
    }
    base = {
        "params": params,
        "oracle_l2": fitted_l2(model.meta),
        "gate_input": model.gate_input,
        "budgets": budgets,
        "seeds": seeds,
        "adapt": adapt,
        "router": router,
    }
    job_list = [{**base, "group": None}] + [{**base, "group": g} for g in groups]
    n_jobs = max(1, min(len(job_list), jobs or n_cores()))
    threads = max(1, n_cores() // n_jobs)
    log(f"leave-group-out: {len(groups)} groups, budgets {budgets}, seeds {seeds}, adapt={adapt}, {n_jobs} worker(s)")
    raw, errors = [], []

    def on_rows(job, rows):
        bad = [r["error"] for r in rows if r.get("error")]
        errors.extend(f"{job['group'] or 'oracle'}: {e}" for e in bad)
        raw.extend(r for r in rows if not r.get("error"))
        log(f"  fold {job['group'] or 'oracle'} done ({time.perf_counter() - t0:.0f} s)")

    arrays, meta = run.shared()
    run_jobs(
        job_list,
        fold_job,
        arrays,
        meta,
        on_rows,
        lambda job, exc: [{"error": error_text(exc)}],
        n_jobs=n_jobs,
        threads=threads,
    )
    if errors:
        raise MicroError(f"leave-group-out fold failed: {errors[0]}")
    result = LGOResult(
        rows=aggregate(raw, groups, budgets), groups=groups, counts=counts, budgets=budgets, seeds=seeds, notes=notes
    )
    if report is not None:
        result.files, result.plots = write_report(result, Path(report))
    result.seconds = time.perf_counter() - t0
    return result


def write_report(result: LGOResult, report: Path) -> tuple[list, list]:
    """results.csv / .parquet / .md and the accuracy-vs-budget figure, written atomically."""
    from pipeline.evaluate.plots import plot_lgo_budget
    from pipeline.evaluate.results import write_tables

    files = write_tables(result.frame(), result.markdown(), result.notes, report)
    cols = [*result.groups, "macro"]
    curves = {m: np.array([[result.cell(m, g, b)["accuracy"] for g in cols] for b in result.budgets]) for m in BUDGETED}
    refs = {m: np.array([result.cell(m, g)["accuracy"] for g in cols]) for m in ("single", "stage1-gate", "oracle")}
    plot = plot_lgo_budget(result.budgets, curves, refs, cols, report / "accuracy_vs_budget_lgo.png")
    return files, [plot]
