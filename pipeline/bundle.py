"""Model bundles: safetensors (heads, gate, projection) + JSON (hyperparameters, fingerprint, history).

    MODEL_DIR/model.safetensors  coef (K, d), coef_fit, projection (optional), gate.<name> arrays
    MODEL_DIR/model.json         format, class, params, fitted scalars, embedder fingerprint, metrics, timings

No pickle: every array is a safetensors tensor, everything else JSON.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np

from cache.atomic import atomic_path, write_json_atomic
from pipeline.errors import MicroError

FORMAT = "micro-bundle"
VERSION = 1
_FITTED_SCALARS = ("gate_kind_", "n_features_in_", "n_prompt_features_in_", "objective_", "converged_", "n_iter_",
                   "best_init_", "init_used_", "fit_time_", "mixture_weights_", "objective_history_",
                   "restart_objectives_", "collapsed_pairs_", "l2_", "gate_l2_", "dim_", "gate_dim_", "temperature_",
                   "selection_")


def _model_classes() -> dict:
    from heads.mixture import MixtureBT

    return {"MixtureBT": MixtureBT}


def _jsonable(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def model_params(model) -> dict:
    """Constructor parameters of ``model`` that are JSON-able (callbacks dropped)."""
    sig = inspect.signature(type(model).__init__)
    out = {}
    for name in sig.parameters:
        if name == "self" or not hasattr(model, name):
            continue
        v = getattr(model, name)
        if v is None or isinstance(v, (bool, int, float, str, np.integer, np.floating)):
            out[name] = _jsonable(v)
    return out


def save_bundle(model, out: str | Path, meta: dict) -> Path:
    """Write ``model`` (a fitted MixtureBT) and ``meta`` (fingerprint, metrics, ...) to ``out``."""
    from safetensors.numpy import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {"coef": np.ascontiguousarray(model.coef_, dtype=np.float32),
               "coef_fit": np.ascontiguousarray(model.coef_fit_, dtype=np.float32)}
    if getattr(model, "projection_", None) is not None:
        tensors["projection"] = np.ascontiguousarray(model.projection_, dtype=np.float32)
    for k, v in model.gate_params_.items():
        tensors[f"gate.{k}"] = np.ascontiguousarray(v, dtype=np.float32)
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(tensors, str(tmp))
    fitted = {k: _jsonable(getattr(model, k)) for k in _FITTED_SCALARS if hasattr(model, k)}
    write_json_atomic(out / "model.json", {"format": FORMAT, "version": VERSION, "class": type(model).__name__,
                                           "params": model_params(model), "fitted": fitted, **meta})
    return out


def read_meta(path: str | Path) -> dict:
    """model.json of a bundle folder."""
    path = Path(path)
    meta_path = path / "model.json"
    if not meta_path.exists():
        raise MicroError(f"{path}: not a model bundle (no model.json); create one with `micro fit RUN_DIR --out {path}`")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise MicroError(f"{meta_path}: field 'format' is {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load_bundle(path: str | Path):
    """(model, meta): a ready-to-predict model rebuilt from a bundle folder."""
    from safetensors.numpy import load_file

    path = Path(path)
    meta = read_meta(path)
    cls = _model_classes().get(meta["class"])
    if cls is None:
        raise MicroError(f"{path}/model.json: unknown model class {meta['class']!r}")
    try:
        tensors = load_file(str(path / "model.safetensors"))
    except Exception as exc:  # noqa: BLE001 - missing or corrupt file
        raise MicroError(f"{path}/model.safetensors: cannot be read ({exc})") from None
    model = cls(**meta["params"])
    for k, v in meta["fitted"].items():
        setattr(model, k, np.asarray(v) if k == "mixture_weights_" else v)
    model.coef_ = tensors["coef"].astype(np.float64)
    model.coef_fit_ = tensors["coef_fit"].astype(np.float64)
    model.projection_ = tensors["projection"].astype(np.float64) if "projection" in tensors else None
    model.gate_params_ = {k[5:]: v.astype(np.float64) for k, v in tensors.items() if k.startswith("gate.")}
    return model, meta


def check_fingerprint(meta: dict, run: dict, where: str) -> None:
    """Error naming both fingerprints when a bundle is applied to features of another embedder."""
    a, b = meta.get("fingerprint_id"), run.get("fingerprint_id")
    if a != b:
        raise MicroError(f"{where}: the bundle was fitted on features of embedder {a} "
                         f"({json.dumps(meta.get('fingerprint'), sort_keys=True)}) but these features come from "
                         f"embedder {b} ({json.dumps(run.get('fingerprint'), sort_keys=True)}); re-embed with the "
                         "bundle's embedder or refit")
