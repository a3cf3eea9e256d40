"""Kernels of the fused EM pass: gate forward/backward without autograd, in the transposed (K, rows) layout.

Reductions over K are fast element-wise numpy ops in that layout. Large (rows x features) matmuls run in torch on
zero-copy views (much faster than numpy's BLAS for the (K, rows) @ (rows, p) product); small ones run in numpy
(torch's intra-op threads cost milliseconds per call on a loaded machine). All (K, rows) work is numpy float64.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
import torch

_TORCH_MIN = 1 << 21  # elements of a chunk above which the matmuls go through torch


def mm_t(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """B @ A.T as float64 (m, rows): B (m, p) float64, A (rows, p) in the data dtype."""
    Bc = np.ascontiguousarray(B, dtype=A.dtype)
    if A.size >= _TORCH_MIN:
        out = (torch.from_numpy(A) @ torch.from_numpy(Bc).T).numpy()
        return np.ascontiguousarray(out.T, dtype=np.float64)
    return np.ascontiguousarray((A @ Bc.T).T, dtype=np.float64)


def accumulate(out: np.ndarray, gT: np.ndarray, A: np.ndarray) -> None:
    """out += gT @ A: gT (m, rows) float64, A (rows, p) and out (m, p) in the data dtype."""
    g = np.ascontiguousarray(gT, dtype=A.dtype)
    if A.size >= _TORCH_MIN:
        torch.from_numpy(out).addmm_(torch.from_numpy(g), torch.from_numpy(A))
    else:
        out += g @ A


def gate_forward(
    kind: str, params: Dict[str, np.ndarray], Xc: Optional[np.ndarray], n: int
) -> Tuple[np.ndarray, object]:
    """Transposed gate logits (K, n) float64 for a chunk of n rows; returns (logits, cache for
    :func:`gate_backward`)."""
    if kind == "static":
        return np.broadcast_to(params["logits"][:, None], (params["logits"].shape[0], n)), None
    if kind == "linear":
        return mm_t(Xc, params["coef"]) + params["intercept"][:, None], None
    h = np.maximum(mm_t(Xc, params["hidden_coef"]) + params["hidden_intercept"][:, None], 0.0)
    return params["coef"] @ h + params["intercept"][:, None], h


def gate_backward(
    kind: str,
    params: Dict[str, np.ndarray],
    Xc: Optional[np.ndarray],
    ga: np.ndarray,
    cache,
    grads: Dict[str, np.ndarray],
) -> None:
    """Accumulate d(objective)/d(gate params) into ``grads`` given ga = d/d(logits), (K, n) float64."""
    if kind == "static":
        grads["logits"] += ga.sum(1)
        return
    grads["intercept"] += ga.sum(1)
    if kind == "linear":
        accumulate(grads["coef"], ga, Xc)
        return
    h = cache
    grads["coef"] += ga @ h.T
    gh = (params["coef"].T @ ga) * (h > 0)
    grads["hidden_intercept"] += gh.sum(1)
    accumulate(grads["hidden_coef"], gh, Xc)


def zero_grads(kind: str, params: Dict[str, np.ndarray], dtype) -> Dict[str, np.ndarray]:
    """Zero gradient accumulators: the X-side matrices in the data dtype, the rest float64."""
    out = {}
    for k, v in params.items():
        big = k == "hidden_coef" or (k == "coef" and kind == "linear")
        out[k] = np.zeros(v.shape, dtype=dtype if big else np.float64)
    return out
