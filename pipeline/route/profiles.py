"""User profiles, the files ``micro score --user`` applies: online Hedge profiles (a weight vector over the frozen
heads, updated pair by pair, no training) and adapted profiles (``micro route --adapt``: the gate a user mixes with
and a residual vector v, see :mod:`pipeline.route.adapt`)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cache.atomic import atomic_path, write_json_atomic
from heads.defaults import HEDGE_TAU
from pipeline.core.model import Model
from pipeline.errors import MicroError, first_line

FORMAT = "micro-profile"
KIND = "adapted"


@dataclass
class ProfileResult:
    """The saved profile and its learning curve (held-out accuracy after each observed pair)."""

    user: str
    path: Path
    weights: np.ndarray
    curve: np.ndarray  # (T+1,) accuracy before any pair, after 1, ..., after T pairs
    n_stream: int
    n_heldout: int
    prior: str


def safe_name(user: str) -> str:
    """A file/folder name for ``user`` that stays inside the output folder (no '/', no leading dots); names
    changed by the cleaning get a short hash, so 'a/b' and 'a_b' do not share files."""
    clean = re.sub(r"[^A-Za-z0-9._-]", "_", str(user)).lstrip(".") or "_"
    if clean == user:
        return clean
    return f"{clean}-{hashlib.sha256(str(user).encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def build_profile(
    bundle: str | Path, user_data: str | Path, user: str, out_dir: str | Path, *, tau: float = HEDGE_TAU, log=print
) -> ProfileResult:
    """Hedge profile of ``user`` from their 'train' pairs in stream order, scored on their 'test' pairs."""
    from heads.profile import HedgeProfile

    model = Model.load(bundle)
    out_dir = Path(out_dir)
    run = model.embed_user_data(user_data, out_dir / "work" / safe_name(user), log=log, user=user)  # user's pairs
    stream, heldout = run.part("train"), run.part("test")
    if stream.n == 0:
        raise MicroError(f"{user_data}: user '{user}' has no pairs to learn from (split == 'train')")
    gate_x = model.gate_features(stream)
    reads = "contexts" if model.meta.get("gate_input") == "context" else "prompts"
    if gate_x is not None and (reads == "prompts" or stream.has_context.any()):
        prior = model.estimator.gate_weights(gate_x).mean(axis=0)
        prior_name = f"Stage-1 gate on the user's {reads}"
    else:
        prior, prior_name = None, "uniform"
    prof = HedgeProfile(tau=tau, prior=prior, n_heads=model.n_heads)
    z_stream = model.head_logits(stream)
    curve = np.asarray(prof.learning_curve(z_stream, model.head_logits(heldout))) if heldout.n else np.array([])
    prof.update(z_stream)
    path = out_dir / f"{safe_name(user)}.json"
    write_json_atomic(
        path,
        {
            "format": FORMAT,
            "user": user,
            "bundle": str(Path(bundle).resolve()),
            "fingerprint_id": model.meta["fingerprint_id"],
            "n_heads": model.n_heads,
            "prior": prior_name,
            "profile": prof.to_dict(),
            "learning_curve": curve.tolist(),
            "n_heldout": heldout.n,
        },
    )
    return ProfileResult(
        user=user,
        path=path,
        weights=np.asarray(prof.weights_),
        curve=curve,
        n_stream=stream.n,
        n_heldout=heldout.n,
        prior=prior_name,
    )


def load_profile(path: str | Path, meta: dict):
    """A saved HedgeProfile (or an :class:`AdaptedProfile`); error if it belongs to another
    model."""
    from heads.profile import HedgeProfile

    path = Path(path)
    if not path.exists():
        raise MicroError(f"{path}: no such profile")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MicroError(f"{path}: not a JSON profile ({exc})") from None
    if not isinstance(data, dict):
        raise MicroError(f"{path}: not a JSON profile (not a JSON object)")
    if data.get("format") != FORMAT:
        raise MicroError(f"{path}: field 'format' is {data.get('format')!r}, expected {FORMAT!r}")
    n_heads = len(meta["fitted"]["mixture_weights_"])
    if data.get("fingerprint_id") != meta.get("fingerprint_id") or data.get("n_heads") != n_heads:
        raise MicroError(
            f"{path}: profile of an unknown model (built for {data.get('bundle')}, "
            f"embedder {data.get('fingerprint_id')}, {data.get('n_heads')} heads)"
        )
    if data.get("kind") == KIND:  # micro route --adapt / --online with a residual
        return load_adapted(data, path, n_heads, meta["fitted"].get("n_features_in_"))
    try:
        prof = HedgeProfile.from_dict(data["profile"])
        weights = np.asarray(prof.weights_)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MicroError(f"{path}: damaged field 'profile' ({type(exc).__name__}: {first_line(exc)})") from None
    if weights.shape != (n_heads,):
        raise MicroError(f"{path}: field 'profile' has {weights.size} head weights, the model has {n_heads} heads")
    return prof


def save_profile(
    path: Path,
    meta: dict,
    bundle,
    user: str,
    *,
    rule: str,
    gate_params: dict | None,
    gate_input: str,
    gate_multiplier: float,
    head_weights: np.ndarray,
    v: np.ndarray | None,
    context: str | None,
    extra: dict,
) -> Path:
    """Write the profile JSON and its tensors (gate parameters, residual v) atomically."""
    from safetensors.numpy import save_file

    tensors = {f"gate.{k}": np.ascontiguousarray(a, dtype=np.float32) for k, a in (gate_params or {}).items()}
    if v is not None and np.any(v):
        tensors["v"] = np.ascontiguousarray(v, dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tpath = path.with_suffix(".safetensors")
    if tensors:
        with atomic_path(tpath) as tmp:
            save_file(tensors, str(tmp))
    write_json_atomic(
        path,
        {
            "format": FORMAT,
            "kind": KIND,
            "user": user,
            "bundle": str(Path(bundle).resolve()),
            "fingerprint_id": meta["fingerprint_id"],
            "n_heads": int(len(head_weights)),
            "rule": rule,
            "gate_input": gate_input if gate_multiplier else "none",
            "gate_multiplier": float(gate_multiplier),
            "head_weights": [float(x) for x in head_weights],
            "context": context,
            "tensors": tpath.name if tensors else None,
            **extra,
        },
    )
    return path


@dataclass
class AdaptedProfile:
    """A loaded adapted profile: mixture weights g f(x, c) + omega and residual v (see the module docstring)."""

    rule: str
    gate_params: dict
    gate_input: str
    gate_multiplier: float
    head_weights: np.ndarray
    v: np.ndarray | None
    context: str | None


def _numbers(data: dict, key: str, shape: tuple, path: Path, what: str) -> np.ndarray:
    """Field ``key`` of a profile as finite float64 numbers of ``shape``; MicroError naming the file and field."""
    try:
        a = np.asarray(data.get(key), dtype=np.float64)
    except (TypeError, ValueError):
        a = None
    if a is None or a.shape != shape or not np.isfinite(a).all():
        raise MicroError(f"{path}: field '{key}' must be {what}, got {data.get(key)!r}")
    return a


def load_adapted(data: dict, path: Path, n_heads: int, dim: int | None) -> AdaptedProfile:
    """The AdaptedProfile of a profile JSON ``data`` read from ``path``, for a model of ``n_heads`` heads on
    ``dim``-dimensional features; MicroError naming the file and field that do not fit."""
    from safetensors.numpy import load_file

    head_weights = _numbers(data, "head_weights", (n_heads,), path, f"a list of {n_heads} numbers (one per head)")
    multiplier = float(_numbers(data, "gate_multiplier", (), path, "a number"))
    tensors = {}
    if data.get("tensors"):
        tpath = path.parent / Path(data["tensors"]).name
        try:
            tensors = load_file(str(tpath))
        except Exception as exc:  # noqa: BLE001 -- missing or corrupt file
            raise MicroError(f"{tpath}: the profile's tensors cannot be read ({exc})") from None
    gate = {k[5:]: v.astype(np.float64) for k, v in tensors.items() if k.startswith("gate.")}
    if multiplier and not gate and data.get("gate_input") != "none":
        raise MicroError(f"{path}: the profile mixes with a gate but its tensors have none")
    if "v" in tensors and dim is not None and tensors["v"].shape != (dim,):
        raise MicroError(
            f"{tpath}: tensor 'v' has shape {list(tensors['v'].shape)}, expected [{dim}] (the model's features)"
        )
    return AdaptedProfile(
        rule=data.get("rule"),
        gate_params=gate,
        gate_input=data.get("gate_input", "none"),
        gate_multiplier=multiplier,
        head_weights=head_weights,
        v=tensors["v"].astype(np.float64) if "v" in tensors else None,
        context=data.get("context"),
    )
