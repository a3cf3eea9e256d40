"""Adapting to ONE new user from a few labelled pairs: prior logit + a per-user linear residual (Stage 2+).

The adapted model (logit space; Delta = phi(x, a_w) - phi(x, a_l))::

    logit_i = (1 + c) m_i + sum_b theta_b . x_b(Delta_i),     P(a_w > a_l) = sigma(logit_i)

``m`` (n,) the prior logit (e.g. the mixture's reward difference sum_k f_k(x, c) w_k . Delta, see
:mod:`heads.priors`); block "scale": c ~ N(0, var) lets the prior's scale move (or flip); linear blocks of Delta:
"heads" x = W Delta (signed combinations of the K Stage-1 heads), "pca" x = P Delta (the population's top
principal directions, :func:`pca_basis`) and "iso" x = Delta (everything else), each with a Gaussian prior
theta_b ~ N(0, var_b / c_b I), c_b the mean squared norm of x_b on the fit pairs (var_b is then the prior
variance of the block's logit on a typical pair). The posterior is found by the Laplace method in dual form
(:mod:`heads.laplace`): O(n^3), independent of the feature width. Folded back, the residual is one vector
v (d,): r_u(x, a) = (1 + c) * prior reward + v . phi(x, a).

:class:`ResidualBT` scores every (prior, variances) candidate by K-fold cross-validation on the user's pairs
(held-out log-likelihood, :func:`cv_heldout`). Small variances give the best residual DIRECTIONS (close to the
mean of the user's Delta) but too small logits, so each candidate's residual logit is rescaled by a temperature
t fitted on its out-of-fold predictions (:func:`best_temperature`); the final model is the best candidate
("select") or the candidates averaged with pseudo-Bayesian weights exp(n * CV log-likelihood) ("average").
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from .em import thread_limit
from .laplace import laplace_mode, laplace_predict, moderated_proba

__all__ = [
    "BLOCKS",
    "DEFAULT_GRID",
    "block_features",
    "block_scales",
    "grams",
    "residual_weights",
    "pca_basis",
    "kfold",
    "cv_heldout",
    "best_temperature",
    "ResidualBT",
]

BLOCKS = ("scale", "heads", "pca", "iso")

#: candidate prior variances per block (logit variance on a typical pair; "scale": variance of c); the product
#: of the lists is searched
DEFAULT_GRID: Dict[str, Sequence[float]] = {
    "scale": (0.0, 1.0),
    "heads": (0.0, 1.0, 4.0, 16.0),
    "pca": (0.0,),
    "iso": (0.0, 0.25, 1.0, 4.0),
}


def block_features(
    delta: np.ndarray, prior_logit: np.ndarray, heads: Optional[np.ndarray] = None, pca: Optional[np.ndarray] = None
) -> Dict[str, np.ndarray]:
    """Per-block features of n pairs: scale (n, 1) = m, heads (n, K) = Delta W^T, pca (n, r) = Delta P^T,
    iso (n, d) = Delta. ``heads`` (K, d) and ``pca`` (r, d) are optional bases."""
    D = np.asarray(delta, dtype=np.float64)
    out = {"scale": np.asarray(prior_logit, dtype=np.float64).reshape(-1, 1), "iso": D}
    if heads is not None:
        out["heads"] = D @ np.asarray(heads, dtype=np.float64).T
    if pca is not None:
        out["pca"] = D @ np.asarray(pca, dtype=np.float64).T
    return out


def block_scales(blocks: Mapping[str, np.ndarray]) -> Dict[str, float]:
    """c_b = mean squared row norm of every block (1.0 for an all-zero block)."""
    out = {}
    for k, X in blocks.items():
        c = float(np.mean(np.einsum("ij,ij->i", X, X))) if X.size else 0.0
        out[k] = c if c > 0 else 1.0
    return out


def residual_weights(
    blocks: Mapping[str, np.ndarray], a: np.ndarray, variances: Mapping[str, float], scales: Mapping[str, float], bases
) -> tuple:
    """(prior multiplier 1 + c, residual v (d,) or None) of a posterior mode with dual weights ``a``: each block's
    weights theta_b = (var_b / c_b) X_b^T a (representer theorem), folded back onto Delta ("iso" is Delta itself,
    ``bases`` {"heads": (K, d), "pca": (r, d)} the others' bases; "scale" is the prior logit's c)."""
    theta = {k: (variances.get(k, 0.0) / scales.get(k, 1.0)) * (X.T @ a) for k, X in blocks.items()}
    v = theta["iso"].copy() if "iso" in theta else None
    for k in ("heads", "pca"):
        if k in theta and bases.get(k) is not None:
            t = np.asarray(bases[k], dtype=np.float64).T @ theta[k]
            v = t if v is None else v + t
    return 1.0 + (float(theta["scale"][0]) if "scale" in theta else 0.0), v


def grams(blocks: Mapping[str, np.ndarray], scales: Mapping[str, float]) -> Dict[str, np.ndarray]:
    """(n, n) normalised Gram matrix X_b X_b^T / c_b of every block."""
    return {k: (X @ X.T) / scales[k] for k, X in blocks.items()}


def pca_basis(delta: np.ndarray, n_components: int = 16, max_rows: int = 8192, seed: int = 0) -> np.ndarray:
    """(r, d) top right singular vectors of the population's pair differences (uncentred, as the heads are
    bias-free): randomized SVD on at most ``max_rows`` random rows."""
    from sklearn.utils.extmath import randomized_svd

    D = np.asarray(delta)
    if D.ndim != 2 or D.shape[0] == 0:
        raise ValueError(f"delta must be a non-empty (N, d) array, got shape {D.shape}")
    rng = np.random.default_rng(seed)
    if D.shape[0] > max_rows:
        D = D[np.sort(rng.choice(D.shape[0], max_rows, replace=False))]
    r = int(min(n_components, *D.shape))
    _, _, vt = randomized_svd(np.asarray(D, dtype=np.float64), r, random_state=seed)
    return vt


def kfold(n: int, n_folds: int, seed: int = 0, groups: Optional[np.ndarray] = None) -> list:
    """Fold index arrays (test rows of each fold); with ``groups`` (n,) all rows of a group share a fold."""
    rng = np.random.default_rng(seed)
    if groups is None:
        ids = np.arange(n)
    else:
        ids = np.unique(np.asarray(groups), return_inverse=True)[1]
    u = rng.permutation(int(ids.max()) + 1)
    n_folds = max(2, min(int(n_folds), len(u)))
    fold_of = np.empty(len(u), dtype=int)
    fold_of[u] = np.arange(len(u)) % n_folds
    f = fold_of[ids]
    return [np.flatnonzero(f == j) for j in range(n_folds)]


def _kernel(G: Mapping[str, np.ndarray], variances: Mapping[str, float], n: int) -> np.ndarray:
    K = np.zeros((n, n))
    for k, v in variances.items():
        if v and k in G:
            K += float(v) * G[k]
    return K


def grid_points(grid: Mapping[str, Sequence[float]], present: Sequence[str]) -> list:
    """Every combination of the grid's variances over the blocks in ``present`` (absent blocks fixed at 0)."""
    pts = [{}]
    for k in BLOCKS:
        vals = grid.get(k, (0.0,)) if k in present else (0.0,)
        pts = [{**p, k: float(v)} for p in pts for v in vals]
    return pts


def cv_heldout(G: Mapping[str, np.ndarray], priors: np.ndarray, folds: list, points: list, moderated: bool = True):
    """Out-of-fold predictions of every grid point (variances dict) by K-fold CV.

    ``G`` block Gram matrices over all n pairs except "scale"; ``priors`` (F, n): row j = prior logits of all
    pairs when the prior is fitted without fold j (a fixed prior repeats one row); ``folds`` the F test-row
    arrays. Returns (m (n,) the out-of-fold prior logits, mu (P, n) residual logit means, var (P, n) their
    posterior variances (zeros unless ``moderated``))."""
    n = priors.shape[1]
    mu, var, m_oof = np.zeros((len(points), n)), np.zeros((len(points), n)), np.zeros(n)
    for j, te in enumerate(folds):
        tr = np.setdiff1d(np.arange(n), te)
        m = priors[j]
        m_oof[te] = m[te]
        Gj = {**G, "scale": np.outer(m, m)}
        for i, v in enumerate(points):
            K = _kernel(Gj, v, n)
            if not K.any():
                continue
            fit = laplace_mode(K[np.ix_(tr, tr)], m[tr])
            mean, s2 = laplace_predict(fit, K[np.ix_(te, tr)], np.diag(K)[te] if moderated else None)
            mu[i, te] = mean
            if s2 is not None:
                var[i, te] = s2
    return m_oof, mu, var


def heldout_loglik(m: np.ndarray, mu: np.ndarray, var: np.ndarray, t: float = 1.0) -> np.ndarray:
    """(n,) log P(winner) = log sigma-moderated(m + t mu, t^2 var) of out-of-fold predictions."""
    return np.log(np.clip(moderated_proba(m + t * mu, (t * t) * var), 1e-300, 1.0))


def best_temperature(m: np.ndarray, mu: np.ndarray, var: np.ndarray, t_max: float = 30.0) -> float:
    """t in [0, t_max] maximising the out-of-fold log-likelihood of m + t mu (residual scale calibration:
    small prior variances give the best directions but too small logits)."""
    from scipy.optimize import minimize_scalar

    if not np.any(mu):
        return 1.0
    res = minimize_scalar(
        lambda t: -heldout_loglik(m, mu, var, t).sum(), bounds=(0.0, t_max), method="bounded", options={"xatol": 1e-3}
    )
    return float(res.x)


def _as_fold_priors(name: str, p, n_folds: int, n: int) -> np.ndarray:
    """A prior given as (n,) (fixed) or (F + 1, n) (per fold, then all pairs) -> (F + 1, n)."""
    a = np.asarray(p, dtype=np.float64)
    if a.ndim == 1:
        a = np.tile(a, (n_folds + 1, 1))
    if a.shape != (n_folds + 1, n):
        raise ValueError(
            f"prior {name!r} must be (n,) = ({n},) or (n_folds + 1, n) = ({n_folds + 1}, {n}), got {a.shape}"
        )
    if not np.isfinite(a).all():
        raise ValueError(f"prior {name!r} has NaN or inf logits")
    return a


class ResidualBT:
    """Prior logit plus a linear residual with a block Gaussian prior; prior and variances chosen by CV.

    Parameters: ``grid`` {block: candidate variances} (see :data:`DEFAULT_GRID`; blocks without data are
    skipped); ``n_folds``; ``moderated`` (probit-moderated held-out probabilities in the CV); ``combine``
    ("select" the best candidate, or "average" them with weights exp(n * CV log-lik)); ``calibrate`` (fit each
    candidate's residual temperature on its out-of-fold predictions); ``random_state`` (fold assignment).

    ``fit(delta (n, d), priors, heads=(K, d) | None, pca=(r, d) | None, folds=None, fold_groups=(n,) | None)``:
    ``priors`` {name: logits} with logits (n,) for a fixed prior or (F + 1, n) for a prior fitted on the pairs
    (row j fitted without fold j, last row on all pairs; then pass the ``folds`` used, see :func:`kfold`).
    A prior "none" of zeros without residual (P = 1/2 everywhere) is no candidate.
    Fitted attributes: ``prior_``, ``variances_``, ``temperature_`` (of the best candidate), ``cv_loglik_``
    (its mean held-out log-likelihood), ``cv_pairs_`` (n,) per-pair held-out log-likelihood of the fitted model
    (of the average with "average"), ``cv_priors_`` {name: (n,) of that prior alone}, ``cv_table_``
    [(prior, variances, mean loglik)], ``candidate_weights_``, ``prior_weights_`` {prior: multiplier of its
    logit in the final model}, ``coef_`` (d,) the residual v,
    ``scales_`` {block: c_b}, ``folds_``, ``n_features_in_``.
    """

    def __init__(
        self,
        grid: Optional[Mapping[str, Sequence[float]]] = None,
        n_folds: int = 5,
        moderated: bool = True,
        combine: str = "select",
        calibrate: bool = True,
        random_state: int = 0,
    ):
        self.grid, self.n_folds, self.moderated, self.random_state = grid, n_folds, moderated, random_state
        self.combine, self.calibrate = combine, calibrate

    def fit(self, delta, priors, heads=None, pca=None, folds=None, fold_groups=None) -> "ResidualBT":
        with thread_limit(int(np.shape(delta)[0]) ** 2):  # many small (n, n) factorisations
            return self._fit(delta, priors, heads, pca, folds, fold_groups)

    def _fit(self, delta, priors, heads, pca, folds, fold_groups) -> "ResidualBT":
        D = np.asarray(delta, dtype=np.float64)
        if D.ndim != 2 or D.shape[0] < 2 or not np.isfinite(D).all():
            raise ValueError(f"delta must be a finite (n, d) array with n >= 2, got shape {D.shape}")
        if self.combine not in ("select", "average"):
            raise ValueError(f"combine must be 'select' or 'average', got {self.combine!r}")
        n = D.shape[0]
        if not isinstance(priors, Mapping):
            priors = {"prior": priors}
        if not priors:
            raise ValueError("priors is empty: give at least one prior, e.g. {'none': np.zeros(n)}")
        self.folds_ = kfold(n, self.n_folds, self.random_state, fold_groups) if folds is None else list(folds)
        F = len(self.folds_)
        P = {k: _as_fold_priors(k, v, F, n) for k, v in priors.items()}
        blocks = block_features(D, np.zeros(n), heads, pca)
        self.scales_ = block_scales(blocks)
        G = grams({k: v for k, v in blocks.items() if k != "scale"}, self.scales_)
        grid = DEFAULT_GRID if self.grid is None else self.grid
        table, self.cv_priors_ = [], {}
        for name, rows in P.items():
            informative = bool(np.any(rows))
            points = grid_points(grid, [k for k in blocks if k != "scale"] + (["scale"] if informative else []))
            has_zero = any(not any(p.values()) for p in points)
            if informative and not has_zero:
                points.append({k: 0.0 for k in points[0]})  # the prior alone is always a candidate
            elif not informative and has_zero:  # a model that says 0.5 everywhere is no candidate
                points = [p for p in points if any(p.values())]
            if not points:
                continue
            m_oof, mu, var = cv_heldout(G, rows[:F], self.folds_, points, self.moderated)
            for p, mu_i, var_i in zip(points, mu, var):
                t = best_temperature(m_oof, mu_i, var_i) if self.calibrate else 1.0
                row = heldout_loglik(m_oof, mu_i, var_i, t)
                table.append((name, p, float(row.mean()), row, t))
                if not any(p.values()):
                    self.cv_priors_[name] = row
        if not table:
            raise ValueError("no candidate model: every prior is 'none' and the grid has no residual variance")
        self.cv_table_ = [t[:3] for t in table]
        means = np.array([t[2] for t in table])
        best = int(np.argmax(means))
        self.prior_, self.variances_, self.cv_loglik_, self.cv_pairs_, self.temperature_ = table[best]
        if self.combine == "select":
            weights = np.zeros(len(table))
            weights[best] = 1.0
        else:  # pseudo-BMA: w_j ∝ prod_i p_j(y_i | other folds)
            a = n * (means - means.max())
            weights = np.exp(a) / np.exp(a).sum()
        self.candidate_weights_ = weights
        if self.combine == "average":  # held-out likelihood of the average (same weights; mildly optimistic)
            rows = np.stack([t[3] for t in table])
            self.cv_pairs_ = np.log(np.clip(weights @ np.exp(rows), 1e-300, None))
        self.prior_weights_, self.coef_, self.n_features_in_ = {}, np.zeros(D.shape[1]), D.shape[1]
        keep = np.flatnonzero(weights > 1e-3 * weights.max())
        kept = weights[keep].sum()
        for j in keep:
            name, var, t = table[j][0], table[j][1], table[j][4]
            c, v = self._refit(blocks, G, P[name][F], var, heads, pca)
            c, v = 1.0 + t * (c - 1.0), t * v
            self.prior_weights_[name] = self.prior_weights_.get(name, 0.0) + weights[j] / kept * c
            self.coef_ += weights[j] / kept * v
        return self

    def _refit(self, blocks, G, m, variances, heads, pca):
        """(prior multiplier 1 + c, residual v (d,)) of one candidate refitted on all pairs."""
        K = _kernel({**G, "scale": np.outer(m, m)}, variances, len(m))
        fit = laplace_mode(K, m)
        scales = {**self.scales_, "scale": 1.0}
        return residual_weights({**blocks, "scale": m[:, None]}, fit.a, variances, scales, {"heads": heads, "pca": pca})

    def decision_function(self, delta, prior_logits) -> np.ndarray:
        """MAP logit (n,) = sum_j multiplier_j m_j + v . Delta; ``prior_logits`` {prior name: m_j (n,)} for the
        priors in ``prior_weights_`` (or one (n,) array when a single prior was used)."""
        if not hasattr(self, "coef_"):
            raise ValueError("ResidualBT is not fitted yet: call fit() first")
        D = np.asarray(delta, dtype=np.float64)
        if D.ndim != 2 or D.shape[1] != self.n_features_in_:
            raise ValueError(f"delta must be (n, {self.n_features_in_}), got {D.shape}")
        if not isinstance(prior_logits, Mapping):
            prior_logits = {name: prior_logits for name in self.prior_weights_}
        out = D @ self.coef_
        for name, c in self.prior_weights_.items():
            if c:
                out = out + c * np.asarray(prior_logits[name], dtype=np.float64).reshape(-1)
        return out

    def predict_proba(self, delta, prior_logits) -> np.ndarray:
        """P(winner preferred) (n,) = sigma(MAP logit)."""
        return moderated_proba(self.decision_function(delta, prior_logits))
