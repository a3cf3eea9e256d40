"""The math: Bradley-Terry mixture heads, gates, routers (numpy/torch, no file I/O)."""
from .align import align_heads, cosine_matrix, mean_aligned_cosine
from .baselines import OracleBT, SharedBase, fit_single_bt
from .objective import objective_and_grad
from .gate import (gate_kind, gate_log_weights, gate_logits, gate_logits_torch, gate_weights, init_gate_params,
                   params_from_torch, params_to_torch)
from .metrics import accuracy, expected_calibration_error, log_likelihood
from .mixture import MixtureBT, collapsed_pairs
from .synthetic import bayes_accuracy, make_helpsteer2_like, make_mixture

__all__ = [
    "MixtureBT", "SharedBase", "OracleBT", "fit_single_bt", "objective_and_grad", "collapsed_pairs",
    "gate_kind", "gate_logits", "gate_log_weights", "gate_weights", "gate_logits_torch", "init_gate_params",
    "params_to_torch", "params_from_torch",
    "align_heads", "mean_aligned_cosine", "cosine_matrix",
    "accuracy", "log_likelihood", "expected_calibration_error",
    "make_mixture", "make_helpsteer2_like", "bayes_accuracy",
]
