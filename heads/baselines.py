"""Baselines with the MixtureBT API.

* Single Reward BT: ``MixtureBT(n_components=1)``.
* Static Mixture: ``MixtureBT(gate="static")`` (one global pi).
* :class:`SharedBase` (HyRe architecture): K heads r_k = (w_k + u_k) . phi, u_k a frozen random prior,
  trained with the uniform sum of per-head BT losses, predicted with uniform weights.
* :class:`OracleBT`: one BT head per known group (upper bound when the group labels are known).
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_expit
from sklearn.base import BaseEstimator
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from .defaults import FIXED_L2, N_COMPONENTS
from .em import newton_polish_single, run_em, thread_limit
from .objective import Problem
from .validation import as_matrix, check_rows, check_width


def fit_single_bt(delta: np.ndarray, l2: float, max_iter: int = 500, tol: float = 1e-10) -> np.ndarray:
    """One bias-free BT head: argmin -(1/n) sum log sigma(w . Delta) + (l2/2)|w|^2 (L-BFGS + Newton polish)."""
    prob = Problem(delta, None, 1, "static", 0.0, l2)
    res = run_em(prob, np.zeros(prob.packer.size), max_iter=max_iter, tol=tol)
    theta = newton_polish_single(prob, res.theta)
    return prob.packer.unpack(theta)[0][0].copy()


class SharedBase(BaseEstimator):
    """K linear heads each with a frozen random prior u_k (HyRe). Objective (minimised)::

        (1/K) sum_k (1/n) sum_i -log sigma((w_k + u_k) . Delta_i) + (l2/2) ||W||^2

    u_k = prior_scale * sqrt(d) * g_k / rms|Delta|, g_k uniform on the unit sphere (so u_k . Delta has
    standard deviation ~ prior_scale for isotropic Delta). ``coef_`` are the effective heads W + U.
    """

    _parameter_constraints: dict = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "prior_scale": [Interval(Real, 0, None, closed="left")],
        "l2": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 0, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        n_components: int = N_COMPONENTS,
        prior_scale: float = 1.0,
        l2: float = FIXED_L2,
        max_iter: int = 500,
        tol: float = 1e-9,
        random_state=None,
    ):
        self.n_components, self.prior_scale, self.l2 = n_components, prior_scale, l2
        self.max_iter, self.tol, self.random_state = max_iter, tol, random_state

    def fit(self, delta, prompt=None) -> "SharedBase":
        self._validate_params()
        D = as_matrix(delta, "delta")
        if prompt is not None:
            check_rows(D, as_matrix(prompt, "prompt"), "delta", "prompt")
        n, d = D.shape
        K = int(self.n_components)
        if K < 1 or K > n:
            raise ValueError(f"n_components={K} must be between 1 and the number of pairs ({n})")
        rng = np.random.default_rng(self.random_state)
        rms = float(np.sqrt(np.mean(np.einsum("ij,ij->i", D, D, dtype=np.float64))))
        g = rng.standard_normal((K, d))
        g /= np.linalg.norm(g, axis=1, keepdims=True)
        U = self.prior_scale * np.sqrt(d) * g / max(rms, 1e-12)
        z0 = (D @ U.T.astype(D.dtype)).astype(np.float64)  # prior logits, fixed
        l2 = self.l2

        def fun(w):
            W = w.reshape(K, d)
            z = (D @ W.T.astype(D.dtype)).astype(np.float64) + z0
            loss = -np.mean(log_expit(z)) + 0.5 * l2 * float(w @ w)
            gz = -(1.0 / (1.0 + np.exp(z))) / (n * K)
            grad = (gz.T.astype(D.dtype) @ D).astype(np.float64).ravel() + l2 * w
            return loss, grad

        with thread_limit(D.size):
            res = minimize(
                fun,
                np.zeros(K * d),
                jac=True,
                method="L-BFGS-B",
                options={"maxiter": self.max_iter, "ftol": self.tol, "gtol": 1e-10},
            )
        self.trainable_coef_ = res.x.reshape(K, d)
        self.prior_ = U
        self.coef_ = self.trainable_coef_ + U
        self.n_features_in_ = d
        self.converged_ = bool(res.success)
        self.n_iter_ = int(res.nit)
        self.objective_ = float(res.fun)
        return self

    def _check(self, delta):
        check_is_fitted(self, "coef_")
        D = as_matrix(delta, "delta")
        check_width(D, self.n_features_in_, "delta")
        return D

    def _logsig_heads(self, delta):
        D = self._check(delta)
        return log_expit((D @ self.coef_.T.astype(D.dtype)).astype(np.float64))

    def gate_weights(self, prompt=None) -> np.ndarray:
        """Uniform weights, (n, K) (one row when prompt is None)."""
        n = 1 if prompt is None else np.asarray(prompt).shape[0]
        return np.full((n, self.n_components), 1.0 / self.n_components)

    def predict_proba(self, delta, prompt=None) -> np.ndarray:
        """(1/K) sum_k sigma((w_k + u_k) . Delta)."""
        return np.mean(np.exp(self._logsig_heads(delta)), axis=1)

    def responsibilities(self, delta, prompt=None) -> np.ndarray:
        ls = self._logsig_heads(delta)
        e = np.exp(ls - ls.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def head_rewards(self, features) -> np.ndarray:
        F_ = self._check(features)
        return (F_ @ self.coef_.T.astype(F_.dtype)).astype(np.float64)

    def score(self, delta, prompt=None) -> float:
        return float(np.mean(np.log(np.clip(self.predict_proba(delta), 1e-300, 1.0))))


class OracleBT(BaseEstimator):
    """One bias-free BT head per group, each fitted on its own group's pairs with
    -(1/n_g) sum_{i in g} log sigma(w_g . Delta_i) + (l2/2)|w_g|^2."""

    _parameter_constraints: dict = {"l2": [Interval(Real, 0, None, closed="left")]}

    def __init__(self, l2: float = FIXED_L2):
        self.l2 = l2

    def fit(self, delta, groups) -> "OracleBT":
        self._validate_params()
        D = as_matrix(delta, "delta")
        g = np.asarray(groups).reshape(-1)
        if g.shape[0] != D.shape[0]:
            raise ValueError(f"delta has {D.shape[0]} rows but groups has {g.shape[0]}")
        self.groups_ = np.unique(g)
        with thread_limit(D.size):
            self.coef_ = np.stack([fit_single_bt(np.ascontiguousarray(D[g == lab]), self.l2) for lab in self.groups_])
        self.n_features_in_ = D.shape[1]
        return self

    def _index(self, groups, n):
        g = np.asarray(groups).reshape(-1)
        if g.shape[0] != n:
            raise ValueError(f"delta has {n} rows but groups has {g.shape[0]}")
        idx = np.searchsorted(self.groups_, g)
        idx = np.minimum(idx, len(self.groups_) - 1)
        bad = self.groups_[idx] != g
        if bad.any():
            raise ValueError(f"unknown group {g[np.flatnonzero(bad)[0]]!r} (fitted groups: {list(self.groups_)[:10]})")
        return idx

    def predict_proba(self, delta, groups) -> np.ndarray:
        """sigma(w_{g_i} . Delta_i), (n,)."""
        check_is_fitted(self, "coef_")
        D = as_matrix(delta, "delta")
        check_width(D, self.n_features_in_, "delta")
        idx = self._index(groups, D.shape[0])
        z = np.einsum("ij,ij->i", D.astype(np.float64), self.coef_[idx])
        return np.exp(log_expit(z))

    def head_rewards(self, features) -> np.ndarray:
        check_is_fitted(self, "coef_")
        F_ = as_matrix(features, "features")
        check_width(F_, self.n_features_in_, "features")
        return (F_ @ self.coef_.T.astype(F_.dtype)).astype(np.float64)

    def score(self, delta, groups) -> float:
        return float(np.mean(np.log(np.clip(self.predict_proba(delta, groups), 1e-300, 1.0))))
