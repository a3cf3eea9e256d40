"""UserAdapter: serve ONE new user from their few labelled pairs, by routing or by routing's heads + a residual.

Two candidate models, both scored by K-fold cross-validation (held-out log-likelihood) on the user's own pairs:

* ``mixture``: the MiCRo router (:class:`heads.router.Router`) fine-tunes the Stage-1 gate on the pairs; decision
  rule P = sum_k f_k(x, c) sigma(w_k . Delta) (probability mixture, as Stage 1 and ``micro route``);
* ``residual``: :class:`heads.adapt.ResidualBT` over priors built from the heads (:mod:`heads.priors`:
  none / Stage-1 gate / HyRe / best head) with a per-user residual; decision rule (logit space)
  P = sigma(g * sum_k f_k(x, c) z_k + sum_k omega_k z_k + v . Delta), z_k = w_k . Delta.

``adapt="auto"`` keeps ``mixture`` unless the residual's CV log-likelihood is higher by more than ``margin``
standard errors of the per-pair difference (so a user whom the heads already fit keeps the routing result);
``"mixture"`` / ``"residual"`` force one. Either way the fitted user model is one reward
r_u(x, a) = sum_k (g f_k(x, c) + omega_k) r_k(x, a) + v . phi(x, a) (``g = 1, omega = 0, v = 0`` for mixture).
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

from .adapt import ResidualBT, kfold
from .gate import gate_weights
from .laplace import logsig
from .priors import PRIORS, fold_priors, prior_logits, prior_weights
from .router import Router

__all__ = ["ADAPT", "UserAdapter"]

ADAPT = ("auto", "mixture", "residual")
#: default priors of the residual. "gate" (the Stage-1 mixture's reward) is left out: on DSP leave-one-domain-out
#: (6 seeds) it gave 0.713 / 0.721 at B = 50 / 200 against 0.714 / 0.726 without it; its CV scores are inflated
#: when the user's pairs reuse prompts the gate was trained on (README, "New users").
PRIORS_DEFAULT = ("none", "hyre", "best")
#: residual search space (see heads.adapt): population-PCA and isotropic blocks, the prior's scale may move
GRID = {"scale": (0.0, 1.0, 4.0), "pca": (0.0, 1.0, 3.0), "iso": (0.0, 0.1, 0.3, 1.0)}


def _clip_log(p: np.ndarray) -> np.ndarray:
    return np.log(np.clip(p, 1e-300, 1.0))


class UserAdapter:
    """Adapt the Stage-1 model to one user; see the module docstring.

    Parameters: ``adapt`` (auto | mixture | residual); ``priors`` (subset of :data:`heads.priors.PRIORS`,
    default :data:`PRIORS_DEFAULT`);
    ``grid`` residual variances (default :data:`GRID`); ``n_folds``; ``combine`` ("average": pseudo-Bayesian
    model averaging of the residual candidates by their CV likelihood, or "select" the best); ``margin`` (in
    standard errors, for auto); ``router`` (Router keyword arguments, e.g. pipeline.route's tau / epochs / lr;
    None = the Router class defaults); ``random_state``.

    ``fit(delta (n, d), heads (K, d), gate_params, gate_x (n, p) | None, route_x (n, q) | None, pca (r, d) | None,
    fold_groups (n,) | None)``: ``gate_x`` the Stage-1 gate's input features of the pairs, ``route_x`` the
    router's (context + prompt); None for a static gate. Fitted: ``choice_``, ``router_``, ``residual_``
    (None when adapt="mixture"), ``cv_`` {"mixture", "residual"}: (n,) held-out log-likelihood per pair,
    ``head_weights_`` (K,) omega, ``gate_multiplier_`` g, ``gate_params_`` (the gate g multiplies: the router's
    for mixture, the Stage-1 gate's for residual), ``coef_`` (d,) v, ``rule_`` ("mixture" | "logit").
    """

    def __init__(
        self,
        adapt: str = "auto",
        priors: Sequence[str] = PRIORS_DEFAULT,
        grid: Optional[dict] = None,
        n_folds: int = 5,
        combine: str = "average",
        margin: float = 1.0,
        router: Optional[dict] = None,
        random_state: int = 0,
    ):
        self.adapt, self.priors, self.grid, self.n_folds = adapt, priors, grid, n_folds
        self.combine, self.margin, self.router, self.random_state = combine, margin, router, random_state

    def _check(self, delta, heads) -> tuple:
        if self.adapt not in ADAPT:
            raise ValueError(f"adapt must be one of {ADAPT}, got {self.adapt!r}")
        bad = [p for p in self.priors if p not in PRIORS]
        if bad or not self.priors:
            raise ValueError(f"priors must be a non-empty subset of {PRIORS}, got {list(self.priors)}")
        D = np.asarray(delta, dtype=np.float64)
        W = np.asarray(heads, dtype=np.float64)
        if D.ndim != 2 or W.ndim != 2 or D.shape[1] != W.shape[1]:
            raise ValueError(f"delta (n, d) and heads (K, d) must share d, got {D.shape} and {W.shape}")
        if D.shape[0] < 2:
            raise ValueError(f"adapting needs at least 2 labelled pairs, got {D.shape[0]}")
        return D, W

    def _router(self, z, route_x, gate_params, kind, rows, seed) -> Router:
        r = Router(**(self.router or {}), random_state=seed)
        return r.fit(z[rows], None if route_x is None else route_x[rows], gate_params, kind)

    def fit(
        self, delta, heads, gate_params: Dict[str, np.ndarray], gate_x=None, route_x=None, pca=None, fold_groups=None
    ) -> "UserAdapter":
        from .gate import gate_kind

        D, W = self._check(delta, heads)
        n = D.shape[0]
        kind = gate_kind(gate_params)
        z = D @ W.T
        f_stage1 = gate_weights(gate_params, gate_x, n_rows=n)
        folds = kfold(n, self.n_folds, self.random_state, fold_groups)
        self.cv_ = {}
        seed = int(self.random_state)
        if self.adapt != "residual":  # routing, and its CV (one router per fold)
            ll = np.zeros(n)
            for te in folds:
                tr = np.setdiff1d(np.arange(n), te)
                r = self._router(z, route_x, gate_params, kind, tr, seed)
                f = r.gate_weights(None if route_x is None else route_x[te], n_rows=len(te))
                ll[te] = _clip_log((f * np.exp(logsig(z[te]))).sum(axis=1))
            self.cv_["mixture"] = ll
            self.router_ = self._router(z, route_x, gate_params, kind, np.arange(n), seed)
        self.residual_ = None
        if self.adapt != "mixture":
            pri = fold_priors(self.priors, z, folds, f_stage1)
            self.residual_ = ResidualBT(
                grid=GRID if self.grid is None else self.grid, combine=self.combine, random_state=seed
            ).fit(D, pri, pca=pca, folds=folds)
            self.cv_["residual"] = self.residual_.cv_pairs_
        self.choice_ = self._choose()
        self._export(z, gate_params)
        self.n_features_in_ = D.shape[1]
        return self

    def _choose(self) -> str:
        if self.adapt != "auto":
            return self.adapt
        diff = self.cv_["residual"] - self.cv_["mixture"]
        se = diff.std(ddof=1) / np.sqrt(diff.size) if diff.size > 1 else np.inf
        return "residual" if diff.mean() > self.margin * se else "mixture"

    def _export(self, z, gate_params) -> None:
        K = z.shape[1]
        if self.choice_ == "mixture":
            self.rule_, self.gate_params_, self.gate_multiplier_ = "mixture", self.router_.gate_params_, 1.0
            self.head_weights_, self.coef_ = np.zeros(K), np.zeros(0)
            return
        res = self.residual_
        self.rule_, self.gate_params_ = "logit", gate_params
        self.gate_multiplier_ = float(res.prior_weights_.get("gate", 0.0))
        omega = np.zeros(K)
        for name, c in res.prior_weights_.items():
            if name != "gate":
                omega += c * prior_weights(name, z)
        self.head_weights_, self.coef_ = omega, res.coef_.copy()

    def _gate_input(self, gate_x, route_x):
        return route_x if self.rule_ == "mixture" else gate_x

    def decision_function(self, delta, heads, gate_x=None, route_x=None) -> np.ndarray:
        """Logit (n,) = g sum_k f_k z_k + omega . z + v . Delta, f = ``gate_params_`` on ``route_x`` (mixture)
        or ``gate_x`` (residual); for the mixture rule this is the mixed reward difference, not its decision."""
        D = np.asarray(delta, dtype=np.float64)
        z = D @ np.asarray(heads, dtype=np.float64).T
        f = gate_weights(self.gate_params_, self._gate_input(gate_x, route_x), n_rows=D.shape[0])
        out = self.gate_multiplier_ * prior_logits(z, None, f) + z @ self.head_weights_
        return out + (D @ self.coef_ if self.coef_.size else 0.0)

    def predict_proba(self, delta, heads, gate_x=None, route_x=None) -> np.ndarray:
        """P(winner preferred) (n,) under the chosen rule (probability mixture or logit)."""
        if not hasattr(self, "choice_"):
            raise ValueError("UserAdapter is not fitted yet: call fit() first")
        if self.rule_ == "mixture":
            D = np.asarray(delta, dtype=np.float64)
            z = D @ np.asarray(heads, dtype=np.float64).T
            f = gate_weights(self.gate_params_, route_x, n_rows=D.shape[0])
            return (f * np.exp(logsig(z))).sum(axis=1)
        return np.exp(logsig(self.decision_function(delta, heads, gate_x, route_x)))
