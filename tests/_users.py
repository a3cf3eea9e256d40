"""Synthetic new users at LLM width with a known truth (tests of heads/adapt, heads/user, heads/online).

Pair differences live near an r-dimensional latent subspace of R^d (embedding-like: Delta = z B^T + small isotropic
noise), K Stage-1 heads and the users' true heads are orthogonal latent directions of norm 3 mapped into R^d, and a
linear gate reads p-dimensional context features. A user "in the span" prefers one of the heads; a user "outside
the span" prefers a latent direction orthogonal to every head. Labels are Bradley-Terry draws from the user's
true head; ``delta`` is always winner - loser.
"""

from __future__ import annotations

import numpy as np

D_FEAT, P_CTX, K_HEADS, RANK = 2048, 16, 4, 32


class World:
    """Heads ``W`` (K, d), gate params, the latent map, and a sampler of a user's pairs."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.B = np.linalg.qr(rng.standard_normal((D_FEAT, RANK)))[0]  # (d, r)
        A = np.linalg.qr(rng.standard_normal((RANK, K_HEADS + 1)))[0].T * 3.0  # (K+1, r) orthogonal
        self.W = A[:K_HEADS] @ self.B.T  # Stage-1 heads (K, d)
        self.outside = A[K_HEADS] @ self.B.T  # a head outside their span
        self.C = rng.standard_normal((K_HEADS, P_CTX)) * 2.0
        self.gate = {"coef": self.C, "intercept": np.zeros(K_HEADS)}

    def pairs(self, head: np.ndarray, n: int, context: np.ndarray, seed: int):
        """(delta (n, d) winner - loser, context features (n, p))."""
        rng = np.random.default_rng(seed)
        D = rng.standard_normal((n, RANK)) @ self.B.T + 0.3 * np.sqrt(RANK / D_FEAT) * rng.standard_normal((n, D_FEAT))
        won = rng.random(n) < 1.0 / (1.0 + np.exp(-(D @ head)))
        D[~won] *= -1.0
        X = np.tile(context, (n, 1)) + 0.3 * rng.standard_normal((n, P_CTX))
        return D, X

    def population(self, n: int = 3000, seed: int = 99) -> np.ndarray:
        """Pair differences of the Stage-1 population (for the PCA basis)."""
        return self.pairs(self.W[0], n, np.zeros(P_CTX), seed)[0]


def accuracy(p: np.ndarray) -> float:
    return float(np.mean(np.asarray(p) > 0.5))


def accuracy_logit(z: np.ndarray) -> float:
    """Accuracy of logits (reward differences): fraction > 0."""
    return float(np.mean(np.asarray(z) > 0))
