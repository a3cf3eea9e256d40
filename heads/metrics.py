"""Pairwise preference metrics on p = P(chosen > rejected), an (N,) array of model probabilities for the
OBSERVED outcome (the chosen response wins in every row of the data)."""

from __future__ import annotations

import numpy as np


def _check(p) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    if p.size == 0:
        raise ValueError("empty probability array")
    if not np.all(np.isfinite(p)) or np.any(p < 0) or np.any(p > 1):
        raise ValueError("probabilities must be finite and in [0, 1]")
    return p


def accuracy(p) -> float:
    """Fraction of pairs with p > 0.5 (a tie p = 0.5 counts as wrong)."""
    return float(np.mean(_check(p) > 0.5))


def log_likelihood(p, eps: float = 1e-12) -> float:
    """Mean log p (p clipped to [eps, 1])."""
    return float(np.mean(np.log(np.clip(_check(p), eps, 1.0))))


def expected_calibration_error(p, n_bins: int = 10) -> float:
    """ECE on the symmetrised problem.

    Convention: every pair is counted in both orders, (chosen, rejected) with probability p and outcome 1,
    and (rejected, chosen) with probability 1 - p and outcome 0, so the metric does not depend on which
    response is listed first. The 2N predictions are put into ``n_bins`` equal-width bins on [0, 1]
    (right edge included in the last bin) and ECE = sum_b (n_b / 2N) |mean outcome_b - mean prob_b|.
    This equals the usual confidence-binned ECE on max(p, 1 - p) with bins folded at 0.5.
    """
    p = _check(p)
    q = np.concatenate([p, 1.0 - p])
    y = np.concatenate([np.ones_like(p), np.zeros_like(p)])
    idx = np.minimum((q * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        m = idx == b
        if m.any():
            total += m.sum() * abs(y[m].mean() - q[m].mean())
    return float(total / q.size)
