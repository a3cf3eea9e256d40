"""Initialisation strategies for the mixture fit (they decide whether the heads specialise).

:func:`initialise` returns ``(W0 (K, d), r0 (n, K) or None)``; ``r0`` are the FIRST responsibilities the
first M-step is fitted to (None: take the E-step at W0 and the uniform gate).

* ``"gate-kmeans"``: k-means on the gate's input (prompt) features; hard assignments smoothed to
  ``0.9`` on the own cluster and ``0.1 / (K - 1)`` elsewhere; heads and gate start at zero. On real DSP
  data with MiniLM features this is what makes heads specialise (macro accuracy 0.77 vs 0.58).
* ``"kmeans"``: the same on row-normalised Delta.
* ``"random"``: small random heads (|w_k . Delta| ~ 0.1), uniform gate.
* ``"split"``: perturb the single-BT solution w_1: w_k = w_1 + 0.3 |w_1| u_k, u_k random unit vectors.

Wide features (> ``MAX_KMEANS_DIM`` columns) are clustered after a fixed Gaussian random projection to
``MAX_KMEANS_DIM`` columns (Johnson-Lindenstrauss) so that k-means stays cheap for 3,072-d inputs.
"""

from __future__ import annotations

import warnings
from typing import Optional, Tuple

import numpy as np

INITS = ("gate-kmeans", "kmeans", "random", "split")
#: features wider than this are clustered after a Gaussian random projection to this many columns
MAX_KMEANS_DIM = 128


#: k-means is fitted on at most this many rows (seeded sample); every row is then assigned to its nearest centre
MAX_KMEANS_ROWS = 50_000


class Sketch:
    """Rows of X (row-normalised with ``normalise``) as float32, through a fixed Gaussian projection R (p, max_dim)
    / sqrt(max_dim) when X is wider than ``max_dim``; computed in chunks on demand, so no float32 copy of X exists."""

    def __init__(self, X: np.ndarray, max_dim: int, rng: np.random.Generator, normalise: bool = False):
        self.X, self.normalise = X, normalise
        self.R = (
            rng.standard_normal((X.shape[1], max_dim), dtype=np.float32) / np.float32(np.sqrt(max_dim))
            if X.shape[1] > max_dim
            else None
        )

    def rows(self, idx: np.ndarray, chunk: int = 8192) -> np.ndarray:
        """(len(idx), m) float32 sketch of the rows ``idx``."""
        m = self.X.shape[1] if self.R is None else self.R.shape[1]
        out = np.empty((len(idx), m), dtype=np.float32)
        for s in range(0, len(idx), chunk):
            A = np.asarray(self.X[idx[s : s + chunk]], dtype=np.float32)
            if self.normalise:
                nrm = np.linalg.norm(A, axis=1, keepdims=True)
                A /= np.where(nrm > 0, nrm, 1.0)
            out[s : s + chunk] = A if self.R is None else A @ self.R
        return out


def kmeans_labels(sk: Sketch, rows: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Hard k-means labels of the rows ``rows`` of a sketch (sklearn Lloyd, one init, k-means++ seeding), fitted on
    at most MAX_KMEANS_ROWS of them."""
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(seed)
    fit = rows if len(rows) <= MAX_KMEANS_ROWS else np.sort(rng.choice(rows, MAX_KMEANS_ROWS, replace=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        km = KMeans(n_clusters=k, n_init=1, max_iter=100, random_state=seed).fit(sk.rows(fit))
    if fit is rows:
        return km.labels_
    return np.concatenate([km.predict(sk.rows(rows[s : s + 65536])) for s in range(0, len(rows), 65536)])


def smoothed(labels: np.ndarray, k: int, own: float = 0.9) -> np.ndarray:
    """Responsibilities: ``own`` on the label, the rest spread evenly (k = 1: all ones)."""
    if k == 1:
        return np.ones((labels.shape[0], 1))
    r = np.full((labels.shape[0], k), (1.0 - own) / (k - 1))
    r[np.arange(labels.shape[0]), labels] = own
    return r


def initialise(
    method: str,
    k: int,
    d: int,
    seed: int,
    *,
    rows: np.ndarray,
    delta_sketch: Optional[Sketch] = None,
    prompt_sketch: Optional[Sketch] = None,
    delta_rms: float = 1.0,
    single_coef: Optional[np.ndarray] = None,
) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Initial heads W0 (k, d) and first responsibilities r0 (len(rows), k) (or None) for the pairs ``rows``.
    Sketches are made by the caller once per fit (shared by restarts); ``delta_rms`` is the root-mean-square norm
    of Delta rows."""
    rng = np.random.default_rng(seed)
    W0 = np.zeros((k, d))
    if k == 1:
        return W0, None
    if method == "gate-kmeans":
        return W0, smoothed(kmeans_labels(prompt_sketch, rows, k, seed), k)
    if method == "kmeans":
        return W0, smoothed(kmeans_labels(delta_sketch, rows, k, seed), k)
    if method == "random":
        U = rng.standard_normal((k, d))
        U *= 0.1 / (np.linalg.norm(U, axis=1, keepdims=True) * max(delta_rms, 1e-12))
        return U, None
    if method == "split":
        w1 = np.asarray(single_coef, dtype=np.float64).reshape(-1)
        U = rng.standard_normal((k, d))
        U /= np.linalg.norm(U, axis=1, keepdims=True)
        scale = 0.3 * max(float(np.linalg.norm(w1)), 0.1 / max(delta_rms, 1e-12))
        return w1[None, :] + scale * U, None
    raise ValueError(f"unknown init {method!r}; expected one of {INITS}")
