"""Synthetic preference data from a known mixture of Bradley-Terry heads with a known linear gate.

Generative story (what the model can recover):

1. Prompt features psi(x) in R^p from a Gaussian mixture with K clusters: x = c_j + N(0, I_p), cluster j
   uniform, centres c_j random directions of norm ``cluster_sep``.
2. True gate (linear, the same dict format as :mod:`heads.gate`): ``coef = C`` (rows c_j), ``intercept =
   -||c_j||^2 / 2`` -- i.e. the exact cluster posterior given x, f(x) = softmax(C x - ||c||^2/2).
3. True heads w_k = separation * (sqrt(shared) u_0 + sqrt(1 - shared) u_k) with u orthonormal: unit-norm
   directions whose pairwise cosine is ``shared``; |w_k| = separation.
4. Raw pair differences Delta ~ N(0, I_d) * feature_scale; group z_i ~ Categorical(f(x_i)); response A wins
   with probability sigma(w_z . Delta_i). If the sample says B wins, Delta's sign is flipped, so the returned
   ``delta`` always means winner - loser.
With ``rank=r`` (embedding-like features with a decaying spectrum) steps 1 and 4 happen in r-dimensional
latent spaces that are embedded by random orthonormal maps B (r, d) and B_x (r, p), plus isotropic noise
of standard deviation ``noise`` per coordinate: Delta = Z B + noise E, x = (c_j + z) B_x + noise E_x;
the true heads are B^T v_k and the true gate coefficients C B_x (then f is the cluster posterior up to the
small noise).

5. ``bayes_proba`` = sum_k f_k(x) sigma(w_k . delta): the probability of the observed outcome under the
   true parameters; ``bayes_accuracy`` = mean(bayes_proba > 0.5), the accuracy of the true model.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from .gate import gate_weights


def _orthonormal(rng: np.random.Generator, d: int, m: int) -> np.ndarray:
    """m orthonormal rows in R^d (if m <= d; else unit random rows; for d > 512 and m <= d / 4 Gaussian rows
    scaled by 1/sqrt(d): orthonormal up to O(1/sqrt(d)), without the QR)."""
    A = rng.standard_normal((d, m))
    if 4 * m <= d and d > 512:  # nearly orthonormal already, and a QR of a 3,072 x 256 matrix is slow
        return A.T / np.sqrt(d)
    if m <= d:
        Q, _ = np.linalg.qr(A)
        return Q.T
    return (A / np.linalg.norm(A, axis=0)).T


def _normal(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32) if dtype == np.float32 else rng.standard_normal(shape)


def _embed(rng: np.random.Generator, Z: np.ndarray, B: np.ndarray, noise: float) -> np.ndarray:
    """Z (n, r) @ B (r, d) + noise * N(0, 1), in Z's dtype."""
    out = Z @ B.astype(Z.dtype)
    if noise:
        out += noise * _normal(rng, out.shape, out.dtype)
    return out


def true_heads(rng: np.random.Generator, d: int, k: int, separation: float, shared: float) -> np.ndarray:
    U = _orthonormal(rng, d, k + 1)
    return separation * (np.sqrt(shared) * U[0][None, :] + np.sqrt(1.0 - shared) * U[1:])


def make_mixture(
    n: int = 20000,
    d: int = 16,
    p: int = 8,
    k: int = 3,
    seed: int = 0,
    separation: float = 4.0,
    shared: float = 0.2,
    cluster_sep: float = 4.0,
    feature_scale: float = 1.0,
    dtype=np.float64,
    rank: Optional[int] = None,
    noise: float = 0.1,
) -> Dict[str, np.ndarray]:
    """Sample n pairs. Returns dict(delta (n, d), prompt (n, p), groups (n,), true_coef (k, d),
    true_gate_params {"coef", "intercept"}, bayes_proba (n,), bayes_accuracy float, clusters (n,))."""
    rng = np.random.default_rng(seed)
    rd, rp = (d, p) if rank is None else (min(rank, d), min(rank, p))
    W = true_heads(rng, rd, k, separation, shared) / feature_scale
    C = rng.standard_normal((k, rp))
    C *= cluster_sep / np.linalg.norm(C, axis=1, keepdims=True)
    intercept = -0.5 * np.sum(C * C, axis=1)
    clusters = rng.integers(0, k, size=n)
    X = _normal(rng, (n, rp), dtype)
    X += C[clusters].astype(X.dtype)
    f = gate_weights({"coef": C, "intercept": intercept}, X)
    if rank is not None:
        Bx = _orthonormal(rng, p, rp)
        X = _embed(rng, X, Bx, noise)
        C = C @ Bx
    gate = {"coef": C, "intercept": intercept}
    cum = np.cumsum(f, axis=1)
    groups = np.minimum((rng.random(n)[:, None] > cum).sum(axis=1), k - 1)
    D = _normal(rng, (n, rd), dtype)
    if feature_scale != 1.0:
        D *= feature_scale
    z = (D @ W.T.astype(D.dtype)).astype(np.float64)
    zg = z[np.arange(n), groups]
    a_wins = rng.random(n) < 1.0 / (1.0 + np.exp(-zg))
    sign = np.where(a_wins, 1.0, -1.0)
    D *= sign[:, None].astype(D.dtype)
    z *= sign[:, None]
    if rank is not None:  # observed features; the label noise already came from the latent z
        B = _orthonormal(rng, d, rd)
        D = _embed(rng, D, B, noise)
        W = W @ B
        z = (D @ W.T.astype(D.dtype)).astype(np.float64)
        f = gate_weights(gate, X)
    bayes = np.sum(f / (1.0 + np.exp(-z)), axis=1)
    return {
        "delta": D,
        "prompt": X,
        "groups": groups,
        "clusters": clusters,
        "true_coef": W,
        "true_gate_params": gate,
        "bayes_proba": bayes,
        "bayes_accuracy": float(np.mean(bayes > 0.5)),
    }


def bayes_accuracy(data: Dict[str, np.ndarray]) -> float:
    """Accuracy of the true parameters on ``data`` (recomputed from true_coef and true_gate_params)."""
    f = gate_weights(data["true_gate_params"], data["prompt"])
    z = (data["delta"] @ data["true_coef"].T.astype(data["delta"].dtype)).astype(np.float64)
    return float(np.mean(np.sum(f / (1.0 + np.exp(-z)), axis=1) > 0.5))


def make_helpsteer2_like(
    n: int = 23500,
    d: int = 3072,
    p: int = 3072,
    k: int = 10,
    seed: int = 0,
    separation: float = 4.0,
    shared: float = 0.3,
    rank: Optional[int] = 256,
    noise: float = 0.1,
) -> Dict[str, np.ndarray]:
    """HelpSteer2-sized benchmark data (n=23,500 pairs, 3,072-d features, float32), generated in seconds.
    By default embedding-like: a 256-d latent signal in 3,072 dimensions plus isotropic noise (rank=None:
    isotropic Gaussian features, the hardest case)."""
    return make_mixture(
        n=n,
        d=d,
        p=p,
        k=k,
        seed=seed,
        separation=separation,
        shared=shared,
        cluster_sep=4.0,
        dtype=np.float32,
        rank=rank,
        noise=noise,
    )


def split(data: Dict[str, np.ndarray], n_train: int):
    """(train, test) dicts: row-wise split of the per-pair arrays; parameters are shared."""
    tr, te = {}, {}
    for key, v in data.items():
        if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == data["delta"].shape[0]:
            tr[key], te[key] = v[:n_train], v[n_train:]
        else:
            tr[key] = te[key] = v
    tr["bayes_accuracy"] = float(np.mean(tr["bayes_proba"] > 0.5))
    te["bayes_accuracy"] = float(np.mean(te["bayes_proba"] > 0.5))
    return tr, te


def make_llm_like(
    n: int = 10000,
    d: int = 2048,
    k: int = 4,
    seed: int = 0,
    rank: int = 32,
    noise: float = 0.5,
    separation: float = 3.0,
    dtype=np.float32,
) -> Dict[str, np.ndarray]:
    """LLM-width preference features: d = p wide (2,048-4,096 like 3B-8B decoders), the true heads and gate live in
    a ``rank``-dimensional subspace and every coordinate carries isotropic noise of std ``noise`` (most of the
    features' norm is noise: a fit without the right regularisation memorises the train pairs). K context-gated
    heads; see :func:`make_mixture` for the story."""
    return make_mixture(
        n=n,
        d=d,
        p=d,
        k=k,
        seed=seed,
        separation=separation,
        shared=0.2,
        cluster_sep=4.0,
        dtype=dtype,
        rank=rank,
        noise=noise,
    )
