"""Held-out model selection for the mixture fit: a grouped validation split, a warm-started L2 path scored by
validation log-likelihood, and a temperature on the mixture logit.

L2 is searched in *relative* units, so one grid serves every embedder: the heads' weight is ``c * s_D`` and the
gate's ``c * s_X``, with ``s_D`` (``s_X``) the mean squared row norm of Delta (of the gate input) divided by its
width -- the mean eigenvalue of the features' second-moment matrix, which is what an L2 weight competes with.
Rescaling the features rescales the chosen absolute values and leaves the fitted model unchanged.

Every candidate L2 is fitted from the same initialisation (a warm start from a strongly regularised solution loses
the heads' specialisation: on DSP a strong-to-weak path ended with 2 distinct heads of 10), each fit stops early
when the validation log-likelihood stops improving, and the search walks a log grid from 1e-2 towards the better
end, then tries the best point's half-decade neighbours. Restarts run at the first candidate only; the others
start from its best restart. The chosen point is refitted on all pairs by the caller.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np
from scipy.special import log_expit

#: the relative L2 the search starts at (with its two decade neighbours), and the range it may walk
C_START, MIN_C, MAX_C = 1e-2, 1e-7, 10.0
#: validation log-likelihood gain per pair a weaker L2 needs to be preferred (ties go to the stronger L2)
MIN_GAIN = 1e-4
#: feature widths up to which the fit runs at full width when ``dim="auto"``; wider features are fitted in their
#: top PCA subspace, each of these widths (nested: the first r principal directions) tried on the held-out slice
FULL_WIDTH_MAX, AUTO_DIMS = 512, (64, 256)


def dim_candidates(setting, width: int) -> List[Optional[int]]:
    """Projection widths to try for a ``dim`` / ``gate_dim`` setting (None: full width), ascending."""
    if setting == "auto":
        return [None] if width <= FULL_WIDTH_MAX else [r for r in AUTO_DIMS if r < width] or [None]
    if setting is None or int(setting) >= width:
        return [None]
    return [int(setting)]


def prompt_groups(prompt: Optional[np.ndarray], n: int) -> np.ndarray:
    """(n,) group ids: rows with identical prompt features share a prompt (and a group); each row its own group
    without prompt features. Rows are compared through two random float64 projections, in chunks."""
    if prompt is None:
        return np.arange(n)
    R = np.random.default_rng(12345).standard_normal((prompt.shape[1], 2))
    sig = np.empty((n, 2))
    step = max(256, (1 << 23) // (8 * prompt.shape[1]))
    for s in range(0, n, step):
        sig[s : s + step] = np.asarray(prompt[s : s + step], dtype=np.float64) @ R
    return np.unique(sig, axis=0, return_inverse=True)[1].ravel()


def holdout_rows(groups: np.ndarray, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, validation rows): a seeded random ``frac`` of the groups is held out (a group never lands on both
    sides). Both sides are non-empty when there are at least two groups."""
    uniq, inv = np.unique(np.asarray(groups), return_inverse=True)
    inv = inv.ravel()
    u = np.random.default_rng([int(seed), 104729]).random(len(uniq))
    val_groups = u < frac
    if len(uniq) >= 2 and (val_groups.all() or not val_groups.any()):
        val_groups = np.zeros(len(uniq), bool)
        val_groups[np.argsort(u)[: max(1, int(round(frac * len(uniq))))]] = True
    val = val_groups[inv]
    return np.flatnonzero(~val), np.flatnonzero(val)


@dataclass
class PathPoint:
    """One fit of the path: relative and absolute L2, validation log-likelihood at its best iteration."""

    c: float
    l2: float
    gate_l2: float
    val_loglik: float
    n_iter: int
    best_iter: int
    seconds: float
    stopped_early: bool = False
    theta: np.ndarray = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {
            "c": self.c,
            "l2": self.l2,
            "gate_l2": self.gate_l2,
            "val_loglik": self.val_loglik,
            "n_iter": self.n_iter,
            "best_iter": self.best_iter,
            "stopped_early": self.stopped_early,
            "seconds": self.seconds,
        }


def best_point(points: Sequence[PathPoint], tol: float = MIN_GAIN) -> PathPoint:
    """The point with the highest validation log-likelihood; a weaker L2 must beat a stronger one by ``tol`` (and a
    point listed later must beat an earlier one at the same L2 by ``tol``)."""
    best = None
    for p in sorted(points, key=lambda p: -p.c):  # stable: equal c keep their order
        if best is None or p.val_loglik > best.val_loglik + tol:
            best = p
    return best


def l2_path(fit: Callable[[float], "object"], scales: tuple[float, float]) -> List[PathPoint]:
    """Search the relative L2 on a log grid. ``fit(c)`` fits relative L2 ``c`` from the initialisation with early
    stopping and returns a :class:`heads.em.EMResult`; ``scales`` = (s_D, s_X). Starts at ``C_START`` and its two
    decade neighbours, walks a decade at a time towards the better end while that keeps improving (within
    [MIN_C, MAX_C]), then tries the best point's half-decade neighbours. Returns the points sorted by ``c``."""
    points: List[PathPoint] = []

    def run(c: float) -> PathPoint:
        t0 = time.perf_counter()
        res = fit(c)
        pt = PathPoint(
            c=float(c),
            l2=float(c * scales[0]),
            gate_l2=float(c * scales[1]),
            val_loglik=float(max(res.val_history)),
            n_iter=int(res.n_iter),
            best_iter=int(res.best_iter or 0),
            seconds=time.perf_counter() - t0,
            stopped_early=bool(res.stopped_early),
            theta=res.theta,
        )
        points.append(pt)
        return pt

    for c in (C_START, C_START * 10, C_START / 10):
        run(c)
    while True:
        best = best_point(points)
        lo, hi = min(p.c for p in points), max(p.c for p in points)
        if np.isclose(best.c, hi) and hi * 10 <= MAX_C:
            run(hi * 10)
        elif np.isclose(best.c, lo) and lo / 10 >= MIN_C:
            run(lo / 10)
        else:
            break
        if best_point(points) is best:
            break
    best = best_point(points)
    for c in (best.c / np.sqrt(10.0), best.c * np.sqrt(10.0)):
        if MIN_C <= c <= MAX_C and not any(np.isclose(c, p.c) for p in points):
            run(c)
    return sorted(points, key=lambda p: p.c)


def calibrated_loglik(log_odds: np.ndarray) -> tuple[float, float]:
    """(mean log-likelihood of sigma(log_odds / T), T) at the temperature T that maximises it: the held-out score
    of a candidate, so that an over- or under-confident fit is judged by how well it ranks the pairs."""
    t = fit_temperature(log_odds)
    return float(np.mean(log_expit(np.asarray(log_odds, dtype=np.float64) / t))), t


def fit_temperature(log_odds: np.ndarray) -> float:
    """T > 0 minimising the mean NLL of sigma(log_odds / T) (log_odds of the observed outcome, (n,))."""
    from scipy.optimize import minimize_scalar

    lo = np.asarray(log_odds, dtype=np.float64)

    def nll(log_t: float) -> float:
        return -float(np.mean(log_expit(lo / np.exp(log_t))))

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))
