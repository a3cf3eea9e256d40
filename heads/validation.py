"""Input checks shared by the estimators: each failure is a ValueError with one clear line."""

from __future__ import annotations

from typing import Optional

import numpy as np


def as_matrix(X, name: str) -> np.ndarray:
    """2-D float array (float16 / float32 / float64 kept, other dtypes -> float64), non-empty and finite."""
    if X is None:
        raise ValueError(f"{name} is required")
    A = np.asarray(X)
    if A.dtype not in (np.float16, np.float32, np.float64):
        try:
            A = A.astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be numeric, got dtype {A.dtype}") from None
    if A.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (rows, features), got shape {A.shape}")
    if A.shape[0] == 0 or A.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {A.shape})")
    finite = np.isfinite(A).all(axis=1) if A.size < (1 << 22) else _finite_rows_chunked(A)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"{name} has NaN or inf values (first bad row: {i})")
    return A


def _finite_rows_chunked(A: np.ndarray, rows: int = 4096) -> np.ndarray:
    out = np.empty(A.shape[0], dtype=bool)
    for s in range(0, A.shape[0], rows):
        out[s : s + rows] = np.isfinite(A[s : s + rows]).all(axis=1)
    return out


def nonzero_rows(A: np.ndarray, rows: int = 4096) -> np.ndarray:
    """(n,) bool: rows of ``A`` with a non-zero entry (a zero difference vector: chosen and rejected embed to
    the same features, so the pair carries no preference)."""
    out = np.empty(A.shape[0], dtype=bool)
    for s in range(0, A.shape[0], rows):
        out[s : s + rows] = (A[s : s + rows] != 0).any(axis=1)
    return out


def check_width(A: np.ndarray, expected: int, name: str) -> None:
    if A.shape[1] != expected:
        raise ValueError(f"{name} has {A.shape[1]} features but the model was fitted with {expected}")


def check_rows(A: np.ndarray, B: Optional[np.ndarray], a: str, b: str) -> None:
    if B is not None and A.shape[0] != B.shape[0]:
        raise ValueError(f"{a} has {A.shape[0]} rows but {b} has {B.shape[0]}")


def validate_params(estimator) -> None:
    """Check ``estimator``'s parameters against its ``_parameter_constraints`` (what ``fit`` does first); raises
    scikit-learn's :class:`InvalidParameterError` (a ValueError) naming the parameter."""
    estimator._validate_params()


def invalid_parameter_error() -> type:
    """scikit-learn's InvalidParameterError class (its module is private), for callers that tell it apart."""
    from sklearn.utils._param_validation import InvalidParameterError

    return InvalidParameterError
