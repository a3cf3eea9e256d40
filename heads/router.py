"""Stage 2 of MiCRo: context-aware routing (Shen et al. 2025, Sec. 4.2, Algorithm 1).

The K Bradley-Terry heads of Stage 1 are frozen, so every pair's per-head logits ``z_ik = w_k . Delta_i``
are computed once and passed in as ``head_logits`` (N, K). The router is the Stage-1 gate (same parameter
dict, see :mod:`heads.gate`), re-trained on a small labelled budget of pairs that carry the context
(user instruction / attribute) in their feature ``c_i``.

Each epoch:

1. soft labels with the current router, held fixed for the whole epoch (log space, stable for tiny tau)::

       omega_ik  ∝  f_k(x_i, c_i) * exp(-L_ik / tau),      L_ik = -log sigma(z_ik) = softplus(-z_ik)

2. minimise the cross-entropy ``-sum_k omega_ik log f_k(x_i, c_i)`` (+ ``l2`` * ||gate weight matrices||^2)
   over shuffled minibatches with Adam.

With the paper's ``tau = 1e-3`` the labels are essentially one-hot on the head with the smallest loss on
the pair (the gate only breaks near-ties), so the router learns, per context, how often each head explains
that context's preferences best.

Default learning rate: ``lr = 3e-2`` (Adam). The router starts from an already-trained gate and sees few
pairs (B per context, 10 epochs of batch 32: e.g. 150 pairs -> 50 steps), so it must move gate logits by a
few units in tens of steps. Sweep on synthetic 3-context routing (the generator of tests/test_router.py,
feature noise 0.3, uniform init gate, B = 50, 10 epochs; mean over 3 seeds of: the smallest per-context mean
weight on the right head / held-out routed accuracy minus the best single head's, averaged over contexts):

    features                      gate     1e-2          2e-2          3e-2          5e-2
    one-hot + noise (p = 3)       linear   0.53 / -0.22  0.67 / -0.07  0.75 / -0.05  0.81 / -0.03
    unit-norm "embedding" p=32    linear   0.67 / -0.01  0.82 / -0.00  0.86 / -0.00  0.88 / -0.00
    unit-norm p=384               linear   0.91 / -0.00  0.90 / -0.00  0.91 / -0.00  0.93 / -0.00
    p=384 + shared component      linear   0.81 / -0.01  0.90 / -0.00  0.92 / -0.00  0.92 / -0.00
    unit-norm p=32                mlp(32)  0.88 / -0.00  0.90 / -0.01  0.90 / -0.02  0.88 / -0.03
    unit-norm p=384               mlp(32)  0.92 / -0.00  0.94 / -0.00  0.95 / -0.00  0.98 / -0.00

(1e-3 / 3e-3 barely move off the Stage-1 gate in 50 steps.) 3e-2 is right for the default linear gate on
sentence-embedding-like features; an MLP gate on low-dimensional features starts to overfit the per-pair
hard labels above ~2e-2 (pass ``lr=1e-2`` there); very low-dimensional features want more epochs or lr.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from scipy.special import expit, log_expit, logsumexp
from sklearn.base import BaseEstimator
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from heads.defaults import ROUTER_BATCH, ROUTER_EPOCHS, ROUTER_LR, TAU
from heads.gate import (
    GATE_KINDS,
    PENALISED,
    gate_log_weights,
    gate_logits_torch,
    n_gate_components,
    params_from_torch,
    params_to_torch,
)
from heads.gate import gate_kind as _infer_gate_kind

__all__ = ["Router", "router_soft_labels", "per_head_losses", "draw_budget"]


# ---------------------------------------------------------------------------------------------
# math helpers


def per_head_losses(head_logits: np.ndarray) -> np.ndarray:
    """L_ik = -log sigma(z_ik) = softplus(-z_ik), computed stably (N, K)."""
    return -log_expit(np.asarray(head_logits, dtype=np.float64))


def router_soft_labels(log_gate_weights: np.ndarray, head_logits: np.ndarray, tau: float) -> np.ndarray:
    """omega_i ∝ f(x_i, c_i) * exp(-L_ik / tau), normalised per row; computed in log space (N, K).

    ``log_gate_weights`` is log f (N, K). Stable for tiny ``tau`` and huge losses (no NaN / inf)."""
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    log_w = np.asarray(log_gate_weights, dtype=np.float64) - per_head_losses(head_logits) / float(tau)
    return np.exp(log_w - logsumexp(log_w, axis=1, keepdims=True))


# ---------------------------------------------------------------------------------------------
# validation


def _check_logits(head_logits, name: str = "head_logits") -> np.ndarray:
    z = np.asarray(head_logits, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, K), got shape {z.shape}")
    if z.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 pairs)")
    if z.shape[1] == 0:
        raise ValueError(f"{name} has 0 heads (K = 0)")
    if not np.all(np.isfinite(z)):
        raise ValueError(f"{name} contains NaN or inf ({int((~np.isfinite(z)).sum())} entries)")
    return z


def _check_features(X, n: int, kind: str, params: Dict[str, np.ndarray]) -> Optional[np.ndarray]:
    if X is None:
        if kind != "static":
            raise ValueError(f"context_features is None but the gate kind {kind!r} needs (N, p) features")
        return None
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"context_features must be 2-D (N, p), got shape {X.shape}")
    if X.shape[0] != n:
        raise ValueError(f"context_features has {X.shape[0]} rows but head_logits has {n}")
    if not np.issubdtype(X.dtype, np.floating):
        X = X.astype(np.float64)
    if not np.all(np.isfinite(X)):
        raise ValueError(f"context_features contains NaN or inf ({int((~np.isfinite(X)).sum())} entries)")
    if kind != "static":
        p = params["hidden_coef" if kind == "mlp" else "coef"].shape[1]
        if X.shape[1] != p:
            raise ValueError(f"context_features has {X.shape[1]} columns but the gate expects p = {p}")
    return X


def _check_params(params: Dict[str, np.ndarray], kind: Optional[str]) -> Tuple[Dict[str, np.ndarray], str]:
    if not isinstance(params, dict) or not params:
        raise ValueError("init_gate_params must be a non-empty dict of numpy arrays")
    inferred = _infer_gate_kind(params)
    if kind is None:
        kind = inferred
    if kind not in GATE_KINDS:
        raise ValueError(f"unknown gate kind {kind!r}; expected one of {GATE_KINDS}")
    if kind != inferred:
        raise ValueError(f"gate_kind {kind!r} does not match init_gate_params (keys look like {inferred!r})")
    out = {k: np.array(v, dtype=np.float64, copy=True) for k, v in params.items()}
    for k, v in out.items():
        if not np.all(np.isfinite(v)):
            raise ValueError(f"init_gate_params[{k!r}] contains NaN or inf")
    return out, kind


# ---------------------------------------------------------------------------------------------
# router


class Router(BaseEstimator):
    """MiCRo Stage-2 router: fine-tunes a copy of the Stage-1 gate on routing soft labels (a scikit-learn estimator).

    Parameters
    ----------
    tau : temperature of the soft labels (default :data:`heads.defaults.TAU` = 1: the heads' posterior; the
        paper's 1e-3 makes them nearly hard "best head for this pair").
    epochs : passes over the routing data; the soft labels are recomputed at the start of each.
    batch_size : minibatch size (paper: 32).
    lr : Adam learning rate (default 3e-2, see the module docstring).
    l2 : L2 penalty on the gate's weight matrices (``coef``, ``hidden_coef``), added to the mean batch CE.
    random_state : seed of the minibatch shuffling (the only randomness; float64 CPU torch is deterministic).
    num_threads : torch intra-op threads while fitting (restored afterwards); default 1 because minibatches of
        32 gain nothing from more threads and lose a lot to thread sync on a busy machine (10-20x measured on
        2 loaded cores). None leaves torch's setting alone.

    Fitted attributes: ``gate_params_`` (same dict format as the init gate), ``gate_kind_``, ``n_components_``,
    ``loss_history_`` (mean minibatch CE per epoch, with that epoch's fixed labels).
    """

    _parameter_constraints: dict = {
        "tau": [Interval(Real, 0, None, closed="neither")],
        "epochs": [Interval(Integral, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "l2": [Interval(Real, 0, None, closed="left")],
        "random_state": ["random_state"],
        "num_threads": [Interval(Integral, 1, None, closed="left"), None],
    }

    def __init__(
        self,
        tau: float = TAU,
        epochs: int = ROUTER_EPOCHS,
        batch_size: int = ROUTER_BATCH,
        lr: float = ROUTER_LR,
        l2: float = 0.0,
        random_state: Optional[int] = 0,
        num_threads: Optional[int] = 1,
    ):
        self.tau = tau
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.l2 = l2
        self.random_state = random_state
        self.num_threads = num_threads

    # -- fit ------------------------------------------------------------------------------------

    def fit(
        self,
        head_logits: np.ndarray,
        context_features: Optional[np.ndarray],
        init_gate_params: Dict[str, np.ndarray],
        gate_kind: Optional[str] = None,
    ) -> "Router":
        """Route: start from a copy of ``init_gate_params`` and train it on the routing soft labels.

        head_logits (N, K): frozen heads' logits z on the routing pairs (Delta = winner - loser).
        context_features (N, p): context + prompt features (None only for a static gate).
        gate_kind: "linear" | "mlp" | "static"; inferred from the dict when None (must agree if given).
        """
        self._validate_params()
        z = _check_logits(head_logits)
        params, kind = _check_params(init_gate_params, gate_kind)
        K = n_gate_components(params)
        if z.shape[1] != K:
            raise ValueError(f"head_logits has K = {z.shape[1]} heads but the gate has {K} components")
        X = _check_features(context_features, z.shape[0], kind, params)
        n = z.shape[0]

        self.gate_kind_ = kind
        self.n_components_ = K
        self.loss_history_: List[float] = []
        if self.epochs == 0:
            self.gate_params_ = params
            return self

        prev_threads = torch.get_num_threads()
        if self.num_threads is not None:
            torch.set_num_threads(int(self.num_threads))
        try:
            self._train(z, X, params, n)
        finally:
            if self.num_threads is not None:
                torch.set_num_threads(prev_threads)
        return self

    def _train(self, z: np.ndarray, X: Optional[np.ndarray], params: Dict[str, np.ndarray], n: int) -> None:
        rng = np.random.default_rng(self.random_state)
        Xt = None if X is None else torch.from_numpy(np.ascontiguousarray(X))
        tp = params_to_torch(params, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam(list(tp.values()), lr=float(self.lr))
        pen_keys = [k for k in PENALISED if k in tp]
        bs = int(self.batch_size)

        for _ in range(int(self.epochs)):
            # 1. soft labels with the current router, fixed for the epoch
            log_f = gate_log_weights(params_from_torch(tp), X, n_rows=n)
            omega = torch.from_numpy(router_soft_labels(log_f, z, self.tau))
            # 2. cross-entropy on shuffled minibatches
            perm = rng.permutation(n)
            tot = 0.0
            for s in range(0, n, bs):
                idx = torch.from_numpy(perm[s : s + bs])
                xb = None if Xt is None else Xt[idx]
                logits = gate_logits_torch(tp, xb, n_rows=len(idx))
                ce = -(omega[idx] * torch.log_softmax(logits, dim=1)).sum(1).mean()
                obj = ce
                if self.l2 > 0 and pen_keys:
                    obj = obj + float(self.l2) * sum((tp[k] ** 2).sum() for k in pen_keys)
                opt.zero_grad(set_to_none=True)
                obj.backward()
                opt.step()
                tot += float(ce.detach()) * len(idx)
            self.loss_history_.append(tot / n)

        self.gate_params_ = params_from_torch(tp)

    # -- predict --------------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        check_is_fitted(self, "gate_params_")

    def gate_log_weights(self, context_features: Optional[np.ndarray], n_rows: Optional[int] = None) -> np.ndarray:
        """log f(x, c) of the fitted router (N, K)."""
        self._check_fitted()
        if context_features is None:
            if self.gate_kind_ != "static":
                raise ValueError(f"context_features is None but the gate kind {self.gate_kind_!r} needs features")
            return gate_log_weights(self.gate_params_, None, n_rows=n_rows)
        X = np.asarray(context_features)
        if X.ndim != 2 or X.shape[0] == 0:
            raise ValueError(f"context_features must be a non-empty 2-D (N, p) array, got shape {X.shape}")
        X = _check_features(X, X.shape[0], self.gate_kind_, self.gate_params_)
        return gate_log_weights(self.gate_params_, X)

    def gate_weights(self, context_features: Optional[np.ndarray], n_rows: Optional[int] = None) -> np.ndarray:
        """Router mixture weights f(x, c) (N, K), rows in the simplex."""
        return np.exp(self.gate_log_weights(context_features, n_rows=n_rows))

    def predict_proba(self, head_logits: np.ndarray, context_features: Optional[np.ndarray]) -> np.ndarray:
        """P(winner preferred) = sum_k f_k(x, c) sigma(z_k), (N,)."""
        self._check_fitted()
        z = _check_logits(head_logits)
        if z.shape[1] != self.n_components_:
            raise ValueError(f"head_logits has K = {z.shape[1]} heads but the router has {self.n_components_}")
        if context_features is not None and np.asarray(context_features).shape[0] != z.shape[0]:
            raise ValueError(
                f"context_features has {np.asarray(context_features).shape[0]} rows but head_logits has {z.shape[0]}"
            )
        f = self.gate_weights(context_features, n_rows=z.shape[0])
        return (f * expit(z)).sum(axis=1)


# ---------------------------------------------------------------------------------------------
# routing budget


def draw_budget(
    groups: np.ndarray, budget_per_group: int, rng: Union[np.random.Generator, int, None] = None
) -> Tuple[np.ndarray, Dict[object, int]]:
    """Sample ``budget_per_group`` pairs (without replacement) from every group.

    Returns ``(idx, short)``: ``idx`` the sorted row indices drawn (all of a group's rows when it has fewer
    than the budget), ``short`` = {group: number of rows it had} for the groups below the budget, so the
    caller can report them. Groups are visited in sorted order, so the draw is deterministic given ``rng``
    (a Generator, an int seed, or None = seed 0)."""
    g = np.asarray(groups)
    if g.ndim != 1:
        raise ValueError(f"groups must be 1-D, got shape {g.shape}")
    if g.shape[0] == 0:
        raise ValueError("groups is empty (0 pairs)")
    if int(budget_per_group) != budget_per_group or budget_per_group < 1:
        raise ValueError(f"budget_per_group must be an integer >= 1, got {budget_per_group}")
    if g.dtype.kind == "f" and np.isnan(g).any():
        raise ValueError("groups contains NaN")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(0 if rng is None else rng)
    B = int(budget_per_group)
    uniq, inv = np.unique(g, return_inverse=True)
    out, short = [], {}
    for j, u in enumerate(uniq):
        rows = np.flatnonzero(inv == j)
        if rows.size <= B:
            if rows.size < B:
                short[u.item() if hasattr(u, "item") else u] = int(rows.size)
            out.append(rows)
        else:
            out.append(rng.choice(rows, size=B, replace=False))
    return np.sort(np.concatenate(out)), short
