"""HyRe baseline: test-time reweighting of an ensemble of reward heads (Lee et al. 2024, "Test-Time Alignment
via Hypothesis Reweighting").

Given n labelled pairs of a target user / group (Delta = winner - loser, so every pair's label is "first
wins"), the heads' weights are the (tempered) Bayesian posterior over heads under their Bradley-Terry
likelihood::

    w_k  ∝  prior_k * exp(beta * sum_i log sigma(z_ik))

and the adapted reward model predicts ``P = sum_k w_k sigma(z_k)``. Plain HyRe uses a uniform prior;
MiCRo-HyRe uses the Stage-1 gate's mean mixture weights on the adaptation pairs as the prior
(:func:`gate_prior_fn`).
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, Optional

import numpy as np
from scipy.special import log_expit

from .defaults import HYRE_N, SEEDS

__all__ = ["hyre_log_weights", "hyre_weights", "hyre_predict_proba", "hyre_eval", "gate_prior_fn"]


def _check_prior(prior, K: int) -> np.ndarray:
    if prior is None:
        return np.full(K, -np.log(K))
    p = np.asarray(prior, dtype=np.float64)
    if p.shape != (K,):
        raise ValueError(f"prior must have shape ({K},), got {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise ValueError("prior must be finite, non-negative and not all zero")
    with np.errstate(divide="ignore"):
        return np.log(p / p.sum())


def hyre_log_weights(
    head_logits_n: np.ndarray, prior: Optional[np.ndarray] = None, beta: float = 1.0, n_heads: Optional[int] = None
) -> np.ndarray:
    """log w (K,): log prior + beta * sum_i log sigma(z_ik), normalised (log space, stable).

    ``head_logits_n`` (n, K) may have n = 0 rows (then w = prior); for a 0-row input without a prior, give
    ``n_heads`` or pass a (0, K) array."""
    z = np.asarray(head_logits_n, dtype=np.float64)
    if z.ndim == 1:
        z = z[None, :]
    if z.ndim != 2:
        raise ValueError(f"head_logits_n must be 2-D (n, K), got shape {z.shape}")
    K = z.shape[1] if n_heads is None else int(n_heads)
    if K < 1 or z.shape[1] != K:
        raise ValueError(f"head_logits_n has {z.shape[1]} heads, expected K = {K} >= 1")
    if not np.all(np.isfinite(z)):
        raise ValueError("head_logits_n contains NaN or inf")
    if not (np.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be finite and >= 0, got {beta}")
    a = _check_prior(prior, K) + float(beta) * log_expit(z).sum(axis=0)
    m = a[np.isfinite(a)].max()
    return a - (m + np.log(np.exp(a - m).sum()))


def hyre_weights(head_logits_n: np.ndarray, prior: Optional[np.ndarray] = None, beta: float = 1.0) -> np.ndarray:
    """HyRe head weights (K,) from n labelled pairs: w ∝ prior * exp(beta * sum_i log sigma(z_ik))."""
    return np.exp(hyre_log_weights(head_logits_n, prior, beta))


def hyre_predict_proba(head_logits: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """P(first preferred) = sum_k w_k sigma(z_k) for (N, K) logits and one weight vector (K,)."""
    z = np.asarray(head_logits, dtype=np.float64)
    return np.exp(log_expit(z)) @ np.asarray(weights, dtype=np.float64)


def gate_prior_fn(gate_weights: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """MiCRo-HyRe prior: ``prior_fn(idx)`` = mean Stage-1 gate weights f(x_i) over the adaptation rows idx.

    ``gate_weights`` (N, K) are the Stage-1 gate's weights for every row of the evaluated table."""
    F = np.asarray(gate_weights, dtype=np.float64)
    if F.ndim != 2:
        raise ValueError(f"gate_weights must be 2-D (N, K), got shape {F.shape}")

    def prior_fn(idx: np.ndarray) -> np.ndarray:
        return F[np.asarray(idx)].mean(axis=0)

    return prior_fn


def hyre_eval(
    head_logits: np.ndarray,
    groups: np.ndarray,
    n_per_group: int = HYRE_N,
    seeds: Iterable[int] = tuple(range(SEEDS)),
    prior_fn: Optional[Callable[[np.ndarray], np.ndarray]] = None,
    beta: float = 1.0,
) -> Dict[str, object]:
    """Evaluate (MiCRo-)HyRe per group.

    For every group and seed: draw ``n_per_group`` of the group's pairs (without replacement) as the
    adaptation set, weight the heads with :func:`hyre_weights` (prior = ``prior_fn(idx)`` with idx the
    global row indices of the adaptation set, or uniform), and score accuracy (P > 0.5; Delta = winner -
    loser) on the group's REMAINING pairs. The draw depends only on (seed, the group's position in sorted
    order), so HyRe and MiCRo-HyRe given the same seeds see the same adaptation sets.

    Returns a dict: ``per_group`` {group: {"mean", "std", "accs" (per seed), "probs" (per seed: (n_eval,)
    probabilities of the evaluated pairs, in row order), "rows" (per seed: their row indices), "n_pairs",
    "n_eval"}},
    ``macro_mean`` / ``macro_std`` (mean over groups of the per-group mean / std), ``skipped`` {group:
    n_pairs} for groups with <= n_per_group pairs (nothing left to evaluate), ``n_per_group``, ``seeds``.
    """
    z = np.asarray(head_logits, dtype=np.float64)
    g = np.asarray(groups)
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] == 0:
        raise ValueError(f"head_logits must be a non-empty 2-D (N, K) array, got shape {z.shape}")
    if not np.all(np.isfinite(z)):
        raise ValueError("head_logits contains NaN or inf")
    if g.shape != (z.shape[0],):
        raise ValueError(f"groups must have shape ({z.shape[0]},), got {g.shape}")
    if int(n_per_group) != n_per_group or n_per_group < 0:
        raise ValueError(f"n_per_group must be an integer >= 0, got {n_per_group}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty")
    n = int(n_per_group)
    uniq, inv = np.unique(g, return_inverse=True)
    per_group, skipped = {}, {}
    for j, u in enumerate(uniq):
        key = u.item() if hasattr(u, "item") else u
        rows = np.flatnonzero(inv == j)
        if rows.size <= n:
            skipped[key] = int(rows.size)
            continue
        accs, probs, evals = [], [], []
        for s in seeds:
            rng = np.random.default_rng([s, j])
            pick = rng.permutation(rows.size)
            ad, ev = rows[np.sort(pick[:n])], rows[np.sort(pick[n:])]
            prior = None if prior_fn is None else prior_fn(ad)
            w = hyre_weights(z[ad] if n else np.zeros((0, z.shape[1])), prior=prior, beta=beta)
            probs.append(hyre_predict_proba(z[ev], w))
            evals.append(ev)
            accs.append(float((probs[-1] > 0.5).mean()))
        accs = np.asarray(accs)
        per_group[key] = {
            "mean": float(accs.mean()),
            "std": float(accs.std()),
            "accs": accs.tolist(),
            "probs": probs,
            "rows": evals,
            "n_pairs": int(rows.size),
            "n_eval": int(rows.size - n),
        }
    means = [v["mean"] for v in per_group.values()]
    stds = [v["std"] for v in per_group.values()]
    return {
        "per_group": per_group,
        "macro_mean": float(np.mean(means)) if means else float("nan"),
        "macro_std": float(np.mean(stds)) if stds else float("nan"),
        "skipped": skipped,
        "n_per_group": n,
        "seeds": seeds,
    }
