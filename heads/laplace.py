"""Laplace approximation for Bradley-Terry logistic regression with a Gaussian prior, in kernel (dual) form.

Model for n pairs (Delta = winner - loser, so every label is "first wins")::

    logit_i = m_i + g_i,     g ~ N(0, K),     P(first wins) = sigma(logit_i)

``m`` (n,) is a fixed prior logit (e.g. the routed mixture's), ``K`` (n, n) the prior covariance of the residual
logits. For a linear residual g_i = theta . x_i with theta ~ N(0, S), K = X S X^T, and the posterior mode is
theta = S X^T a with a = 1 - sigma(m + g) (representer theorem): the work is O(n^3) whatever the feature width.
Mode finding is Rasmussen & Williams (GPML) Alg. 3.1 (Newton on the residual logits, stable via
B = I + W^1/2 K W^1/2), with step halving so the objective never decreases; predictions are Alg. 3.2
(mean and variance of the residual logit at new pairs, and the probit-moderated probability).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import cho_solve, cholesky, solve_triangular

__all__ = ["LaplaceFit", "laplace_mode", "laplace_predict", "moderated_proba", "logsig"]


def logsig(z: np.ndarray) -> np.ndarray:
    """log sigma(z), stable."""
    return -np.logaddexp(0.0, -np.asarray(z, dtype=np.float64))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(logsig(z))


@dataclass
class LaplaceFit:
    """Posterior mode and Laplace factors for ``n`` training pairs.

    g (n,) residual logits at the mode; a (n,) = 1 - sigma(m + g), the dual weights (g = K a);
    L (n, n) lower Cholesky factor of I + sW K sW; sW (n,) = sqrt(sigma (1 - sigma)); objective = the
    log-posterior Psi = sum log sigma(m + g) - a.g / 2; log_evidence = Psi - sum log diag L;
    n_iter Newton steps."""

    g: np.ndarray
    a: np.ndarray
    L: np.ndarray
    sW: np.ndarray
    objective: float
    log_evidence: float
    n_iter: int


def _factor(K: np.ndarray, sW: np.ndarray) -> np.ndarray:
    B = np.eye(K.shape[0]) + sW[:, None] * K * sW[None, :]
    return cholesky(B, lower=True, check_finite=False)


def laplace_mode(
    K: np.ndarray, m: np.ndarray, *, max_iter: int = 100, tol: float = 1e-10, a0: np.ndarray | None = None
) -> LaplaceFit:
    """Mode of log p(g | pairs) for prior covariance ``K`` (n, n) and prior logits ``m`` (n,); ``a0`` warm start."""
    K = np.asarray(K, dtype=np.float64)
    m = np.asarray(m, dtype=np.float64).reshape(-1)
    n = m.shape[0]
    if K.shape != (n, n):
        raise ValueError(f"K must be ({n}, {n}), got {K.shape}")
    a = np.zeros(n) if a0 is None else np.asarray(a0, dtype=np.float64).copy()
    g = K @ a
    psi = float(logsig(m + g).sum() - 0.5 * a @ g)
    it = 0
    for it in range(1, max_iter + 1):
        p = _sigmoid(m + g)
        w = p * (1.0 - p)
        sW = np.sqrt(w)
        L = _factor(K, sW)
        b = w * g + (1.0 - p)
        c = cho_solve((L, True), sW * (K @ b))
        a_new = b - sW * c
        step, improved = 1.0, False
        while step > 1e-6:
            a_try = a + step * (a_new - a)
            g_try = K @ a_try
            psi_try = float(logsig(m + g_try).sum() - 0.5 * a_try @ g_try)
            if psi_try >= psi - 1e-12:
                improved = True
                break
            step *= 0.5
        if not improved:
            break
        done = abs(psi_try - psi) <= tol * max(1.0, abs(psi))
        a, g, psi = a_try, g_try, psi_try
        if done:
            break
    p = _sigmoid(m + g)
    sW = np.sqrt(p * (1.0 - p))
    L = _factor(K, sW)
    a = 1.0 - p  # exact stationarity condition; equals the iterate at convergence
    logdet = float(np.log(np.diag(L)).sum())
    return LaplaceFit(g=g, a=a, L=L, sW=sW, objective=psi, log_evidence=psi - logdet, n_iter=it)


def laplace_predict(fit: LaplaceFit, K_cross: np.ndarray, k_diag: np.ndarray | None = None):
    """(mean (n*,), variance (n*,) or None) of the residual logit at new pairs.

    ``K_cross`` (n*, n) prior covariances between new and training pairs; ``k_diag`` (n*,) prior variances of
    the new pairs (None: no variance)."""
    Kc = np.asarray(K_cross, dtype=np.float64)
    mean = Kc @ fit.a
    if k_diag is None:
        return mean, None
    v = solve_triangular(fit.L, (fit.sW[:, None] * Kc.T), lower=True)
    var = np.maximum(np.asarray(k_diag, dtype=np.float64) - np.einsum("ij,ij->j", v, v), 0.0)
    return mean, var


def moderated_proba(logit: np.ndarray, var: np.ndarray | None = None) -> np.ndarray:
    """sigma(logit / sqrt(1 + pi var / 8)) (the probit approximation of E sigma(f)); var None -> sigma(logit)."""
    z = np.asarray(logit, dtype=np.float64)
    if var is not None:
        z = z / np.sqrt(1.0 + np.pi * np.asarray(var, dtype=np.float64) / 8.0)
    return _sigmoid(z)
