"""Stage 1: fit a MixtureBT (or a baseline) on a run's cached features and write a model bundle."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from heads.chunked import matmul_t
from heads.metrics import expected_calibration_error
from heads.selection import prompt_groups
from pipeline.core.bundle import save_bundle
from pipeline.core.run import Run, per_group_accuracy
from pipeline.errors import MicroError

BASELINES = ("single", "static")


@dataclass
class FitReport:
    """What ``micro fit`` prints: mixture metrics per split and the head × group accuracy table."""

    metrics: dict  # split -> {"loglik", "accuracy", "n"}
    groups: list  # group names (test split; train if no test)
    head_group_accuracy: np.ndarray  # (K, G) accuracy of head k alone on group g
    group_counts: list
    gate_input: str
    seconds: float
    bundle: Path | None = None
    notes: list = field(default_factory=list)
    selection: dict = field(default_factory=dict)  # chosen l2 / dims / temperature, the held-out path
    plots: list = field(default_factory=list)
    head_group_split: str = "test"  # the split of head_group_accuracy (train when there is no test split)


def head_group_table(coef: np.ndarray, part: Run) -> tuple[list, np.ndarray, list]:
    """(names, (K, G) accuracy of each head alone per group, counts) on the pairs of ``part``."""
    cols = np.unique(part.group)
    acc = per_group_accuracy(matmul_t(part.delta, coef), part.group, cols, threshold=0.0)
    return [part.group_names[j] for j in cols], acc, [int((part.group == j).sum()) for j in cols]


def selection_summary(model) -> dict:
    """What the fit chose and why: l2 / gate_l2 (absolute), fit widths, temperature and the held-out path."""
    return {
        "l2": float(model.l2_),
        "gate_l2": float(model.gate_l2_),
        "dim": int(model.dim_),
        "gate_dim": int(model.gate_dim_),
        "temperature": float(model.temperature_),
        **model.selection_,
    }


def build_model(k: int, gate: str, baseline: str | None, **params):
    """A MixtureBT configured for the requested model or baseline."""
    from heads.mixture import MixtureBT

    if baseline == "single":
        return MixtureBT(n_components=1, gate="static", **params)
    if baseline == "static":
        return MixtureBT(n_components=k, gate="static", **params)
    if baseline is not None:
        raise MicroError(f"--baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
    return MixtureBT(n_components=k, gate=gate, **params)


def fit_run(
    run_dir: str | Path,
    *,
    k: int = 10,
    gate: str = "context",
    gate_input: str | None = "auto",
    baseline: str | None = None,
    out: str | Path | None = None,
    on_iter: Callable[[int, float], None] | None = None,
    extra_meta: dict | None = None,
    run: Run | None = None,
    **params,
) -> FitReport:
    """Fit on the train split of ``run_dir`` (``run``: its features, when already loaded with ``dtype=None``);
    evaluate on train and test; save a bundle to ``out``."""
    t0 = time.perf_counter()
    if run is None:
        run = Run.load(run_dir, dtype=None)  # the cache's dtype: the fit computes in float32 chunks
    train, test = run.part("train"), run.part("test")
    if train.n == 0:
        raise MicroError(f"{run_dir}: the train split is empty (pairs.parquet has no split == 'train' rows)")
    choice, note = run.resolve_gate_input(gate_input)
    model = build_model(k, gate, baseline, on_iter=on_iter, **params)
    needs_gate = model.gate == "context" and model.n_components > 1
    try:
        model.fit(
            train.delta,
            train.gate_features(choice) if needs_gate else None,
            groups=prompt_groups(train.prompt, train.n),
        )
    except ValueError as exc:
        raise MicroError(f"{run_dir}: {exc}") from None
    metrics = {}
    for name, part in (("train", train), ("test", test)):
        if part.n == 0:
            continue
        x = part.gate_features(choice) if needs_gate else None
        p = model.predict_proba(part.delta, x)
        metrics[name] = {
            "loglik": float(np.mean(np.log(np.clip(p, 1e-300, None)))),
            "accuracy": float(np.mean(p > 0.5)),
            "ece": expected_calibration_error(p),
            "n": part.n,
        }
        if model.temperature_ != 1.0:
            raw = 1.0 / (1.0 + np.exp(-model.log_odds(part.delta, x)))
            metrics[name]["ece_uncalibrated"] = expected_calibration_error(raw)
    ref = test if test.n else train
    names, acc, counts = head_group_table(model.coef_, ref)
    report = FitReport(
        metrics=metrics,
        groups=names,
        head_group_accuracy=acc,
        group_counts=counts,
        gate_input=choice if needs_gate else "none",
        seconds=0.0,
        notes=[note] if note and needs_gate else [],
        head_group_split="test" if test.n else "train",
    )
    if getattr(model, "n_identical_", 0):
        report.notes.append(
            f"{model.n_identical_} pairs with identical features (chosen and rejected embed to the same vector) "
            "carry no preference: left out of the fit"
        )
    if getattr(model, "collapsed_pairs_", None):
        report.notes.append(f"collapsed heads (cosine ≥ 0.99): {model.collapsed_pairs_[:5]}")
    report.selection = selection_summary(model)
    report.seconds = time.perf_counter() - t0
    if out is not None:
        report.bundle = save_bundle(
            model,
            out,
            {
                "fingerprint": run.info["fingerprint"],
                "fingerprint_id": run.fingerprint_id,
                "embedder": {
                    "backend": run.info["backend"],
                    "model_path": run.info.get("model_path"),
                    "max_length": run.info.get("max_length"),
                    "cache_dir": run.info["cache_dir"],
                    "cache_dtype": run.info["cache_dtype"],
                },
                "gate_input": report.gate_input,
                "baseline": baseline,
                "train_run": str(Path(run_dir).resolve()),
                "metrics": metrics,
                "groups": names,
                "head_group_accuracy": acc.tolist(),
                "timings": {
                    "fit_seconds": float(getattr(model, "fit_time_", 0.0)),
                    "total_seconds": report.seconds,
                    "selection_seconds": report.selection.get("seconds", 0.0),
                },
                **(extra_meta or {}),
            },
        )
    if out is not None and report.selection.get("path"):
        from pipeline.evaluate.plots import plot_selection

        report.plots.append(plot_selection(report.selection, Path(out) / "selection.png"))
    return report
