"""Held-out model selection for the mixture fit: a grouped validation split, a warm-started L2 path scored by
validation log-likelihood, and a temperature on the mixture logit.

L2 is searched in *relative* units, so one grid serves every embedder: the heads' weight is ``c * s_D`` and the
gate's ``c * s_X``, with ``s_D`` (``s_X``) the mean squared row norm of Delta (of the gate input) divided by its
width -- the mean eigenvalue of the features' second-moment matrix, which is what an L2 weight competes with.
Rescaling the features rescales the chosen absolute values and leaves the fitted model unchanged.

The path runs from strong to weak regularisation, like glmnet's: the first point is fitted from the
initialisation (every restart), each next point starts from the previous solution; every fit stops early when
the validation log-likelihood stops improving (so a point is the best held-out point on the way from the previous
solution towards the optimum of its own L2), the path stops two points past its best, and the best point's
half-decade neighbours are tried. The chosen point is refitted on all pairs by the caller.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np

#: relative L2 values of the coarse path, strong -> weak
L2_GRID = (10.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4)
#: the weakest relative L2 the path extends to when it is still improving at the end of the grid
MIN_C = 1e-7
#: validation log-likelihood gain per pair a weaker L2 needs to be preferred (ties go to the stronger L2)
MIN_GAIN = 1e-4
#: feature widths up to which the fit runs at full width when ``dim="auto"``; wider features are projected
FULL_WIDTH_MAX, AUTO_DIM = 512, 256


def auto_dim(setting, width: int) -> Optional[int]:
    """The projection width for a ``dim`` / ``gate_dim`` setting: None (full width) or an int < width."""
    if setting == "auto":
        return None if width <= FULL_WIDTH_MAX else AUTO_DIM
    if setting is None or int(setting) >= width:
        return None
    return int(setting)


def prompt_groups(prompt: Optional[np.ndarray], n: int) -> np.ndarray:
    """(n,) group ids: rows with identical prompt features share a prompt (and a group); each row its own group
    without prompt features."""
    if prompt is None:
        return np.arange(n)
    sig = np.ascontiguousarray(np.asarray(prompt[:, :min(prompt.shape[1], 32)], dtype=np.float32))
    return np.unique(sig.view(np.dtype((np.void, sig.dtype.itemsize * sig.shape[1]))).ravel(),
                     return_inverse=True)[1].ravel()


def holdout_rows(groups: np.ndarray, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, validation rows): a seeded random ``frac`` of the groups is held out (a group never lands on both
    sides). Both sides are non-empty when there are at least two groups."""
    uniq, inv = np.unique(np.asarray(groups), return_inverse=True)
    inv = inv.ravel()
    u = np.random.default_rng([int(seed), 104729]).random(len(uniq))
    val_groups = u < frac
    if len(uniq) >= 2 and (val_groups.all() or not val_groups.any()):
        val_groups = np.zeros(len(uniq), bool)
        val_groups[np.argsort(u)[:max(1, int(round(frac * len(uniq))))]] = True
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
        return {"c": self.c, "l2": self.l2, "gate_l2": self.gate_l2, "val_loglik": self.val_loglik,
                "n_iter": self.n_iter, "best_iter": self.best_iter, "stopped_early": self.stopped_early,
                "seconds": self.seconds}


def best_point(points: Sequence[PathPoint], tol: float = MIN_GAIN) -> PathPoint:
    """The point with the highest validation log-likelihood; a weaker L2 must beat a stronger one by ``tol``."""
    best = None
    for p in sorted(points, key=lambda p: -p.c):
        if best is None or p.val_loglik > best.val_loglik + tol:
            best = p
    return best


def l2_path(fit: Callable[[float, Optional[np.ndarray]], "object"], scales: tuple[float, float],
            grid: Sequence[float] = L2_GRID, refine: bool = True, stop_after: int = 2) -> List[PathPoint]:
    """Run the path. ``fit(c, theta0)`` fits relative L2 ``c`` (from the initialisation when theta0 is None, else
    warm-started) with early stopping and returns a :class:`heads.em.EMResult`; ``scales`` = (s_D, s_X).
    Returns the points sorted by ``c``."""
    points: List[PathPoint] = []

    def run(c: float, theta0: Optional[np.ndarray]) -> PathPoint:
        t0 = time.perf_counter()
        res = fit(c, theta0)
        pt = PathPoint(c=float(c), l2=float(c * scales[0]), gate_l2=float(c * scales[1]),
                       val_loglik=float(max(res.val_history)), n_iter=int(res.n_iter),
                       best_iter=int(res.best_iter or 0), seconds=time.perf_counter() - t0,
                       stopped_early=bool(res.stopped_early), theta=res.theta)
        points.append(pt)
        return pt

    prev = run(grid[0], None)
    queue = list(grid[1:])
    while queue:
        prev = run(queue.pop(0), prev.theta)
        best = best_point(points)
        if len(points) - 1 - points.index(best) >= stop_after:
            break
        if not queue and best is prev and prev.c / 10 >= MIN_C:  # still improving at the weak end: go on
            queue.append(prev.c / 10)
    best = best_point(points)
    if refine:
        for c in (best.c / np.sqrt(10.0), best.c * np.sqrt(10.0)):
            if min(grid) / 2 < c < max(grid) * 2 and not any(np.isclose(c, p.c) for p in points):
                run(c, best.theta)
    return sorted(points, key=lambda p: p.c)


def fit_temperature(log_odds: np.ndarray) -> float:
    """T > 0 minimising the mean NLL of sigma(log_odds / T) (log_odds of the observed outcome, (n,))."""
    from scipy.optimize import minimize_scalar

    lo = np.asarray(log_odds, dtype=np.float64)

    def nll(log_t: float) -> float:
        return float(np.mean(np.logaddexp(0.0, -lo / np.exp(log_t))))

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))
