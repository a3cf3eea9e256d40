"""Generalised EM for the mixture of Bradley-Terry heads (the driver; objective in :mod:`heads.objective`, M-step
in :mod:`heads.lbfgs`).

E-step: r_ik = f_ik sigma(z_ik) / sum_k f_ik sigma(z_ik) (log space). Surrogate (Jensen):
L(theta) <= Q(theta | r) = -(1/n) sum r_ik [log f_ik(theta) + log sigma(z_ik(theta))] + (1/n) sum r log r
+ alpha-term + L2, with equality at the theta that produced r. Any step that lowers Q lowers L, for any
alpha >= 0, so the accepted iterates are monotone in L.

M-step: quasi-Newton (L-BFGS two-loop recursion, memory persistent across EM iterations; pairs
s = theta_{t+1} - theta_t, y = grad L(theta_{t+1}) - grad L(theta_t), which equal grad Q at the expansion
points) with an Armijo backtracking line search. The search can test sufficient decrease of Q (the
textbook generalised-EM criterion, ``accept="Q"``) or of L itself (``accept="L"``, the default): Q >= L
with equality at theta_t, so the Q test implies the L test and both give monotone L; on 3,072-d data the
Q test rejects most unit steps (the responsibilities move a lot) while the L test accepts them, halving
the passes per iteration. The first M-step (responsibilities from the initialisation, not from the model)
always uses Q. An accepted unit step costs one pass over the data.

Early stopping: given a validation problem (``val``), its mean log-likelihood is measured after every iteration
and the fit stops after ``patience`` iterations without improvement, returning the best validation point.
A non-finite objective is an error (never "converged").
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import numpy as np

from .defaults import MAX_ITER, PATIENCE, TOL
from .lbfgs import LBFGS, line_search
from .objective import Evaluation, Problem, entropy_const

SMALL_PROBLEM = 1 << 22  # elements of delta + prompt below which BLAS / OpenMP run single-threaded


def thread_limit(n_elements: int):
    """Context manager: single-threaded BLAS/OpenMP for small problems (thread hand-offs cost more than they
    save there, badly so on a loaded machine); no change for large ones."""
    if n_elements < SMALL_PROBLEM:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(1)
    return contextlib.nullcontext()


@dataclass
class EMResult:
    theta: np.ndarray
    objective: float
    history: List[float]
    converged: bool
    n_iter: int
    times: List[float] = field(default_factory=list)
    val_history: List[float] = field(default_factory=list)  # held-out score per iteration (calibrated log-lik)
    best_iter: Optional[int] = None  # iteration of the returned point (early stopping)
    stopped_early: bool = False


def _finite(ev: Evaluation, where: str) -> Evaluation:
    if not np.isfinite(ev.L):
        raise ValueError(
            f"the objective became non-finite ({ev.L}) {where}: check the features for "
            "extreme values and the hyperparameters (alpha, l2) for NaN/inf"
        )
    return ev


def first_m_step(prob: Problem, theta: np.ndarray, r0: np.ndarray, steps: int, memory: int, tol: float) -> np.ndarray:
    """Up to ``steps`` L-BFGS steps on Q(. | r0) from theta; r0 in the (K, n) layout."""
    rl0 = entropy_const(r0)
    ev = prob.evaluate(theta, r0, rl0, grads=("Q",))
    ev_q = Evaluation(theta=ev.theta, L=ev.L, nll=ev.nll, r=ev.r, Q=ev.Q, gL=ev.gQ)
    opt = LBFGS(memory)
    for _ in range(int(steps)):
        d = opt.direction(ev_q.gL)
        new = line_search(prob, ev_q, ev_q.gL, d, r0, rl0, ("Q",), "Q")
        if new is None:
            break
        opt.update(new.theta - ev_q.theta, new.gQ - ev_q.gL)
        rel = abs(ev_q.Q - new.Q) / max(abs(new.Q), 1e-12)
        ev_q = Evaluation(theta=new.theta, L=new.L, nll=new.nll, r=new.r, Q=new.Q, gL=new.gQ)
        if rel < tol * 1e-2:
            break
    return ev_q.theta


def run_em(
    prob: Problem,
    theta0: np.ndarray,
    r0: Optional[np.ndarray] = None,
    *,
    max_iter: int = MAX_ITER,
    tol: float = TOL,
    m_steps: int = 1,
    init_m_steps: int = 50,
    memory: int = 10,
    accept: str = "L",
    on_iter: Optional[Callable[[int, float], None]] = None,
    verbose: int = 0,
    on_eval: Optional[Callable[[int, "Evaluation"], None]] = None,
    val: Optional[Problem] = None,
    patience: int = PATIENCE,
) -> EMResult:
    """Generalised EM from theta0; the first M-step uses responsibilities r0 (n, K) (default: the E-step at theta0)
    and runs up to ``init_m_steps`` L-BFGS steps on Q(.|r0) (0: none, e.g. for a warm start); later
    M-steps run ``m_steps`` steps. ``accept`` is the line-search criterion of the EM iterations ("L" or "Q", see
    :func:`heads.lbfgs.line_search`; inner steps of an M-step with m_steps > 1 always use "Q"). ``on_eval(it,
    ev)``, if given, sees every accepted iterate (used by benchmarks). With ``val`` (a Problem on held-out pairs
    with the same parameters) the fit stops early (``patience``) and returns the best validation point."""
    t_start = time.perf_counter()
    theta = np.array(theta0, dtype=np.float64)
    if init_m_steps:
        r0 = (
            prob.evaluate(theta, grads=()).r if r0 is None else np.ascontiguousarray(np.asarray(r0, dtype=np.float64).T)
        )  # public (n, K) -> internal (K, n)
        theta = first_m_step(prob, theta, r0, init_m_steps, memory, tol)
    ev = _finite(prob.evaluate(theta, grads=("L",)), "at the start")
    history, times = [ev.L], [time.perf_counter() - t_start]
    val_hist = [val.heldout_score(ev.theta)] if val is not None else []
    best = (val_hist[0], 0, ev) if val is not None else None
    if verbose:
        print(f"  init  objective {ev.L:.8f}  ({times[-1]:.2f}s)")
    if on_eval is not None:
        on_eval(0, ev)
    opt = LBFGS(memory)
    converged, stopped, it = False, False, 0
    m_steps = max(1, int(m_steps))
    for it in range(1, int(max_iter) + 1):
        t0 = time.perf_counter()
        r_t = ev.r
        rl = entropy_const(r_t)
        cur = ev
        cur.Q = cur.L
        g = cur.gL
        new = None
        want = ("L",) if m_steps == 1 else ("L", "Q")
        for j in range(m_steps):
            crit = accept if j == 0 else "Q"
            d = opt.direction(g)
            if not float(g @ d) < 0:
                opt.reset()
                d = opt.direction(g)
            cand = line_search(prob, cur, g, d, r_t, rl, want, crit)
            if cand is None and opt.S:
                opt.reset()
                cand = line_search(prob, cur, g, opt.direction(g), r_t, rl, want, crit)
            if cand is None:
                break
            g_next = cand.gL if m_steps == 1 else cand.gQ  # gradient of Q(.|r_t) at the new point
            opt.update(cand.theta - cur.theta, g_next - g)
            cur, g, new = cand, g_next, cand
        if new is None:
            _finite(ev, f"at iteration {it}")
            converged = True  # no descent possible at numerical precision
            history.append(ev.L)
            times.append(time.perf_counter() - t0)
            break
        prev = ev.L
        ev = _finite(new, f"at iteration {it}")
        ev.Q = None
        history.append(ev.L)
        times.append(time.perf_counter() - t0)
        rel = (prev - ev.L) / max(abs(ev.L), 1e-12)
        if verbose:
            print(f"  iter {it:4d}  objective {ev.L:.8f}  rel.change {rel:.2e}  ({times[-1]:.3f}s)")
        if on_iter is not None:
            on_iter(it, ev.L)
        if on_eval is not None:
            on_eval(it, ev)
        if val is not None:
            val_hist.append(val.heldout_score(ev.theta))
            if val_hist[-1] > best[0] + 1e-7:
                best = (val_hist[-1], it, ev)
            elif it - best[1] >= patience:
                stopped = True
                break
        if abs(rel) < tol or float(np.max(np.abs(ev.gL))) < 1e-12:
            converged = True
            break
    if best is not None and best[1] != it:
        ev = best[2]
    return EMResult(
        theta=ev.theta,
        objective=ev.L,
        history=history,
        converged=converged or stopped,
        n_iter=it,
        times=times,
        val_history=val_hist,
        best_iter=best[1] if best else None,
        stopped_early=stopped,
    )


def newton_polish_single(prob: Problem, theta: np.ndarray, iters: int = 5, max_dim: int = 1024) -> np.ndarray:
    """K = 1 only: a few damped Newton steps on the (convex) single-head objective; no-op for large d."""
    if prob.K != 1 or prob.d > max_dim:
        return theta
    ev = prob.evaluate(theta, grads=("L",))
    Dn = np.asarray(prob.dense()[0], dtype=np.float64)
    for _ in range(iters):
        W, _ = prob.packer.unpack(ev.theta)
        z = Dn @ W[0]
        s = 1.0 / (1.0 + np.exp(-z))
        H = (Dn.T * (s * (1 - s))) @ Dn / prob.n + prob.l2 * np.eye(prob.d)
        gW, _ = prob.packer.unpack(ev.gL)
        step = np.linalg.solve(H, gW[0])
        d = np.zeros_like(theta)
        d[prob.packer.slices["W"][0]] = -step
        t = 1.0
        for _ in range(20):
            new = prob.evaluate(ev.theta + t * d, grads=("L",))
            if new.L <= ev.L:
                break
            t *= 0.5
        else:
            break
        done = ev.L - new.L < 1e-16 * max(1.0, abs(ev.L))
        ev = new
        if done:
            break
    return ev.theta
