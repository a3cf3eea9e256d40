"""Generalised EM for the mixture of Bradley-Terry heads: fused objective/gradient pass, L-BFGS M-step.

Objective (minimised), n pairs, K heads, Delta_i = phi(x_i, a_w) - phi(x_i, a_l), z_ik = w_k . Delta_i,
f_ik = softmax_k(gate logits of psi(x_i))::

    L(theta) = -(1/n) sum_i log sum_k f_ik sigma(z_ik)
               + alpha (1/n) sum_i sum_k f_ik log f_ik
               + (l2/2) (||W||^2 + ||gate weight matrices||^2)

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
always uses Q. One evaluation streams Delta and the prompt
features once, in row chunks that stay in cache: forward (z, gate logits), the E-step at the trial point,
Q and L values and the gradient of L (and/or Q) -- so an accepted unit step costs one pass over the data.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from . import gate as G


SMALL_PROBLEM = 1 << 22  # elements of delta + prompt below which BLAS / OpenMP run single-threaded


def thread_limit(n_elements: int):
    """Context manager: single-threaded BLAS/OpenMP for small problems (thread hand-offs cost more than they
    save there, badly so on a loaded machine); no change for large ones."""
    if n_elements < SMALL_PROBLEM:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(1)
    return contextlib.nullcontext()


DEBUG = False


class Packer:
    """Flat float64 parameter vector <-> (W (K, d), gate dict)."""

    def __init__(self, n_components: int, n_features: int, gate_kind: str, n_prompt: int, hidden: Optional[int]):
        self.K, self.d, self.kind = n_components, n_features, gate_kind
        self.entries: List[Tuple[str, tuple]] = [("W", (n_components, n_features))]
        self.entries += G.gate_shapes(gate_kind, n_components, n_prompt, hidden)
        self.slices, off = {}, 0
        for key, shape in self.entries:
            size = int(np.prod(shape))
            self.slices[key] = (slice(off, off + size), shape)
            off += size
        self.size = off
        self.l2_mask = np.zeros(off)
        for key, _ in self.entries:
            if key == "W" or key in G.PENALISED:
                self.l2_mask[self.slices[key][0]] = 1.0

    def pack(self, W: np.ndarray, gate: Dict[str, np.ndarray]) -> np.ndarray:
        theta = np.empty(self.size)
        for key, (sl, shape) in self.slices.items():
            theta[sl] = np.asarray(W if key == "W" else gate[key], dtype=np.float64).ravel()
        return theta

    def unpack(self, theta: np.ndarray) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
        W = theta[self.slices["W"][0]].reshape(self.slices["W"][1])
        gate = {k: theta[sl].reshape(shape) for k, (sl, shape) in self.slices.items() if k != "W"}
        return W, gate


@dataclass
class Evaluation:
    theta: np.ndarray
    L: float                      # full penalised objective
    nll: float                    # -(1/n) sum log p_i (data term only)
    r: np.ndarray                 # (K, n) posterior responsibilities at theta (transposed layout)
    Q: Optional[float] = None     # surrogate value given the fixed responsibilities
    gL: Optional[np.ndarray] = None
    gQ: Optional[np.ndarray] = None
    mix: Optional[np.ndarray] = None  # (K,) mean gate weight


def entropy_const(r: np.ndarray) -> float:
    """(1/n) sum r log r with 0 log 0 = 0, for r in the (K, n) layout."""
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(r > 0, r * np.log(np.where(r > 0, r, 1.0)), 0.0)
    return float(v.sum() / r.shape[1])


class Problem:
    """Data + fused objective evaluation. ``delta`` (n, d) and ``prompt`` (n, p) are wrapped without copying
    when they are C-contiguous float32/float64 (the arithmetic on them runs in their dtype)."""

    def __init__(self, delta: np.ndarray, prompt: Optional[np.ndarray], n_components: int, gate_kind: str,
                 alpha: float, l2: float, hidden: Optional[int] = None, chunk_bytes: int = 1 << 30):
        delta = np.ascontiguousarray(delta) if delta.dtype in (np.float32, np.float64) else np.ascontiguousarray(delta, dtype=np.float64)
        self.D = delta
        self.np_dtype = delta.dtype
        self.dtype = torch.float32 if delta.dtype == np.float32 else torch.float64
        self.n, self.d = delta.shape
        self.kind = gate_kind
        self.X = None
        p = 0
        if gate_kind != "static":
            x = np.ascontiguousarray(prompt, dtype=delta.dtype)
            self.X, p = x, x.shape[1]
        self.p = p
        self.K, self.alpha, self.l2 = int(n_components), float(alpha), float(l2)
        self.packer = Packer(self.K, self.d, gate_kind, p, hidden)
        # chunks are views of the data; only (K, rows) temporaries are allocated per chunk. Few large matmuls beat
        # many cache-sized ones here (N=23.5k, d=p=3072, K=10: 64 MB chunks 10.4x one matmul, 1 GB chunks 6.5x)
        row_bytes = (self.d + p) * delta.itemsize
        self.chunk = int(max(256, min(self.n, chunk_bytes // max(row_bytes, 1))))
        self.n_evals = 0  # number of passes over the data so far (for benchmarks)

    def evaluate(self, theta: np.ndarray, r_fixed: Optional[np.ndarray] = None, rlogr: float = 0.0,
                 grads: Tuple[str, ...] = ("L",)) -> Evaluation:
        """L, posterior r, optionally Q(theta | r_fixed) and the gradients named in ``grads`` ("L", "Q").
        Responsibilities (``r_fixed`` and the returned ``r``) are in the transposed (K, n) layout."""
        n, K, a = self.n, self.K, self.alpha
        self.n_evals += 1
        W, gp = self.packer.unpack(theta)
        acc = {g: (np.zeros((K, self.d), dtype=self.np_dtype), G._zero_grads(self.kind, gp, self.np_dtype)) for g in grads}
        r_out = np.empty((K, n))
        nll = ent = qdat = 0.0
        mix = np.zeros(K)
        for s in range(0, n, self.chunk):
            e = min(n, s + self.chunk)
            Dc = self.D[s:e]
            Xc = self.X[s:e] if self.X is not None else None
            z = G._mmT(Dc, W)                                   # (K, B)
            lg, cache = G._fwd(self.kind, gp, Xc, e - s)        # (K, B)
            logf = lg - lg.max(axis=0)
            logf -= np.log(np.exp(logf).sum(axis=0))
            logsig = np.minimum(z, 0.0) - np.log1p(np.exp(-np.abs(z)))
            joint = logf + logsig
            jm = joint.max(axis=0)
            r = np.exp(joint - jm)
            rs = r.sum(axis=0)
            r /= rs
            r_out[:, s:e] = r
            f = np.exp(logf)
            ent_row = (f * logf).sum(axis=0)
            nll -= float(np.sum(jm + np.log(rs)))
            ent += float(ent_row.sum())
            mix += f.sum(axis=1)
            if r_fixed is not None:
                qdat -= float(np.einsum("ij,ij->", r_fixed[:, s:e], joint))
            if not grads:
                continue
            sig_neg = np.exp(logsig - z)  # sigma(-z)
            ent_grad = a * f * (logf - ent_row) if a else 0.0
            for g in grads:
                rg = r if g == "L" else r_fixed[:, s:e]
                gz = rg * sig_neg
                gz *= -1.0 / n
                ga = (f - rg + ent_grad) / n
                gW, gg = acc[g]
                G._acc(gW, gz, Dc)
                G._bwd(self.kind, gp, Xc, ga, cache, gg)
        pen = 0.5 * self.l2 * float(np.dot(theta * self.packer.l2_mask, theta))
        L = nll / n + a * ent / n + pen
        ev = Evaluation(theta=theta, L=L, nll=nll / n, r=r_out, mix=mix / n)
        if r_fixed is not None:
            ev.Q = qdat / n + rlogr + a * ent / n + pen
        for g in grads:
            gW, gg = acc[g]
            vec = self.packer.pack(gW, gg)
            vec += self.l2 * self.packer.l2_mask * theta
            setattr(ev, "g" + g, vec)
        return ev


def objective_and_grad(delta: np.ndarray, prompt: Optional[np.ndarray], coef: np.ndarray,
                       gate_params: Dict[str, np.ndarray], alpha: float, l2: float) -> Tuple[float, np.ndarray, Dict[str, np.ndarray]]:
    """The penalised objective L and its gradient (d/dcoef (K, d), d/dgate dict), evaluated by the fused pass."""
    kind = G.gate_kind(gate_params)
    hidden = gate_params["hidden_coef"].shape[0] if kind == "mlp" else None
    prob = Problem(np.asarray(delta), prompt, coef.shape[0], kind, alpha, l2, hidden)
    ev = prob.evaluate(prob.packer.pack(coef, gate_params), grads=("L",))
    gW, gg = prob.packer.unpack(ev.gL)
    return ev.L, gW.copy(), {k: v.copy() for k, v in gg.items()}


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
        self.S.append(s); self.Y.append(y); self.rho.append(1.0 / sy)
        if len(self.S) > self.m:
            self.S.pop(0); self.Y.pop(0); self.rho.pop(0)
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


def line_search(prob: Problem, ev: Evaluation, g: np.ndarray, d: np.ndarray, r_fixed: np.ndarray, rlogr: float,
                grads: Tuple[str, ...], accept: str = "Q", c1: float = 1e-4, max_ls: int = 30) -> Optional[Evaluation]:
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
        if DEBUG:
            print(f"    reject step {step:.3g}: Q {new.Q - f0:.3e} L {new.L - f0:.3e} armijo {c1 * step * gd:.3e}")
        # safeguarded quadratic interpolation
        denom = 2.0 * (val - f0 - gd * step) if np.isfinite(val) else np.inf
        nxt = -gd * step * step / denom if denom > 0 else 0.1 * step
        step = float(np.clip(nxt, 0.1 * step, 0.5 * step))
    return None


@dataclass
class EMResult:
    theta: np.ndarray
    objective: float
    history: List[float]
    converged: bool
    n_iter: int
    final: Evaluation
    times: List[float] = field(default_factory=list)


def _check_finite(objective: float, it: int) -> None:
    """A non-finite objective is an error, never "converged" (NaN/inf hyperparameters or features)."""
    if not np.isfinite(objective):
        raise ValueError(f"the objective became {objective} at EM iteration {it} (non-finite features or "
                         "hyperparameters?)")


def run_em(prob: Problem, theta0: np.ndarray, r0: Optional[np.ndarray] = None, *, max_iter: int = 200,
           tol: float = 1e-6, m_steps: int = 1, init_m_steps: int = 50, memory: int = 10, accept: str = "L",
           on_iter: Optional[Callable[[int, float], None]] = None, verbose: int = 0,
           on_eval: Optional[Callable[[int, "Evaluation"], None]] = None) -> EMResult:
    """Generalised EM from theta0; the first M-step uses responsibilities r0 (n, K) (default: E-step at theta0)
    and runs up to ``init_m_steps`` L-BFGS steps on Q(.|r0); later M-steps run ``m_steps`` steps.
    ``accept`` is the line-search criterion of the EM iterations ("L" or "Q", see :func:`line_search`;
    inner steps of an M-step with m_steps > 1 always use "Q"). ``on_eval(it, ev)``, if given, sees every
    accepted iterate (used by benchmarks)."""
    t_start = time.perf_counter()
    theta = np.array(theta0, dtype=np.float64)
    if r0 is None:
        r0 = prob.evaluate(theta, grads=()).r
    else:
        r0 = np.ascontiguousarray(np.asarray(r0, dtype=np.float64).T)  # public (n, K) -> internal (K, n)
    # --- first M-step on Q(. | r0)
    rl0 = entropy_const(r0)
    ev = prob.evaluate(theta, r0, rl0, grads=("Q",))
    ev_q = Evaluation(theta=ev.theta, L=ev.L, nll=ev.nll, r=ev.r, Q=ev.Q, gL=ev.gQ)
    ev_q.Q = ev.Q
    opt = LBFGS(memory)
    for _ in range(int(init_m_steps)):
        d = opt.direction(ev_q.gL)
        new = line_search(prob, ev_q, ev_q.gL, d, r0, rl0, ("Q",), "Q")
        if new is None:
            break
        opt.update(new.theta - ev_q.theta, new.gQ - ev_q.gL)
        rel = abs(ev_q.Q - new.Q) / max(abs(new.Q), 1e-12)
        ev_q = Evaluation(theta=new.theta, L=new.L, nll=new.nll, r=new.r, Q=new.Q, gL=new.gQ)
        if rel < tol * 1e-2:
            break
    ev = prob.evaluate(ev_q.theta, grads=("L",))
    _check_finite(ev.L, 0)
    history, times = [ev.L], [time.perf_counter() - t_start]
    if verbose:
        print(f"  init  objective {ev.L:.8f}  ({times[-1]:.2f}s)")
    if on_eval is not None:
        on_eval(0, ev)
    # --- EM iterations
    opt = LBFGS(memory)
    converged, it = False, 0
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
            g_next = cand.gL if m_steps == 1 else cand.gQ   # gradient of Q(.|r_t) at the new point
            opt.update(cand.theta - cur.theta, g_next - g)
            cur, g, new = cand, g_next, cand
        if new is None:
            converged = True  # no descent possible at numerical precision
            history.append(ev.L); times.append(time.perf_counter() - t0)
            break
        prev = ev.L
        ev = new
        _check_finite(ev.L, it)
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
        if abs(rel) < tol or float(np.max(np.abs(ev.gL))) < 1e-12:
            converged = True
            break
    return EMResult(theta=ev.theta, objective=ev.L, history=history, converged=converged, n_iter=it,
                    final=ev, times=times)


def newton_polish_single(prob: Problem, theta: np.ndarray, iters: int = 5, max_dim: int = 1024) -> np.ndarray:
    """K = 1 only: a few damped Newton steps on the (convex) single-head objective; no-op for large d."""
    if prob.K != 1 or prob.d > max_dim:
        return theta
    ev = prob.evaluate(theta, grads=("L",))
    Dn = np.asarray(prob.D, dtype=np.float64)
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
