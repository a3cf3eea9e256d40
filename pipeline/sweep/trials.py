"""The trial function of ``micro sweep``: one Stage-1 fit and the trials that share it.

A *job* is one Stage-1 fit (fit hyperparameters + seed) and the trials that share it: one trial for
``--stage fit``, one per routing configuration for ``--stage route|all`` (the fit is done once per job).
:func:`run_job` runs in the workers of :func:`pipeline.core.parallel.run_jobs` on the run's shared arrays
(:meth:`pipeline.core.run.Run.from_shared`: memory-mapped, never copied per job).
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np

from pipeline.core.parallel import error_text
from pipeline.core.run import Run, per_group_accuracy

FIT_KEYS = ("alpha", "l2", "n_init", "max_iter", "tol", "init", "dim", "gate_dim", "gate_hidden")
FIT_METRICS = ("n_iter", "converged", "objective", "n_collapsed", "fit_seconds", "wall_seconds", "test_ece") + tuple(
    f"{part}_{m}" for part in ("train", "val", "test") for m in ("n", "loglik", "acc", "acc_macro")
)


def metric_columns(group_names, stage: str) -> list[str]:
    """The metric columns the trials of ``stage`` write (what ``--rank-by`` can name)."""
    cols = [*FIT_METRICS, *(column_name("acc_", g) for g in group_names)]
    if stage != "fit":
        cols += ["routed_acc_macro", *(column_name("routed_acc_", g) for g in group_names)]
    return cols


def holdout_mask(prompt_id: np.ndarray, train: np.ndarray, frac: float, seed: int) -> np.ndarray:
    """Validation rows: train pairs whose prompt falls in a seeded random ``frac`` of the prompts (grouped by
    prompt, so no prompt is on both sides); a different draw per seed (repeated random sub-sampling)."""
    if frac <= 0 or len(prompt_id) == 0:
        return np.zeros(len(prompt_id), dtype=bool)
    u = np.random.default_rng([int(seed), 7919]).random(int(prompt_id.max()) + 1)
    return train & (u[prompt_id] < frac)


def _nanmean(v) -> float:
    v = [x for x in v if not math.isnan(x)]
    return float(np.mean(v)) if v else math.nan


def column_name(prefix: str, group: str) -> str:
    return prefix + "".join(c if c.isalnum() or c == "_" else "_" for c in str(group))


def _fit(run: Run, fit: dict, seed: int, holdout: float):
    """Fit one model on train minus the validation rows; Stage-1 metrics on fit / val / test rows."""
    from heads.metrics import accuracy, expected_calibration_error, log_likelihood
    from heads.mixture import MixtureBT

    gi, _ = run.resolve_gate_input(fit["gate_input"], option="gate_input")
    train = run.mask("train")
    val = holdout_mask(run.prompt_id, train, holdout, seed)
    if holdout > 0 and not val.any():  # a NaN validation score is no result: say so instead of ranking it
        raise ValueError(
            f"empty validation slice: holdout {holdout:g} of the {len(np.unique(run.prompt_id[train]))} train "
            f"prompts drew none for seed {seed}; raise --holdout"
        )
    rows = {"train": train & ~val, "val": val, "test": run.mask("test")}
    model = MixtureBT(n_components=fit["k"], gate=fit["gate"], random_state=seed, **{k: fit[k] for k in FIT_KEYS})
    needs_gate = model.gate == "context" and model.n_components > 1
    D, X = run.delta, run.gate_features(gi)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(D[rows["train"]], X[rows["train"]] if needs_gate else None)
    out = {
        "n_iter": int(model.n_iter_),
        "converged": bool(model.converged_),
        "objective": float(model.objective_),
        "n_collapsed": len(model.collapsed_pairs_),
        "fit_seconds": float(model.fit_time_),
    }
    for name, m in rows.items():
        out[f"{name}_n"] = int(m.sum())
        if not m.any():
            out[f"{name}_loglik"] = out[f"{name}_acc"] = out[f"{name}_acc_macro"] = math.nan
            continue
        p = model.predict_proba(D[m], X[m] if needs_gate else None)
        out[f"{name}_loglik"], out[f"{name}_acc"] = log_likelihood(p), accuracy(p)
        accs = per_group_accuracy(p, run.group[m], range(len(run.group_names))).tolist()
        out[f"{name}_acc_macro"] = _nanmean(accs)
        if name == "test":
            out["test_ece"] = expected_calibration_error(p)
            out.update({column_name("acc_", n): a for n, a in zip(run.group_names, accs)})
    return model, out, (run.take(rows["train"]), run.take(rows["test"])), (gi if needs_gate else "none")


def _route(estimator, parts, gate_used: str, route: dict, seed: int) -> dict:
    from pipeline.core.model import Model
    from pipeline.route.route import route_seeds

    train, test = parts
    if test.n == 0:
        raise ValueError("routing needs test pairs (split == 'test')")
    res = route_seeds(
        Model(estimator, {"gate_input": gate_used}),
        train,
        test,
        tau=route["tau"],
        epochs=route["epochs"],
        budget=route["budget"],
        seeds=(seed,),
        lr=route["lr"],
    )
    after = res.after[0]
    out = {column_name("routed_acc_", g): float(a) for g, a in zip(res.groups, after)}
    out["routed_acc_macro"] = _nanmean(after.tolist())
    return out


def run_job(arrays: dict, meta: dict, job: dict) -> list[dict]:
    """Run one job (see module docstring); never raises: failures become the rows' ``error``."""
    t0 = time.perf_counter()
    try:
        model, fit_out, parts, gate_used = _fit(Run.from_shared(arrays, meta), job["fit"], job["seed"], job["holdout"])
        fit_err = None
    except Exception as exc:  # noqa: BLE001 -- a failing trial is recorded, the sweep goes on
        fit_err = error_text(exc)
    fit_wall = time.perf_counter() - t0
    rows = []
    for i, t in enumerate(job["trials"]):
        t1 = time.perf_counter()
        row = {"config_hash": t["hash"], "error": fit_err, "fit_reused": i > 0}
        if fit_err is None:
            row.update(fit_out)
            if t["route"] is not None:
                try:
                    row.update(_route(model, parts, gate_used, t["route"], job["seed"]))
                except Exception as exc:  # noqa: BLE001
                    row["error"] = error_text(exc)
        row["wall_seconds"] = (fit_wall if i == 0 else 0.0) + time.perf_counter() - t1
        rows.append(row)
    return rows


def error_rows(job: dict, exc: BaseException) -> list[dict]:
    """Rows for a job whose worker died (the trial function itself never raises)."""
    return [
        {"config_hash": t["hash"], "error": error_text(exc), "fit_reused": False, "wall_seconds": math.nan}
        for t in job["trials"]
    ]
