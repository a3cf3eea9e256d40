"""Row-chunked arithmetic on feature matrices kept in their stored dtype.

Features may be float16 (the cache's compact dtype), float32 or float64; a row subset may be given as an index
array instead of a copy. Work runs in chunks of rows converted to the compute dtype (float64 for float64 data,
float32 otherwise), so memory beyond the data is one chunk, and time is linear in the number of rows.
"""

from __future__ import annotations

from typing import Iterator, Optional, Tuple

import numpy as np

#: bytes of compute-dtype rows per converted chunk (contiguous float32/float64 data is used in place, in larger views)
CHUNK_BYTES = 1 << 24


def compute_dtype(A: np.ndarray):
    """float64 for float64 data, float32 for everything else (float16 is never computed in)."""
    return np.float64 if A.dtype == np.float64 else np.float32


def in_place(A: np.ndarray, rows: Optional[np.ndarray]) -> bool:
    """True when chunks of A can be used as views (no gather, no conversion)."""
    return rows is None and A.dtype in (np.float32, np.float64) and A.flags.c_contiguous


def chunk_rows(n_rows: int, row_bytes: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Rows per chunk: ``chunk_bytes`` of rows, at least 256."""
    return int(max(256, min(max(n_rows, 1), chunk_bytes // max(row_bytes, 1))))


def take(A: np.ndarray, rows: Optional[np.ndarray], start: int, stop: int, dtype=None) -> np.ndarray:
    """Rows ``start:stop`` of A (of ``A[rows]`` when ``rows`` is given) as a C-contiguous array of ``dtype``
    (default: the compute dtype); a view when nothing needs converting."""
    dtype = dtype or compute_dtype(A)
    block = A[start:stop] if rows is None else A[rows[start:stop]]
    return np.ascontiguousarray(block, dtype=dtype)


def iter_chunks(
    A: np.ndarray, rows: Optional[np.ndarray] = None, chunk: Optional[int] = None
) -> Iterator[Tuple[int, int, np.ndarray]]:
    """(start, stop, rows in the compute dtype) over A (or ``A[rows]``)."""
    n = A.shape[0] if rows is None else len(rows)
    chunk = chunk or chunk_rows(n, A.shape[1] * 4)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        yield s, e, take(A, rows, s, e)


def matmul_t(A: np.ndarray, B: np.ndarray, rows: Optional[np.ndarray] = None, out_dtype=np.float64) -> np.ndarray:
    """``A @ B.T`` (n, m) for A (n, d) in any float dtype and B (m, d), computed in row chunks."""
    n = A.shape[0] if rows is None else len(rows)
    out = np.empty((n, B.shape[0]), dtype=out_dtype)
    cd = compute_dtype(A)
    Bt = np.ascontiguousarray(np.asarray(B, dtype=cd).T)
    if in_place(A, rows):
        out[:] = A @ Bt
        return out
    for s, e, Ac in iter_chunks(A, rows):
        out[s:e] = Ac @ Bt
    return out


def project(A: np.ndarray, P: np.ndarray, rows: Optional[np.ndarray] = None) -> np.ndarray:
    """``A @ P.T`` (n, r) for a projection P (r, d): float32 (float64 for float64 data; float16 data stays
    float16, so a projected float16 matrix costs no more memory than the data per column)."""
    out_dtype = np.float16 if A.dtype == np.float16 else compute_dtype(A)
    return matmul_t(A, P, rows, out_dtype=out_dtype)


def mean_sq_norm(A: np.ndarray, rows: Optional[np.ndarray] = None, max_rows: int = 4096) -> float:
    """Mean squared row norm of A (of at most ``max_rows`` evenly spaced rows), in float64."""
    n = A.shape[0] if rows is None else len(rows)
    pick = np.linspace(0, n - 1, min(n, max_rows)).astype(np.int64)
    idx = pick if rows is None else np.asarray(rows)[pick]
    sub = np.asarray(A[idx], dtype=np.float64)
    return float(np.mean(np.einsum("ij,ij->i", sub, sub)))
