"""The quasi-Newton M-step of the EM fit: L-BFGS two-loop recursion and an Armijo backtracking line search."""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

from .objective import Evaluation, Problem


class LBFGS:
    """Two-loop recursion with a bounded memory of curvature pairs (skips pairs with s.y <= 0)."""

    def __init__(self, memory: int = 10):
        self.m = int(memory)
        self.S: List[np.ndarray] = []
        self.Y: List[np.ndarray] = []
        self.rho: List[float] = []

    def reset(self) -> None:
        self.S, self.Y, self.rho = [], [], []

    def update(self, s: np.ndarray, y: np.ndarray) -> bool:
        sy = float(s @ y)
        if not np.isfinite(sy) or sy <= 1e-10 * np.sqrt(float(s @ s) * float(y @ y)):
            return False
        self.S.append(s)
        self.Y.append(y)
        self.rho.append(1.0 / sy)
        if len(self.S) > self.m:
            del self.S[0], self.Y[0], self.rho[0]
        return True

    def direction(self, g: np.ndarray) -> np.ndarray:
        if not self.S:
            return -g / max(float(np.linalg.norm(g)), 1e-300)
        q = g.copy()
        al = []
        for s, y, rho in zip(reversed(self.S), reversed(self.Y), reversed(self.rho)):
            a_ = rho * float(s @ q)
            q -= a_ * y
            al.append(a_)
        y, s = self.Y[-1], self.S[-1]
        q *= float(s @ y) / float(y @ y)
        for (s, y, rho), a_ in zip(zip(self.S, self.Y, self.rho), reversed(al)):
            b = rho * float(y @ q)
            q += (a_ - b) * s
        return -q


def line_search(
    prob: Problem,
    ev: Evaluation,
    g: np.ndarray,
    d: np.ndarray,
    r_fixed: np.ndarray,
    rlogr: float,
    grads: Tuple[str, ...],
    accept: str = "Q",
    c1: float = 1e-4,
    max_ls: int = 30,
) -> Optional[Evaluation]:
    """Armijo backtracking from ev along d. ``accept="Q"``: sufficient decrease of the surrogate Q(. | r_fixed)
    (f0 = ev.Q); ``accept="L"``: of the objective L itself (f0 = ev.L; only valid when r_fixed is the E-step
    at ev, where grad Q = grad L). Q >= L, so "Q" implies "L": both make L decrease monotonically, "L"
    accepts the unit quasi-Newton step far more often. Returns the accepted evaluation or None."""
    f0 = ev.Q if (accept == "Q" and ev.Q is not None) else ev.L
    gd = float(g @ d)
    if not gd < 0:
        return None
    step = 1.0
    for _ in range(max_ls):
        trial = ev.theta + step * d
        new = prob.evaluate(trial, r_fixed, rlogr, grads)
        val = new.Q if accept == "Q" else new.L
        if np.isfinite(val) and val <= f0 + c1 * step * gd:
            return new
        # safeguarded quadratic interpolation
        denom = 2.0 * (val - f0 - gd * step) if np.isfinite(val) else np.inf
        nxt = -gd * step * step / denom if denom > 0 else 0.1 * step
        step = float(np.clip(nxt, 0.1 * step, 0.5 * step))
    return None
