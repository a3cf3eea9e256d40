"""Matching heads across fits: the mixture is identifiable only up to a permutation of its heads."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def cosine_matrix(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """C[i, j] = cos(A_i, B_j) for row vectors (zero rows give 0)."""
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[1]:
        raise ValueError(f"need two 2-D arrays with the same width, got {A.shape} and {B.shape}")
    na = np.linalg.norm(A, axis=1)
    nb = np.linalg.norm(B, axis=1)
    return (A / np.where(na > 0, na, 1.0)[:, None]) @ (B / np.where(nb > 0, nb, 1.0)[:, None]).T


def align_heads(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """perm (len(A),) with B[perm[i]] matched to A[i], maximising the total cosine (Hungarian algorithm).
    Needs len(B) >= len(A)."""
    C = cosine_matrix(A, B)
    if C.shape[1] < C.shape[0]:
        raise ValueError(f"B has fewer heads ({C.shape[1]}) than A ({C.shape[0]})")
    rows, cols = linear_sum_assignment(-C)
    perm = np.empty(C.shape[0], dtype=int)
    perm[rows] = cols
    return perm


def mean_aligned_cosine(A: np.ndarray, B: np.ndarray) -> float:
    """Mean cosine between A_i and its matched B head after :func:`align_heads`."""
    perm = align_heads(A, B)
    C = cosine_matrix(A, B)
    return float(np.mean(C[np.arange(C.shape[0]), perm]))
