"""The math: Bradley-Terry mixture heads, gates, routers (numpy/torch, no file I/O).

The names below are imported on first use (PEP 562), so ``import heads.defaults`` (the CLI's defaults) does not
load torch."""

from importlib import import_module

_EXPORTS = {
    "heads.align": ("align_heads", "cosine_matrix", "mean_aligned_cosine"),
    "heads.baselines": ("OracleBT", "SharedBase", "fit_single_bt"),
    "heads.objective": ("objective_and_grad",),
    "heads.gate": (
        "gate_kind",
        "gate_log_weights",
        "gate_logits",
        "gate_logits_torch",
        "gate_weights",
        "init_gate_params",
        "params_from_torch",
        "params_to_torch",
    ),
    "heads.metrics": ("accuracy", "expected_calibration_error", "log_likelihood"),
    "heads.mixture": ("MixtureBT", "collapsed_pairs"),
    "heads.synthetic": ("bayes_accuracy", "make_helpsteer2_like", "make_mixture"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'heads' has no attribute {name!r}")
