"""Model bundles: safetensors (heads, gate, projection) + JSON (hyperparameters, fingerprint, history).

    MODEL_DIR/model.safetensors  coef (K, d), coef_fit, projection (optional), gate.<name> arrays
    MODEL_DIR/model.json         format, class, params, fitted scalars, embedder fingerprint, metrics, timings

No pickle: every array is a safetensors tensor, everything else JSON.
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import numpy as np

from cache.atomic import atomic_paths
from cache.store import DTYPES
from pipeline.core.run import check_fields, read_folder_json
from pipeline.errors import InputError, MicroError, first_line

FORMAT = "micro-bundle"
VERSION = 1
_FITTED_SCALARS = (
    "gate_kind_",
    "n_features_in_",
    "n_prompt_features_in_",
    "objective_",
    "converged_",
    "n_iter_",
    "best_init_",
    "init_used_",
    "fit_time_",
    "mixture_weights_",
    "objective_history_",
    "restart_objectives_",
    "collapsed_pairs_",
    "n_identical_",
    "l2_",
    "gate_l2_",
    "dim_",
    "gate_dim_",
    "temperature_",
    "selection_",
)


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


#: parameters of bundles written before the solver object (0.1): they become the solver
LEGACY_SOLVER = {
    "optimizer": "name",
    "m_steps": "m_steps",
    "init_m_steps": "init_m_steps",
    "memory": "memory",
    "accept": "accept",
    "screen_iter": "screen_iter",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "lr",
}


def model_params(model) -> dict:
    """``model.get_params()`` as JSON (a solver object as its dict; callbacks dropped)."""
    out = {}
    for name, v in model.get_params(deep=False).items():
        if hasattr(v, "to_dict"):
            out[name] = v.to_dict()
        elif v is None or isinstance(v, (bool, int, float, str, np.integer, np.floating)):
            out[name] = _jsonable(v)
    return out


def _params_in(params: dict) -> dict:
    """Constructor arguments from stored params: the solver rebuilt, legacy solver fields folded into it."""
    from heads.solvers import make_solver

    params = dict(params)
    legacy = {LEGACY_SOLVER[k]: params.pop(k) for k in list(params) if k in LEGACY_SOLVER}
    params.pop("max_kmeans_dim", None)
    if legacy and "solver" not in params:
        name = legacy.get("name", "em")
        keep = ("m_steps", "init_m_steps", "memory", "accept", "screen_iter") + (
            ("epochs", "batch_size", "lr") if name == "adamw" else ()
        )
        params["solver"] = {"name": name, **{k: v for k, v in legacy.items() if k in keep}}
    if isinstance(params.get("solver"), dict):
        params["solver"] = make_solver(params["solver"])
    return params


def save_bundle(model, out: str | Path, meta: dict) -> Path:
    """Write ``model`` (a fitted MixtureBT) and ``meta`` (fingerprint, metrics, ...) to ``out``."""
    from safetensors.numpy import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {
        "coef": np.ascontiguousarray(model.coef_, dtype=np.float32),
        "coef_fit": np.ascontiguousarray(model.coef_fit_, dtype=np.float32),
    }
    if getattr(model, "projection_", None) is not None:
        tensors["projection"] = np.ascontiguousarray(model.projection_, dtype=np.float32)
    for k, v in model.gate_params_.items():
        tensors[f"gate.{k}"] = np.ascontiguousarray(v, dtype=np.float32)
    fitted = {k: _jsonable(getattr(model, k)) for k in _FITTED_SCALARS if hasattr(model, k)}
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "class": type(model).__name__,
        "params": model_params(model),
        "fitted": fitted,
        **meta,
    }
    with atomic_paths(out / "model.safetensors", out / "model.json") as (tmp_st, tmp_json):
        save_file(tensors, str(tmp_st))  # both files are renamed into place only after both are written
        tmp_json.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    return out


def read_meta(path: str | Path) -> dict:
    """model.json of a bundle folder; InputError naming the file and what is wrong when it is damaged."""
    path = Path(path)
    meta_path = path / "model.json"
    meta = read_folder_json(
        path,
        "model.json",
        is_file="not a model bundle folder (model.json + model.safetensors)",
        missing=f"not a model bundle (no model.json); create one with `micro fit RUN_DIR --out {path}`",
        repair="refit with `micro fit`",
    )
    if meta.get("format") != FORMAT:
        raise MicroError(f"{meta_path}: field 'format' is {meta.get('format')!r}, expected {FORMAT!r}")
    check_fields(meta, {"class": str, "params": dict, "fitted": dict, "fingerprint_id": str}, meta_path)
    check_fields(meta, {"fingerprint": dict, "embedder": dict}, meta_path, "refit with `micro fit`")
    for where, doc, checks in (
        ("", meta, _META),
        ("fitted.", meta["fitted"], _FITTED),
        ("embedder.", meta["embedder"], _EMBEDDER),
    ):
        for key, (what, ok, required) in checks.items():
            if (key in doc or required) and not ok(doc.get(key)):
                got = "missing" if key not in doc else f"{json.dumps(doc[key])[:60]}"
                raise InputError(f"{meta_path}: field '{where}{key}' is {got}, expected {what}; refit with `micro fit`")
    return meta


def _integer(low: int):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _number(low: float, open_low: bool = False):
    def ok(v) -> bool:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            return False
        return v > low if open_low else v >= low

    return ok


def _optional(check):
    return lambda v: v is None or check(v)


def _text(v) -> bool:
    return isinstance(v, str)


_NUMBERS = lambda v: isinstance(v, list) and all(_number(-math.inf)(x) for x in v)  # noqa: E731
#: model.json fields read when the bundle is used: (what is expected, check, required)
_META = {
    "gate_input": ("one of 'prompt', 'context', 'none'", lambda v: v in ("prompt", "context", "none"), False),
    "routed_from": ("a path (string) or null", _optional(_text), False),
    "baseline": ("a string or null", _optional(_text), False),
    "groups": ("a list of group names", lambda v: isinstance(v, list) and all(map(_text, v)), False),
}
_FITTED = {
    "n_features_in_": ("an integer >= 1", _integer(1), True),
    "n_prompt_features_in_": ("an integer >= 0", _integer(0), True),
    "temperature_": ("a finite number > 0", _number(0.0, open_low=True), False),
    "gate_kind_": ("a string", _text, False),
    "mixture_weights_": ("a list of finite numbers >= 0", lambda v: _NUMBERS(v) and min(v, default=0) >= 0, False),
    "l2_": ("a finite number >= 0", _number(0.0), False),
    "gate_l2_": ("a finite number >= 0", _number(0.0), False),
    "dim_": ("an integer >= 0", _integer(0), False),
    "gate_dim_": ("an integer >= 0", _integer(0), False),
    "selection_": ("an object", lambda v: isinstance(v, dict), False),
}
_EMBEDDER = {
    "backend": ("a backend name (string)", lambda v: isinstance(v, str) and bool(v), True),
    "model_path": ("a path (string) or null", _optional(_text), False),
    "max_length": ("an integer >= 1 or null", _optional(_integer(1)), False),
    "cache_dir": ("a folder (string)", lambda v: isinstance(v, str) and bool(v), True),
    "cache_dtype": (f"one of {', '.join(DTYPES)}", lambda v: v in DTYPES, True),
}


def _check_tensors(path: Path, model, tensors: dict) -> None:
    """InputError unless the tensors are finite and their shapes agree with each other and with model.json."""
    where = path / "model.safetensors"
    for name in ("coef", "coef_fit"):
        if name not in tensors:
            raise InputError(f"{where}: tensor '{name}' is missing")
    for name, t in tensors.items():
        if not np.isfinite(t).all():
            raise InputError(f"{where}: tensor '{name}' has non-finite values (NaN/inf); refit with `micro fit`")
    coef, coef_fit, proj = tensors["coef"], tensors["coef_fit"], tensors.get("projection")
    K = coef.shape[0] if coef.ndim == 2 else -1
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    problems = []
    if coef.ndim != 2 or K < 1:
        problems.append(f"coef must be (K, d), got {shapes['coef']}")
    elif int(getattr(model, "n_features_in_", coef.shape[1])) != coef.shape[1]:
        problems.append(f"coef {shapes['coef']} but model.json says n_features_in_ = {model.n_features_in_}")
    want_fit = (K, proj.shape[0]) if proj is not None and proj.ndim == 2 else (K, coef.shape[-1])
    if proj is not None and (proj.ndim != 2 or proj.shape[1] != coef.shape[-1]):
        problems.append(f"projection {shapes['projection']} does not map the {coef.shape[-1]}-dim features")
    if tuple(coef_fit.shape) != want_fit:
        problems.append(f"coef_fit {shapes['coef_fit']} != {want_fit}")
    if int(model.n_components) != K:
        problems.append(f"coef has {K} heads but params.n_components = {model.n_components}")
    gate = {k[5:]: v for k, v in tensors.items() if k.startswith("gate.")}
    p = int(getattr(model, "n_prompt_features_in_", 0) or 0)
    if "logits" in gate:
        if gate["logits"].shape != (K,):
            problems.append(f"gate.logits {shapes['gate.logits']} != ({K},)")
    elif "coef" in gate and "intercept" in gate:
        width = gate["hidden_coef"].shape[0] if "hidden_coef" in gate and gate["hidden_coef"].ndim == 2 else p
        if gate["coef"].ndim != 2 or gate["coef"].shape[0] != K or gate["intercept"].shape != (K,):
            problems.append(
                f"gate.coef {shapes['gate.coef']} / gate.intercept {shapes['gate.intercept']} do not fit {K} heads"
            )
        elif "hidden_coef" in gate and (
            gate["hidden_coef"].ndim != 2
            or gate["hidden_coef"].shape[1] != p
            or gate.get("hidden_intercept", np.empty(0)).shape != (width,)
            or gate["coef"].shape[1] != width
        ):
            problems.append(
                f"gate.hidden_coef {shapes['gate.hidden_coef']} does not read {p}-dim prompt features "
                f"into the {gate['coef'].shape[1]} hidden units of gate.coef"
            )
        elif "hidden_coef" not in gate and gate["coef"].shape[1] != p:
            problems.append(
                f"gate.coef {shapes['gate.coef']} does not read {p}-dim prompt features (n_prompt_features_in_)"
            )
    else:
        problems.append(f"no gate tensors (gate.logits, or gate.coef + gate.intercept); have {sorted(shapes)}")
    weights = np.asarray(getattr(model, "mixture_weights_", np.ones(K) / max(K, 1)))
    if weights.shape != (K,):
        problems.append(f"model.json fitted.mixture_weights_ has shape {weights.shape}, expected ({K},)")
    if problems:
        raise InputError(f"{where}: tensor shapes disagree: {problems[0]}")


def load_bundle(path: str | Path):
    """(model, meta): a ready-to-predict model rebuilt from a bundle folder; InputError if it is damaged."""
    from safetensors.numpy import load_file

    from heads.gate import gate_kind

    path = Path(path)
    meta = read_meta(path)
    cls = _model_classes().get(meta["class"])
    if cls is None:
        raise MicroError(f"{path}/model.json: unknown model class {meta['class']!r}")
    try:
        tensors = load_file(str(path / "model.safetensors"))
    except Exception as exc:  # noqa: BLE001 - missing or corrupt file
        raise MicroError(f"{path}/model.safetensors: cannot be read ({exc})") from None
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    try:
        params = _params_in(meta["params"])
    except (ValueError, TypeError, KeyError) as exc:
        raise InputError(f"{path}/model.json: bad 'params': {first_line(exc)}") from None
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise InputError(f"{path}/model.json: unknown parameter(s) {', '.join(unknown)} in 'params'")
    from heads.validation import validate_params

    model = cls(**params)
    try:
        validate_params(model)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{path}/model.json: bad 'params': {first_line(exc)}") from None
    for k, v in meta["fitted"].items():
        setattr(model, k, np.asarray(v) if k == "mixture_weights_" else v)
    _check_tensors(path, model, tensors)
    model.coef_ = tensors["coef"].astype(np.float64)
    model.coef_fit_ = tensors["coef_fit"].astype(np.float64)
    model.projection_ = tensors["projection"].astype(np.float64) if "projection" in tensors else None
    model.gate_params_ = {k[5:]: v.astype(np.float64) for k, v in tensors.items() if k.startswith("gate.")}
    kind = gate_kind(model.gate_params_)
    if getattr(model, "gate_kind_", kind) != kind:
        raise InputError(
            f"{path}/model.json: fitted.gate_kind_ is {model.gate_kind_!r} but the gate tensors are a {kind!r} gate"
        )
    model.gate_kind_ = kind
    return model, meta


def check_fingerprint(meta: dict, run: dict, where: str) -> None:
    """Error naming both fingerprints when a bundle is applied to features of another embedder."""
    a, b = meta.get("fingerprint_id"), run.get("fingerprint_id")
    if a != b:
        raise MicroError(
            f"{where}: the bundle was fitted on features of embedder {a} "
            f"({json.dumps(meta.get('fingerprint'), sort_keys=True)}) but these features come from "
            f"embedder {b} ({json.dumps(run.get('fingerprint'), sort_keys=True)}); re-embed with the "
            "bundle's embedder or refit"
        )
