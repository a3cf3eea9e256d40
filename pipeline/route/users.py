"""The one Stage-2 user model and its file: a user's mixture rule over the K heads plus an optional residual.

Every adapted user (``micro route`` / ``--online`` / ``--adapt``, a routed bundle, a Hedge profile) is one
:class:`UserModel`, one reward:

    r_u(x, a) = sum_k (g f_k(x, c) + omega_k) r_k(x, a) + v . phi(x, a)

``f`` a gate (``gate_params``; None = the bundle's Stage-1 gate) on the features of ``gate_input`` ("prompt": the
prompt alone, "context": the user's context + prompt, "none": a static gate); ``g`` the gate multiplier,
``omega`` (K,) fixed head weights, ``v`` (d,) the residual (None: none). Kinds: "gate" (the Stage-1 gate, g = 1),
"routed" (a router's gate on context + prompt), "weights" (fixed weights, e.g. Hedge: g = 0), "adapted" (g f + omega
+ v).

File (version 2): ``NAME.json`` {format "micro-profile", version, kind, user, bundle, bundle_id, fingerprint_id,
n_heads, rule, gate_input, gate_multiplier, head_weights, context, tensors, provenance fields...} + ``NAME.safetensors``
(``gate.*``, ``v``). Read as well: version-1 Hedge profiles (``profile``: a HedgeProfile state), version-1 adapted
profiles (``kind: adapted``) and routed bundle folders. ``bundle_id`` binds the file to the bundle it was made for.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cache.atomic import atomic_path, write_json_atomic
from pipeline.errors import MicroError, first_line

FORMAT = "micro-profile"
VERSION = 2
KINDS = ("gate", "routed", "weights", "adapted")


class ForeignProfile(UserWarning):
    """A profile without a bundle identity (written before version 2) was loaded: its bundle cannot be checked."""


@dataclass
class UserModel:
    """A user's reward rule over a bundle's heads; see the module docstring. Arrays float64."""

    kind: str
    head_weights: np.ndarray  # (K,) omega
    gate_multiplier: float = 0.0  # g
    gate_params: dict | None = None  # None: the bundle's Stage-1 gate
    gate_input: str = "none"  # prompt | context | none
    v: np.ndarray | None = None  # (d,) residual
    context: str | None = None
    rule: str = "mixture"  # mixture | logit (how pairs are scored; rewards are the same formula)
    user: str | None = None
    provenance: dict = field(default_factory=dict)
    bundle_id: str | None = None
    fingerprint_id: str | None = None

    @property
    def n_heads(self) -> int:
        return int(len(self.head_weights))

    @classmethod
    def stage1(cls, n_heads: int, gate_input: str) -> "UserModel":
        """The bundle's own gate (g = 1, omega = 0): what scoring without a user applies."""
        return cls("gate", np.zeros(n_heads), 1.0, None, gate_input)

    @classmethod
    def weights(cls, w, **kw) -> "UserModel":
        """Fixed mixture weights (K,) (a Hedge profile)."""
        return cls("weights", np.asarray(w, dtype=np.float64), **kw)

    @property
    def reads_gate(self) -> bool:
        return bool(self.gate_multiplier)


def bundle_id(path: str | Path) -> str:
    """Identity of a bundle folder (16 hex digits): sha256 of its tensors (model.safetensors) and of what model.json
    says about the fit (embedder fingerprint, parameters, fitted values, gate input), not of its paths, so a copied
    or moved bundle keeps its identity and a refitted one does not."""
    path = Path(path)
    h = hashlib.sha256()
    p = path / "model.safetensors"
    h.update(p.read_bytes() if p.exists() else b"")
    try:
        meta = json.loads((path / "model.json").read_text())
    except (OSError, ValueError):
        meta = {}
    keep = (
        {k: meta.get(k) for k in ("fingerprint_id", "params", "fitted", "gate_input")} if isinstance(meta, dict) else {}
    )
    h.update(json.dumps(keep, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def save_user(
    path: str | Path, um: UserModel, meta: dict, bundle: str | Path | None, extra: dict | None = None
) -> Path:
    """Write ``um`` as ``path`` (.json) + its tensors (.safetensors) atomically, bound to the bundle folder
    ``bundle`` (``meta`` its model.json); ``extra``: provenance fields kept in the JSON."""
    from safetensors.numpy import save_file

    path = Path(path)
    tensors = {f"gate.{k}": np.ascontiguousarray(a, dtype=np.float32) for k, a in (um.gate_params or {}).items()}
    if um.v is not None and np.any(um.v):
        tensors["v"] = np.ascontiguousarray(um.v, dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tpath = path.with_suffix(".safetensors")
    if tensors:
        with atomic_path(tpath) as tmp:
            save_file(tensors, str(tmp))
    write_json_atomic(
        path,
        {
            "format": FORMAT,
            "version": VERSION,
            "kind": um.kind,
            "user": um.user,
            "bundle": str(Path(bundle).resolve()) if bundle else None,
            "bundle_id": bundle_id(bundle) if bundle else None,
            "fingerprint_id": meta["fingerprint_id"],
            "n_heads": um.n_heads,
            "rule": um.rule,
            "gate_input": um.gate_input if um.gate_multiplier else "none",
            "gate_multiplier": float(um.gate_multiplier),
            "head_weights": [float(x) for x in um.head_weights],
            "context": um.context,
            "tensors": tpath.name if tensors else None,
            **(extra or {}),
        },
    )
    return path


def _numbers(data: dict, key: str, shape: tuple, path: Path, what: str) -> np.ndarray:
    """Field ``key`` of a profile as finite float64 numbers of ``shape``; MicroError naming the file and field."""
    try:
        a = np.asarray(data.get(key), dtype=np.float64)
    except (TypeError, ValueError):
        a = None
    if a is None or a.shape != shape or not np.isfinite(a).all():
        raise MicroError(f"{path}: field '{key}' must be {what}, got {data.get(key)!r}")
    return a


def _tensors(path: Path, name) -> tuple[dict, Path | None]:
    from safetensors.numpy import load_file

    if not name:
        return {}, None
    tpath = path.parent / Path(str(name)).name
    try:
        tensors = load_file(str(tpath))
    except Exception as exc:  # noqa: BLE001 -- missing or corrupt file
        raise MicroError(f"{tpath}: the profile's tensors cannot be read ({first_line(exc)})") from None
    for k, a in tensors.items():
        if not np.isfinite(a).all():
            raise MicroError(f"{tpath}: tensor '{k}' has {int((~np.isfinite(a)).sum())} NaN or infinite values")
    return {k: a.astype(np.float64) for k, a in tensors.items()}, tpath


def _check_owner(data: dict, path: Path, meta: dict, bundle_path: Path | None) -> None:
    n_heads = len(meta["fitted"]["mixture_weights_"])
    if data.get("fingerprint_id") != meta.get("fingerprint_id") or data.get("n_heads") != n_heads:
        raise MicroError(
            f"{path}: profile of an unknown model (built for {data.get('bundle')}, "
            f"embedder {data.get('fingerprint_id')}, {data.get('n_heads')} heads)"
        )
    if bundle_path is None:
        return
    if data.get("bundle_id") is None:
        warnings.warn(
            f"{path}: profile written before version {VERSION} has no bundle identity; "
            "cannot check that it was made for this bundle",
            ForeignProfile,
            stacklevel=3,
        )
    elif data["bundle_id"] != bundle_id(bundle_path):
        raise MicroError(
            f"{path}: field 'bundle_id' is {data['bundle_id']}, but {bundle_path} is bundle "
            f"{bundle_id(bundle_path)} (the profile was made for another bundle: {data.get('bundle')})"
        )


def load_user(
    path: str | Path, meta: dict, bundle_path: str | Path | None = None, coef: np.ndarray | None = None
) -> UserModel:
    """The UserModel of a profile file (any version) or a routed bundle folder, for the bundle ``meta`` (its
    model.json) at ``bundle_path`` with heads ``coef`` (K, d); MicroError naming the file and field when it is
    damaged or made for another bundle."""
    path = Path(path)
    bundle_path = Path(bundle_path) if bundle_path is not None else None
    if path.is_dir():
        return _routed_user(path, meta, coef)
    if not path.exists():
        raise MicroError(f"{path}: no such profile")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MicroError(f"{path}: not a JSON profile ({first_line(exc)})") from None
    if not isinstance(data, dict):
        raise MicroError(f"{path}: not a JSON profile (not a JSON object)")
    if data.get("format") != FORMAT:
        raise MicroError(f"{path}: field 'format' is {data.get('format')!r}, expected {FORMAT!r}")
    version = data.get("version", 1)
    if not isinstance(version, int) or version > VERSION:
        raise MicroError(f"{path}: field 'version' is {version!r}; this micro reads versions 1 to {VERSION}")
    _check_owner(data, path, meta, bundle_path)
    n_heads = len(meta["fitted"]["mixture_weights_"])
    dim = meta["fitted"].get("n_features_in_")
    prov = {k: data[k] for k in ("source", "adapt", "choice", "prior", "budget", "seed") if k in data}
    common = dict(user=data.get("user"), provenance=prov, bundle_id=data.get("bundle_id"))
    common["fingerprint_id"] = data.get("fingerprint_id")
    kind = data.get("kind")
    if kind is None:  # version 1 Hedge profile: its state
        return UserModel.weights(_hedge_weights(data, path, n_heads), **common)
    if kind not in KINDS:
        raise MicroError(f"{path}: field 'kind' is {kind!r}, expected one of {', '.join(KINDS)}")
    head_weights = _numbers(data, "head_weights", (n_heads,), path, f"a list of {n_heads} numbers (one per head)")
    multiplier = float(_numbers(data, "gate_multiplier", (), path, "a number"))
    tensors, tpath = _tensors(path, data.get("tensors"))
    gate = {k[5:]: a for k, a in tensors.items() if k.startswith("gate.")}
    gate_input = data.get("gate_input", "none")
    if gate_input not in ("prompt", "context", "none"):
        raise MicroError(f"{path}: field 'gate_input' is {gate_input!r}, expected prompt, context or none")
    if multiplier and not gate and gate_input != "none":
        raise MicroError(f"{path}: the profile mixes with a gate but its tensors have none")
    if "v" in tensors and dim is not None and tensors["v"].shape != (dim,):
        raise MicroError(
            f"{tpath}: tensor 'v' has shape {list(tensors['v'].shape)}, expected [{dim}] (the model's features)"
        )
    ctx = data.get("context")
    if ctx is not None and not isinstance(ctx, str):
        raise MicroError(f"{path}: field 'context' must be a string or null, got {type(ctx).__name__}")
    return UserModel(
        kind=kind,
        head_weights=head_weights,
        gate_multiplier=multiplier,
        gate_params=gate or None,
        gate_input=gate_input if multiplier else "none",
        v=tensors.get("v"),
        context=ctx,
        rule=data.get("rule") or "mixture",
        **common,
    )


def _hedge_weights(data: dict, path: Path, n_heads: int) -> np.ndarray:
    from heads.profile import HedgeProfile

    try:
        weights = np.asarray(HedgeProfile.from_dict(data["profile"]).weights_, dtype=np.float64)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MicroError(f"{path}: damaged field 'profile' ({type(exc).__name__}: {first_line(exc)})") from None
    if weights.shape != (n_heads,):
        raise MicroError(f"{path}: field 'profile' has {weights.size} head weights, the model has {n_heads} heads")
    if not np.isfinite(weights).all():
        raise MicroError(f"{path}: field 'profile' has NaN or infinite head weights")
    return weights


def _routed_user(path: Path, meta: dict, coef: np.ndarray | None) -> UserModel:
    """A routed bundle folder as the user its router serves (its gate on context + prompt over the same heads)."""
    from pipeline.core.bundle import load_bundle

    est, rmeta = load_bundle(path)
    if "routed_from" not in rmeta:
        raise MicroError(f"{path}: a bundle folder but not a routed bundle (no 'routed_from'): give a profile JSON")
    if rmeta.get("fingerprint_id") != meta.get("fingerprint_id"):
        raise MicroError(f"{path}: routed bundle of another embedder ({rmeta.get('fingerprint_id')})")
    if coef is None or coef.shape != est.coef_.shape or not np.allclose(coef, est.coef_, rtol=0, atol=1e-7):
        raise MicroError(f"{path}: routed bundle of other heads (routed from {rmeta['routed_from']})")
    params = {k: np.asarray(a, dtype=np.float64) for k, a in est.gate_params_.items()}
    static = est.gate_kind_ == "static"
    return UserModel(
        "routed",
        np.zeros(est.coef_.shape[0]),
        1.0,
        params,
        "none" if static else "context",
        provenance={"source": "route", "routed_bundle": str(path)},
        fingerprint_id=rmeta.get("fingerprint_id"),
    )
