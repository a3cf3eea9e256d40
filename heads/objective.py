"""The mixture-of-Bradley-Terry objective and its gradient in one fused pass over the data.

Objective (minimised), n pairs, K heads, Delta_i = phi(x_i, a_w) - phi(x_i, a_l), z_ik = w_k . Delta_i,
f_ik = softmax_k(gate logits of psi(x_i))::

    L(theta) = -(1/n) sum_i log sum_k f_ik sigma(z_ik)
               + alpha (1/n) sum_i sum_k f_ik log f_ik
               + (l2/2) ||W||^2 + (gate_l2/2) ||gate weight matrices||^2

One evaluation streams Delta and the prompt features once, in row chunks: forward (z, gate logits), the E-step at
the point (responsibilities r_ik = f_ik sigma(z_ik) / sum_k f_ik sigma(z_ik), log space), the values of L and of
the EM surrogate Q(theta | r_fixed), and the gradients of L and/or Q. Features stay in their stored dtype
(float16 rows are converted chunk by chunk to float32) and a row subset is an index array, never a copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
from scipy.special import log_expit, logsumexp

from . import gate as G
from . import kernels
from .chunked import CHUNK_BYTES, chunk_rows, compute_dtype, in_place, take


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

    def penalty_weights(self, l2: float, gate_l2: float) -> np.ndarray:
        """(size,) L2 weight of every parameter: ``l2`` on W, ``gate_l2`` on the gate's weight matrices, 0 else."""
        out = np.zeros(self.size)
        for key, _ in self.entries:
            if key == "W" or key in G.PENALISED:
                out[self.slices[key][0]] = l2 if key == "W" else gate_l2
        return out

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
    L: float  # full penalised objective
    nll: float  # -(1/n) sum log p_i (data term only)
    r: np.ndarray  # (K, n) posterior responsibilities at theta (transposed layout)
    Q: Optional[float] = None  # surrogate value given the fixed responsibilities
    gL: Optional[np.ndarray] = None
    gQ: Optional[np.ndarray] = None


def entropy_const(r: np.ndarray) -> float:
    """(1/n) sum r log r with 0 log 0 = 0, for r in the (K, n) layout."""
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(r > 0, r * np.log(np.where(r > 0, r, 1.0)), 0.0)
    return float(v.sum() / r.shape[1])


class Problem:
    """Data + fused objective evaluation.

    ``delta`` (N, d) and ``prompt`` (N, p) are used without copying; ``rows`` (n,) optionally selects the pairs of
    this problem (e.g. the fit or the validation part of a train split). Contiguous float32/float64 data is read in
    large views; float16 data or a row subset is gathered and converted in chunks of ``chunk_bytes``. ``gate_l2``
    (default ``l2``) is the L2 weight of the gate's weight matrices. ``scale`` = (a_D, a_X) multiplies Delta and the
    prompt features on the fly (the fit then runs in units where both have mean squared entries 1)."""

    def __init__(
        self,
        delta: np.ndarray,
        prompt: Optional[np.ndarray],
        n_components: int,
        gate_kind: str,
        alpha: float,
        l2: float,
        hidden: Optional[int] = None,
        *,
        gate_l2: Optional[float] = None,
        rows: Optional[np.ndarray] = None,
        chunk_bytes: Optional[int] = None,
        scale: tuple = (1.0, 1.0),
    ):
        self.D = delta if delta.dtype in (np.float16, np.float32, np.float64) else delta.astype(np.float64)
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.np_dtype = compute_dtype(self.D)
        self.n = self.D.shape[0] if self.rows is None else len(self.rows)
        self.d = self.D.shape[1]
        self.kind = gate_kind
        self.X, p = None, 0
        if gate_kind != "static":
            self.X, p = prompt, prompt.shape[1]
        self.p = p
        self.K, self.alpha = int(n_components), float(alpha)
        self.packer = Packer(self.K, self.d, gate_kind, p, hidden)
        self.set_l2(l2, gate_l2)
        self.scale = (float(scale[0]), float(scale[1]))
        # few large matmuls beat many cache-sized ones on in-place data (N=23.5k, d=p=3072, K=10: 64 MB chunks
        # 10.4x one matmul, 1 GB chunks 6.5x); gathered / converted chunks cost memory, so they stay smaller
        views = (
            in_place(self.D, self.rows) and (self.X is None or in_place(self.X, self.rows)) and self.scale == (1.0, 1.0)
        )
        budget = chunk_bytes or ((1 << 30) if views else CHUNK_BYTES)
        self.chunk = chunk_rows(self.n, (self.d + p) * np.dtype(self.np_dtype).itemsize, budget)
        self.n_evals = 0  # number of passes over the data so far (for benchmarks)

    def set_l2(self, l2: float, gate_l2: Optional[float] = None) -> None:
        """Change the L2 weights (e.g. along a regularisation path)."""
        self.l2 = float(l2)
        self.gate_l2 = float(l2 if gate_l2 is None else gate_l2)
        self.l2_weights = self.packer.penalty_weights(self.l2, self.gate_l2)

    @staticmethod
    def _scaled(A: np.ndarray, a: float, source: np.ndarray) -> np.ndarray:
        """A * a; in place when A is a converted / gathered copy (not a view of the caller's ``source``)."""
        if a == 1.0:
            return A
        if np.shares_memory(A, source):
            return A * A.dtype.type(a)
        A *= A.dtype.type(a)
        return A

    def block(self, start: int, stop: int, rows: Optional[np.ndarray] = None):
        """(Delta, prompt or None) of rows ``start:stop`` (or of the global ``rows``) in the compute dtype, scaled."""
        D = (
            take(self.D, rows, 0, len(rows), self.np_dtype)
            if rows is not None
            else take(self.D, self.rows, start, stop, self.np_dtype)
        )
        X = None
        if self.X is not None:
            X = (
                take(self.X, rows, 0, len(rows), self.np_dtype)
                if rows is not None
                else take(self.X, self.rows, start, stop, self.np_dtype)
            )
        return self._scaled(D, self.scale[0], self.D), (None if X is None else self._scaled(X, self.scale[1], self.X))

    def chunks(self):
        """(start, stop, Delta rows, prompt rows or None) in the compute dtype."""
        for s in range(0, self.n, self.chunk):
            e = min(self.n, s + self.chunk)
            yield (s, e, *self.block(s, e))

    def batch(self, idx: np.ndarray):
        """(Delta, prompt or None) of the problem's rows ``idx`` (local indices) as compute-dtype torch tensors."""
        import torch

        D, X = self.block(0, 0, idx if self.rows is None else self.rows[idx])
        return torch.from_numpy(np.ascontiguousarray(D)), (None if X is None else torch.from_numpy(X))

    def dense(self) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """(Delta, prompt) of this problem's rows as compute-dtype arrays (copies unless in place), scaled."""
        return self.block(0, self.n)

    def log_odds(self, theta: np.ndarray) -> np.ndarray:
        """(n,) log P(a_w > a_l) - log P(a_l > a_w) of the mixture at theta."""
        W, gp = self.packer.unpack(theta)
        out = np.empty(self.n)
        for s, e, Dc, Xc in self.chunks():
            z = kernels.mm_t(Dc, W)
            lg = kernels.gate_forward(self.kind, gp, Xc, e - s)[0]
            logf = lg - logsumexp(lg, axis=0)
            out[s:e] = logsumexp(logf + log_expit(z), axis=0) - logsumexp(logf + log_expit(-z), axis=0)
        return out

    def heldout_score(self, theta: np.ndarray) -> float:
        """Mean log-likelihood of these (held-out) pairs after the temperature that suits them best
        (:func:`heads.selection.calibrated_loglik`): what early stopping and the selection compare."""
        from .selection import calibrated_loglik

        return calibrated_loglik(self.log_odds(theta))[0]

    def evaluate(
        self,
        theta: np.ndarray,
        r_fixed: Optional[np.ndarray] = None,
        rlogr: float = 0.0,
        grads: Tuple[str, ...] = ("L",),
    ) -> Evaluation:
        """L, posterior r, optionally Q(theta | r_fixed) and the gradients named in ``grads`` ("L", "Q").
        Responsibilities (``r_fixed`` and the returned ``r``) are in the transposed (K, n) layout."""
        n, K, a = self.n, self.K, self.alpha
        self.n_evals += 1
        W, gp = self.packer.unpack(theta)
        acc = {
            g: (np.zeros((K, self.d), dtype=self.np_dtype), kernels.zero_grads(self.kind, gp, self.np_dtype))
            for g in grads
        }
        r_out = np.empty((K, n))
        nll = ent = qdat = 0.0
        for s, e, Dc, Xc in self.chunks():
            z = kernels.mm_t(Dc, W)  # (K, B)
            lg, cache = kernels.gate_forward(self.kind, gp, Xc, e - s)  # (K, B)
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
                kernels.accumulate(gW, gz, Dc)
                kernels.gate_backward(self.kind, gp, Xc, ga, cache, gg)
        pen = 0.5 * float(np.dot(theta * self.l2_weights, theta))
        L = nll / n + a * ent / n + pen
        ev = Evaluation(theta=theta, L=L, nll=nll / n, r=r_out)
        if r_fixed is not None:
            ev.Q = qdat / n + rlogr + a * ent / n + pen
        for g in grads:
            gW, gg = acc[g]
            vec = self.packer.pack(gW, gg)
            vec += self.l2_weights * theta
            setattr(ev, "g" + g, vec)
        return ev


def objective_and_grad(
    delta: np.ndarray,
    prompt: Optional[np.ndarray],
    coef: np.ndarray,
    gate_params: Dict[str, np.ndarray],
    alpha: float,
    l2: float,
    gate_l2: Optional[float] = None,
) -> Tuple[float, np.ndarray, Dict[str, np.ndarray]]:
    """The penalised objective L and its gradient (d/dcoef (K, d), d/dgate dict), evaluated by the fused pass."""
    kind = G.gate_kind(gate_params)
    hidden = gate_params["hidden_coef"].shape[0] if kind == "mlp" else None
    prob = Problem(np.asarray(delta), prompt, coef.shape[0], kind, alpha, l2, hidden, gate_l2=gate_l2)
    ev = prob.evaluate(prob.packer.pack(coef, gate_params), grads=("L",))
    gW, gg = prob.packer.unpack(ev.gL)
    return ev.L, gW.copy(), {k: v.copy() for k, v in gg.items()}
