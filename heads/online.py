"""Online per-user profile: a prior over the heads plus per-user residual experts, updated pair by pair.

Experts, each predicting every pair BEFORE seeing its label (prequential):

* ``prior``: :class:`heads.profile.HedgeProfile` (exponential weights over the K heads, probability mixture);
* ``residual-j``: P = sigma(m + g), m = pi0 . z the prior's initial head weights pi0 (fixed), g a linear
  residual with the Gaussian prior of :mod:`heads.adapt` (blocks "scale", "pca", "iso" with the variances of
  :data:`EXPERTS`), posterior by the Laplace method refitted on all pairs seen (warm-started).

Served model: the prior, unless a residual expert's cumulative prequential log-loss is lower than the prior's by
more than ``margin`` standard errors of the per-pair loss difference AND by at least ``min_gain`` nats; then the
best such expert. The prequential loss is an honest out-of-sample score (each pair is predicted before it
updates anything), so switching on it keeps the profile no worse than its prior beyond noise.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from .adapt import block_features, residual_weights
from .defaults import HEDGE_TAU
from .em import thread_limit
from .laplace import laplace_mode, laplace_predict, logsig, moderated_proba
from .profile import HedgeProfile

__all__ = ["EXPERTS", "OnlineResidual", "OnlineProfile"]

#: residual experts: prior variances of the blocks (see heads.adapt); "pca" is used only with a basis
EXPERTS: Dict[str, Dict[str, float]] = {
    "residual-small": {"scale": 1.0, "pca": 1.0, "iso": 0.1},
    "residual-medium": {"scale": 1.0, "pca": 3.0, "iso": 0.3},
    "residual-large": {"scale": 4.0, "pca": 3.0, "iso": 1.0},
}


class OnlineResidual:
    """Laplace logistic residual on top of fixed prior logits, refitted after every observed pair.

    ``variances`` {block: var}; ``scales`` {block: c_b} fixed at creation (mean squared row norm of the block on
    typical pairs); ``pca`` (r, d) or None. State: ``X`` {block: (n, m_b)} features of the pairs seen, ``m``
    (n,) their prior logits, ``a`` (n,) dual weights of the current posterior mode."""

    def __init__(self, variances: Dict[str, float], scales: Dict[str, float], pca: Optional[np.ndarray] = None):
        self.variances, self.scales, self.pca = dict(variances), dict(scales), pca
        self.X: Dict[str, np.ndarray] = {}
        self.m = np.zeros(0)
        self.a = np.zeros(0)
        self._fit = None

    def _blocks(self, delta: np.ndarray, m: np.ndarray) -> Dict[str, np.ndarray]:
        B = block_features(delta, m, None, self.pca)
        return {k: v for k, v in B.items() if self.variances.get(k, 0.0) > 0}

    def _cross(self, A: Dict[str, np.ndarray], B: Dict[str, np.ndarray]) -> np.ndarray:
        K = 0.0
        for k in A:
            K = K + self.variances[k] / self.scales.get(k, 1.0) * (A[k] @ B[k].T)
        return np.asarray(K, dtype=np.float64)

    def predict(self, delta: np.ndarray, m: np.ndarray, moderated: bool = True) -> np.ndarray:
        """P(winner) (n,) of new pairs ``delta`` (n, d) with prior logits ``m`` (n,)."""
        m = np.asarray(m, dtype=np.float64)
        if self.m.size == 0:
            return np.exp(logsig(m))
        new = self._blocks(delta, m)
        Kc = self._cross(new, self.X)
        kd = np.diag(self._cross(new, new)) if moderated else None
        mean, var = laplace_predict(self._fit, Kc, kd)
        return moderated_proba(m + mean, var)

    def update(self, delta: np.ndarray, m: np.ndarray) -> "OnlineResidual":
        """Add pairs (n, d) with prior logits (n,) and refit the posterior mode (warm start)."""
        new = self._blocks(delta, np.asarray(m, dtype=np.float64))
        self.X = {k: (np.vstack([self.X[k], v]) if k in self.X else v) for k, v in new.items()}
        self.m = np.concatenate([self.m, np.asarray(m, dtype=np.float64)])
        a0 = np.concatenate([self.a, np.zeros(len(m))])
        with thread_limit(self.m.size**2):
            self._fit = laplace_mode(self._cross(self.X, self.X), self.m, a0=a0)
        self.a = self._fit.a
        return self

    def weights(self) -> tuple[float, np.ndarray]:
        """(prior multiplier 1 + c, residual v (d,)) of the current posterior mode (v . Delta is the residual)."""
        return residual_weights(self.X, self.a, self.variances, self.scales, {"pca": self.pca})


class OnlineProfile:
    """Prior (Hedge over heads) + residual experts, served by prequential log-loss (module docstring).

    ``prior`` (K,) initial head weights pi0 (None: uniform); ``scales`` {block: c_b} of the residual blocks
    (e.g. :func:`heads.adapt.block_scales` on population pairs); ``pca`` (r, d) or None; ``experts`` {name:
    variances} (default :data:`EXPERTS`); ``tau`` the Hedge temperature; ``margin`` (standard errors) and
    ``min_gain`` (nats) of the switching rule; ``force`` None | "residual" (serve the best residual expert).
    Attributes: ``losses_`` {expert: (n,) per-pair prequential log-loss}, ``served_`` (expert name), ``n_seen_``.
    """

    def __init__(
        self,
        prior: Optional[np.ndarray],
        scales: Dict[str, float],
        pca: Optional[np.ndarray] = None,
        experts: Optional[Dict[str, Dict[str, float]]] = None,
        tau: float = HEDGE_TAU,
        margin: float = 1.0,
        min_gain: float = 1.0,
        force: Optional[str] = None,
        n_heads: Optional[int] = None,
    ):
        self.hedge = HedgeProfile(tau=tau, prior=prior, n_heads=n_heads)
        self.pi0 = np.exp(self.hedge.log_weights_)
        self.margin, self.min_gain, self.force = margin, min_gain, force
        specs = EXPERTS if experts is None else experts
        self.experts = {
            k: OnlineResidual({b: v for b, v in var.items() if b != "pca" or pca is not None}, scales, pca)
            for k, var in specs.items()
        }
        self.losses_: Dict[str, list] = {"prior": [], **{k: [] for k in self.experts}}
        self.n_seen_ = 0
        self.served_ = "prior" if force != "residual" else next(iter(self.experts))

    def prior_logits(self, z: np.ndarray) -> np.ndarray:
        """m (n,) = pi0 . z of head logits z (n, K)."""
        return np.asarray(z, dtype=np.float64) @ self.pi0

    def predict_proba(self, delta: np.ndarray, z: np.ndarray, expert: Optional[str] = None) -> np.ndarray:
        """P(winner) (n,) of the served expert (or ``expert``) for pairs ``delta`` (n, d), head logits z (n, K)."""
        name = expert or self.served_
        if name == "prior":
            return self.hedge.predict_proba(z)
        return self.experts[name].predict(delta, self.prior_logits(z))

    def update(self, delta: np.ndarray, z: np.ndarray) -> "OnlineProfile":
        """Observe pairs one at a time in stream order: score every expert on the pair, then update them."""
        D = np.atleast_2d(np.asarray(delta, dtype=np.float64))
        Z = np.atleast_2d(np.asarray(z, dtype=np.float64))
        for i in range(D.shape[0]):
            d, zi = D[i : i + 1], Z[i : i + 1]
            for name in self.losses_:
                self.losses_[name].append(float(-np.log(max(self.predict_proba(d, zi, name)[0], 1e-300))))
            self.hedge.update(zi)
            for e in self.experts.values():
                e.update(d, self.prior_logits(zi))
            self.n_seen_ += 1
            self.served_ = self._serve()
        return self

    def _serve(self) -> str:
        prior = np.asarray(self.losses_["prior"])
        best, gain_best = None, -np.inf
        for name in self.experts:
            diff = prior - np.asarray(self.losses_[name])
            gain = float(diff.sum())
            se = float(diff.std(ddof=1) * np.sqrt(diff.size)) if diff.size > 1 else np.inf
            ok = self.force == "residual" or (gain > self.margin * se and gain >= self.min_gain)
            if ok and gain > gain_best:
                best, gain_best = name, gain
        return best or "prior"

    def served_model(self) -> dict:
        """The served user model as head weights, a prior multiplier and a residual: reward =
        sum_k head_weights_k r_k + v . phi (rule "mixture" for the prior: P = sum_k w_k sigma(z_k))."""
        if self.served_ == "prior":
            return {"rule": "mixture", "head_weights": self.hedge.weights_, "v": None}
        c, v = self.experts[self.served_].weights()
        return {"rule": "logit", "head_weights": c * self.pi0, "v": v}

    def summary(self) -> dict:
        """JSON-able: served expert, prequential log-loss totals, pairs seen, Hedge state."""
        return {
            "served": self.served_,
            "n_seen": self.n_seen_,
            "prequential_logloss": {k: float(np.sum(v)) for k, v in self.losses_.items()},
            "experts": {k: e.variances for k, e in self.experts.items()},
            "hedge": self.hedge.to_dict(),
        }
