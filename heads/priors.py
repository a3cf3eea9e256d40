"""Prior logits for adapting to a new user: combinations of the frozen Stage-1 heads (no file I/O).

Every prior is a (possibly per-pair) weighting of the K head logits, m_i = sum_k omega_ik z_ik with
z_ik = w_k . Delta_i, i.e. the reward difference of the weighted heads (logit space):

* ``none``   omega = 0 (a per-user head alone);
* ``gate``   omega_i = f(x_i, c_i), the (Stage-1 or routed) gate's weights for the pair: the mixture's reward;
* ``hyre``   omega = the HyRe posterior over heads from the user's labelled pairs (:mod:`heads.hyre`);
* ``best``   omega = one-hot on the head with the highest log-likelihood on the user's labelled pairs.

``hyre`` and ``best`` are fitted on the user's pairs, so for cross-validation :func:`fold_priors` refits them
without each fold (rows 0..F-1) and on all pairs (row F).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .hyre import hyre_weights
from .laplace import logsig

__all__ = ["PRIORS", "prior_weights", "prior_logits", "fold_priors"]

PRIORS = ("none", "gate", "hyre", "best")


def prior_weights(kind: str, z: np.ndarray, rows: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
    """Fixed head weights omega (K,) of a fitted prior from the labelled pairs ``z[rows]`` (n, K) head logits;
    None for ``gate`` (per-pair gate weights)."""
    z = np.asarray(z, dtype=np.float64)
    zr = z if rows is None else z[rows]
    if kind == "none":
        return np.zeros(z.shape[1])
    if kind == "gate":
        return None
    if kind == "hyre":
        return hyre_weights(zr)
    if kind == "best":
        w = np.zeros(z.shape[1])
        w[int(np.argmax(logsig(zr).sum(axis=0)))] = 1.0
        return w
    raise ValueError(f"unknown prior {kind!r}; expected one of {PRIORS}")


def prior_logits(z: np.ndarray, omega: Optional[np.ndarray], gate: Optional[np.ndarray] = None) -> np.ndarray:
    """m (n,) = sum_k omega_k z_k, or sum_k gate_ik z_ik when ``omega`` is None (``gate`` (n, K))."""
    z = np.asarray(z, dtype=np.float64)
    if omega is None:
        if gate is None:
            raise ValueError("the gate prior needs the gate weights (n, K)")
        return np.einsum("ik,ik->i", np.asarray(gate, dtype=np.float64), z)
    return z @ omega


def fold_priors(kinds: Sequence[str], z: np.ndarray, folds: list, gate: Optional[np.ndarray] = None) -> dict:
    """{kind: (F + 1, n) prior logits}: row j fitted without fold j's rows, row F fitted on all n pairs."""
    n = z.shape[0]
    out = {}
    for kind in kinds:
        rows = []
        for te in [*folds, np.array([], dtype=int)]:
            train = np.setdiff1d(np.arange(n), te)
            rows.append(prior_logits(z, prior_weights(kind, z, train), gate))
        out[kind] = np.stack(rows)
    return out
