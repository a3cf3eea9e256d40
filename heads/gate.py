"""Gates: the mixture weights f(x) in the simplex, from the prompt feature psi(x).

A gate is a plain dict of numpy arrays (the format other code, e.g. a router, relies on):

* ``"linear"`` (the context gate of the official MiCRo code): ``{"coef": (K, p), "intercept": (K,)}``,
  logits ``a = X @ coef.T + intercept``.
* ``"mlp"`` (the paper's one-hidden-layer gate, ReLU): ``{"hidden_coef": (H, p), "hidden_intercept": (H,),
  "coef": (K, H), "intercept": (K,)}``, logits ``a = relu(X @ hidden_coef.T + hidden_intercept) @ coef.T + intercept``.
* ``"static"`` (Static Mixture baseline): ``{"logits": (K,)}``, the same logits for every row; ``X`` may be None.

Mixture weights are ``softmax(a)`` per row. :func:`gate_logits_torch` is the autograd twin of
:func:`gate_logits` (same dict keys, torch tensors) so a router can train the same gate with torch.

The fused-pass building blocks of the EM fit (forward/backward without autograd) are in :mod:`heads.kernels`.
Only the weight matrices (``coef``, ``hidden_coef``) carry the L2 penalty; intercepts and static logits do not.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from .chunked import matmul_t
from .defaults import GATE_HIDDEN

GATE_KINDS = ("linear", "mlp", "static")

#: parameter order inside the flat parameter vector, per gate kind
GATE_KEYS = {
    "linear": ("coef", "intercept"),
    "mlp": ("hidden_coef", "hidden_intercept", "coef", "intercept"),
    "static": ("logits",),
}
#: keys penalised by the L2 term
PENALISED = ("coef", "hidden_coef")


def gate_kind(params: Dict[str, np.ndarray]) -> str:
    """Infer the gate kind ("linear", "mlp" or "static") from the dict's keys."""
    if "logits" in params:
        return "static"
    if "hidden_coef" in params:
        return "mlp"
    if "coef" in params:
        return "linear"
    raise ValueError(f"not a gate parameter dict: keys {sorted(params)}")


def n_gate_components(params: Dict[str, np.ndarray]) -> int:
    """Number of mixture components K of a gate."""
    return int(params["logits"].shape[0] if "logits" in params else params["intercept"].shape[0])


def init_gate_params(
    kind: str,
    n_components: int,
    n_prompt: int = 0,
    hidden: Optional[int] = None,
    rng: Optional[np.random.Generator] = None,
    scale: float = 0.0,
) -> Dict[str, np.ndarray]:
    """A gate with uniform weights (zero output layer). The MLP's hidden layer is random (He-style) so it
    is not stuck at the ReLU's symmetric point; ``scale`` > 0 also randomises the output layer."""
    rng = np.random.default_rng(0) if rng is None else rng
    K = n_components
    if kind == "static":
        return {"logits": np.zeros(K)}
    if kind == "linear":
        return {
            "coef": scale * rng.standard_normal((K, n_prompt)) / np.sqrt(max(n_prompt, 1)),
            "intercept": np.zeros(K),
        }
    if kind == "mlp":
        H = int(hidden or GATE_HIDDEN)
        return {
            "hidden_coef": rng.standard_normal((H, n_prompt)) * np.sqrt(2.0 / max(n_prompt, 1)),
            "hidden_intercept": np.zeros(H),
            "coef": scale * rng.standard_normal((K, H)) / np.sqrt(H),
            "intercept": np.zeros(K),
        }
    raise ValueError(f"unknown gate kind {kind!r}; expected one of {GATE_KINDS}")


def gate_logits(params: Dict[str, np.ndarray], X: Optional[np.ndarray], n_rows: Optional[int] = None) -> np.ndarray:
    """Gate logits (N, K). For a static gate ``X`` may be None (then ``n_rows`` gives N, default 1)."""
    kind = gate_kind(params)
    if kind == "static":
        n = X.shape[0] if X is not None else (1 if n_rows is None else int(n_rows))
        return np.broadcast_to(np.asarray(params["logits"], dtype=np.float64), (n, params["logits"].shape[0])).copy()
    X = np.asarray(X)
    if kind == "linear":
        return matmul_t(X, params["coef"]) + params["intercept"]
    h = np.maximum(matmul_t(X, params["hidden_coef"]) + params["hidden_intercept"], 0.0)
    return h @ params["coef"].T + params["intercept"]


def log_softmax(a: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of an (N, K) array (stable)."""
    m = a.max(axis=1, keepdims=True)
    s = a - m
    return s - np.log(np.exp(s).sum(axis=1, keepdims=True))


def gate_log_weights(
    params: Dict[str, np.ndarray], X: Optional[np.ndarray], n_rows: Optional[int] = None
) -> np.ndarray:
    """log f(x): row-wise log-softmax of :func:`gate_logits`, (N, K)."""
    return log_softmax(gate_logits(params, X, n_rows))


def gate_weights(params: Dict[str, np.ndarray], X: Optional[np.ndarray], n_rows: Optional[int] = None) -> np.ndarray:
    """f(x) in the simplex, (N, K)."""
    return np.exp(gate_log_weights(params, X, n_rows))


def gate_logits_torch(
    params_torch: Dict[str, torch.Tensor], X: Optional[torch.Tensor], n_rows: Optional[int] = None
) -> torch.Tensor:
    """Torch twin of :func:`gate_logits` (differentiable w.r.t. the tensors in ``params_torch``)."""
    if "logits" in params_torch:
        n = X.shape[0] if X is not None else (1 if n_rows is None else int(n_rows))
        return params_torch["logits"].unsqueeze(0).expand(n, -1)
    if "hidden_coef" in params_torch:
        h = torch.relu(
            X.to(params_torch["hidden_coef"].dtype) @ params_torch["hidden_coef"].T + params_torch["hidden_intercept"]
        )
        return h @ params_torch["coef"].T + params_torch["intercept"]
    return X.to(params_torch["coef"].dtype) @ params_torch["coef"].T + params_torch["intercept"]


def params_to_torch(
    params: Dict[str, np.ndarray], dtype=torch.float64, requires_grad: bool = False
) -> Dict[str, torch.Tensor]:
    """Copy a numpy gate dict into torch tensors (e.g. to continue training in a router)."""
    return {k: torch.tensor(np.asarray(v), dtype=dtype, requires_grad=requires_grad) for k, v in params.items()}


def params_from_torch(params_torch: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
    """Back from torch tensors to the numpy gate dict (float64)."""
    return {k: v.detach().cpu().double().numpy().copy() for k, v in params_torch.items()}


def gate_penalty(params: Dict[str, np.ndarray]) -> float:
    """Sum of squares of the penalised gate weights (coef, hidden_coef)."""
    return float(sum(np.sum(np.square(params[k])) for k in PENALISED if k in params))


def gate_shapes(kind: str, n_components: int, n_prompt: int, hidden: Optional[int]) -> List[Tuple[str, tuple]]:
    """(key, shape) in flat-vector order."""
    K, p, H = n_components, n_prompt, int(hidden or GATE_HIDDEN)
    shapes = {
        "coef": (K, p) if kind == "linear" else (K, H),
        "intercept": (K,),
        "hidden_coef": (H, p),
        "hidden_intercept": (H,),
        "logits": (K,),
    }
    return [(k, shapes[k]) for k in GATE_KEYS[kind]]
