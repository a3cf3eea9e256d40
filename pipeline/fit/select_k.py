"""``micro fit --k auto``: K selection by a K sweep on held-out train prompts and the one-standard-error rule.

Uses the sweep runner's API (:func:`pipeline.sweep.runner.run_sweep`, :func:`pipeline.sweep.report.select_k`);
the sweep's trials construct their estimators themselves, so nothing imports back into ``pipeline.fit``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from cache.atomic import write_json_atomic
from heads.defaults import HOLDOUT, SWEEP_SEEDS
from pipeline.errors import MicroError
from pipeline.sweep.report import KSelection, k_candidates, parse_k_range, select_k
from pipeline.sweep.runner import run_sweep
from pipeline.sweep.space import FIT_PARAMS


def auto_k(
    source,
    k_range: str,
    fit_params: dict,
    *,
    seeds: int = SWEEP_SEEDS,
    holdout: float = HOLDOUT,
    jobs: int | None = None,
    out_dir: str | Path,
    log: Callable[[str], None] = print,
) -> KSelection:
    """``micro fit --k auto``: a K sweep (:func:`k_candidates`) with ``seeds`` seeds on the train split
    (validation = ``holdout`` of the train prompts), the one-SE rule, results + plot in ``out_dir``."""
    lo, hi = parse_k_range(k_range)
    if not holdout > 0:
        raise MicroError("--k auto needs --holdout > 0: K is chosen on the held-out train prompts")
    ks = k_candidates(lo, hi)
    space = {"k": ks, **{k: [v] for k, v in fit_params.items() if k in FIT_PARAMS and k != "k"}}
    out_dir = Path(out_dir)
    log(f"K selection: K ∈ {ks} × {seeds} seeds, validation = {holdout:.0%} of the train prompts (test unused)")
    res = run_sweep(
        source,
        space,
        seeds=seeds,
        holdout=holdout,
        jobs=jobs,
        out=out_dir / "results.parquet",
        rank_by="val_loglik",
        log=log,
    )
    if res.k_selection is None:
        if res.frame is not None and len(ks) == 1 and res.frame.filter(res.frame["error"].is_null()).height:
            res.k_selection = select_k(res.frame)
        else:
            errs = [] if res.frame is None else res.frame["error"].drop_nulls().unique().to_list()[:3]
            raise MicroError(f"K selection failed: no successful trials ({'; '.join(errs)})")
    write_json_atomic(
        out_dir / "k_selection.json",
        {
            **res.k_selection.to_dict(),
            "k_range": [lo, hi],
            "candidates": ks,
            "seeds": seeds,
            "holdout": holdout,
            "plots": [str(p) for p in res.plots],
        },
    )
    return res.k_selection
