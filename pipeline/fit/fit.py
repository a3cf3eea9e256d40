"""Stage 1: fit a MixtureBT (or a baseline) on a run's cached features and write a model bundle."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.core.bundle import save_bundle
from pipeline.errors import MicroError
from heads.chunked import matmul_t
from heads.metrics import expected_calibration_error
from heads.selection import prompt_groups
from pipeline.core.run import Features, load_features

BASELINES = ("single", "static")


@dataclass
class FitReport:
    """What ``micro fit`` prints: mixture metrics per split and the head × group accuracy table."""

    metrics: dict                       # split -> {"loglik", "accuracy", "n"}
    groups: list                        # group names (test split; train if no test)
    head_group_accuracy: np.ndarray     # (K, G) accuracy of head k alone on group g
    group_counts: list
    gate_input: str
    seconds: float
    bundle: Path | None = None
    notes: list = field(default_factory=list)
    selection: dict = field(default_factory=dict)   # chosen l2 / dims / temperature, the held-out path
    plots: list = field(default_factory=list)
    head_group_split: str = "test"      # the split of head_group_accuracy (train when there is no test split)


def gate_features(feats: Features, gate_input: str) -> np.ndarray:
    """(N, p) what the gate reads: the prompt feature or the context+prompt feature."""
    if gate_input == "prompt":
        return feats.prompt
    if gate_input == "context":
        return feats.context
    raise MicroError(f"--gate-input must be 'prompt' or 'context', got {gate_input!r}")


def resolve_gate_input(feats: Features, gate_input: str | None) -> tuple[str, str | None]:
    """'auto' → context when every train pair has a context, else prompt; returns (choice, note)."""
    if gate_input not in (None, "auto"):
        if gate_input == "context" and not feats.has_context.any():
            raise MicroError("--gate-input context: this run has no contexts (the pair table's 'context' is empty)")
        return gate_input, None
    train = feats.split == "train"
    if feats.has_context[train].all():
        return "context", "gate reads context+prompt (every train pair has a context; --gate-input prompt to change)"
    return "prompt", "gate reads the prompt alone (not every pair has a context)"


def head_group_table(coef: np.ndarray, delta: np.ndarray, groups: np.ndarray) -> tuple[list, np.ndarray, list]:
    """(names, (K, G) accuracy of each head alone per group, counts)."""
    names = sorted({g for g in groups if g is not None})
    if not names:
        names, groups = ["all"], np.array(["all"] * len(delta), dtype=object)
    z = matmul_t(delta, coef)
    acc = np.zeros((coef.shape[0], len(names)))
    counts = []
    for j, g in enumerate(names):
        m = groups == g
        counts.append(int(m.sum()))
        acc[:, j] = (z[m] > 0).mean(axis=0) if m.any() else np.nan
    return names, acc, counts


def selection_summary(model) -> dict:
    """What the fit chose and why: l2 / gate_l2 (absolute), fit widths, temperature and the held-out path."""
    return {"l2": float(model.l2_), "gate_l2": float(model.gate_l2_), "dim": int(model.dim_),
            "gate_dim": int(model.gate_dim_), "temperature": float(model.temperature_), **model.selection_}


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


def fit_run(run_dir: str | Path, *, k: int = 10, gate: str = "context", gate_input: str | None = "auto",
            baseline: str | None = None, out: str | Path | None = None,
            on_iter: Callable[[int, float], None] | None = None, extra_meta: dict | None = None,
            **params) -> FitReport:
    """Fit on the train split of ``run_dir``; evaluate on train and test; save a bundle to ``out``."""
    t0 = time.perf_counter()
    feats = load_features(run_dir, dtype=None)   # the cache's dtype: the fit computes in float32 chunks
    train, test = feats.split_rows("train"), feats.split_rows("test")
    if train.n == 0:
        raise MicroError(f"{run_dir}: the train split is empty (pairs.parquet has no split == 'train' rows)")
    choice, note = resolve_gate_input(feats, gate_input)
    model = build_model(k, gate, baseline, on_iter=on_iter, **params)
    needs_gate = model.gate == "context" and model.n_components > 1
    try:
        model.fit(train.delta, gate_features(train, choice) if needs_gate else None,
                  groups=prompt_groups(train.prompt, train.n))
    except ValueError as exc:
        raise MicroError(f"{run_dir}: {exc}") from None
    metrics = {}
    for name, part in (("train", train), ("test", test)):
        if part.n == 0:
            continue
        x = gate_features(part, choice) if needs_gate else None
        p = model.predict_proba(part.delta, x)
        metrics[name] = {"loglik": float(np.mean(np.log(np.clip(p, 1e-300, None)))),
                         "accuracy": float(np.mean(p > 0.5)), "ece": expected_calibration_error(p), "n": part.n}
        if model.temperature_ != 1.0:
            raw = 1.0 / (1.0 + np.exp(-model.log_odds(part.delta, x)))
            metrics[name]["ece_uncalibrated"] = expected_calibration_error(raw)
    ref = test if test.n else train
    names, acc, counts = head_group_table(model.coef_, ref.delta, ref.group)
    report = FitReport(metrics=metrics, groups=names, head_group_accuracy=acc, group_counts=counts,
                       gate_input=choice if needs_gate else "none", seconds=0.0, notes=[note] if note and needs_gate else [],
                       head_group_split="test" if test.n else "train")
    if getattr(model, "collapsed_pairs_", None):
        report.notes.append(f"collapsed heads (cosine ≥ 0.99): {model.collapsed_pairs_[:5]}")
    report.selection = selection_summary(model)
    report.seconds = time.perf_counter() - t0
    if out is not None:
        report.bundle = save_bundle(model, out, {
            "fingerprint": feats.run["fingerprint"], "fingerprint_id": feats.fingerprint_id,
            "embedder": {"backend": feats.run["backend"], "model_path": feats.run.get("model_path"),
                         "max_length": feats.run.get("max_length"), "cache_dir": feats.run["cache_dir"],
                         "cache_dtype": feats.run["cache_dtype"]},
            "gate_input": report.gate_input, "baseline": baseline, "train_run": str(Path(run_dir).resolve()),
            "metrics": metrics, "groups": names, "head_group_accuracy": acc.tolist(),
            "timings": {"fit_seconds": float(getattr(model, "fit_time_", 0.0)), "total_seconds": report.seconds,
                        "selection_seconds": report.selection.get("seconds", 0.0)},
            **(extra_meta or {}),
        })
    if out is not None and report.selection.get("path"):
        from pipeline.evaluate.plots import plot_selection

        report.plots.append(plot_selection(report.selection, Path(out) / "selection.png"))
    return report
