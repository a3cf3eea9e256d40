"""heads/laplace.py: the dual-form Laplace fit equals the primal MAP of ridge logistic regression."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from heads.laplace import laplace_mode, laplace_predict, logsig, moderated_proba


def primal_map(X, m, S):
    """argmax_theta sum log sigma(m + X theta) - theta^T S^-1 theta / 2 (L-BFGS, independent of the dual code)."""
    Sinv = np.linalg.inv(S)

    def f(t):
        z = m + X @ t
        p = np.exp(logsig(z))
        return -logsig(z).sum() + 0.5 * t @ Sinv @ t, -(X.T @ (1 - p)) + Sinv @ t

    return minimize(f, np.zeros(X.shape[1]), jac=True, method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 1e-15}).x


@pytest.mark.parametrize("scale", [0.3, 3.0])
def test_dual_mode_matches_primal_map(scale):
    rng = np.random.default_rng(0)
    n, d = 40, 7
    X = rng.standard_normal((n, d))
    m = 0.5 * rng.standard_normal(n)
    S = np.diag(rng.uniform(0.2, 2.0, d)) * scale
    theta = primal_map(X, m, S)
    fit = laplace_mode(X @ S @ X.T, m)
    np.testing.assert_allclose(fit.g, X @ theta, atol=1e-6)
    np.testing.assert_allclose(S @ X.T @ fit.a, theta, atol=1e-6)  # representer: theta = S X^T a
    Xn = rng.standard_normal((5, d))
    mean, var = laplace_predict(fit, Xn @ S @ X.T, np.einsum("ij,jk,ik->i", Xn, S, Xn))
    np.testing.assert_allclose(mean, Xn @ theta, atol=1e-6)
    # Laplace predictive variance = x^T (S^-1 + X^T W X)^-1 x at the mode
    p = np.exp(logsig(m + X @ theta))
    H = np.linalg.inv(np.linalg.inv(S) + X.T @ (X * (p * (1 - p))[:, None]))
    np.testing.assert_allclose(var, np.einsum("ij,jk,ik->i", Xn, H, Xn), rtol=1e-6)
    assert np.isfinite(fit.log_evidence) and fit.log_evidence < fit.objective


def test_zero_kernel_and_moderation():
    m = np.array([1.0, -2.0, 0.0])
    fit = laplace_mode(np.zeros((3, 3)), m)
    np.testing.assert_allclose(fit.g, 0.0)
    np.testing.assert_allclose(fit.a, 1 - 1 / (1 + np.exp(-m)))
    p0, p1 = moderated_proba(np.array([2.0]), None), moderated_proba(np.array([2.0]), np.array([10.0]))
    assert 0.5 < p1[0] < p0[0]  # uncertainty pulls towards 1/2, same side
    with pytest.raises(ValueError, match="K must be"):
        laplace_mode(np.zeros((2, 2)), m)
