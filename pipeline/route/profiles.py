"""Per-user online profiles: a Hedge weight vector over the frozen heads, updated pair by pair (no training)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cache.atomic import write_json_atomic
from heads.defaults import HEDGE_TAU
from pipeline.core.model import Model
from pipeline.errors import MicroError

FORMAT = "micro-profile"


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
    run = model.embed_user_data(user_data, out_dir / "work" / safe_name(user), log=log, user=user)
    if user not in run.group_names:
        raise MicroError(
            f"{user_data}: user '{user}' not found in the 'group' column; users present: "
            f"{', '.join(map(str, run.group_names[:20]))}"
        )
    mine = run.take(run.groups == user)
    stream, heldout = mine.part("train"), mine.part("test")
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
    """A saved HedgeProfile (or an adapted profile, pipeline.route.adapt.AdaptedProfile); error if it belongs to another
    model."""
    from heads.profile import HedgeProfile

    path = Path(path)
    if not path.exists():
        raise MicroError(f"{path}: no such profile")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MicroError(f"{path}: not a JSON profile ({exc})") from None
    if data.get("format") != FORMAT:
        raise MicroError(f"{path}: field 'format' is {data.get('format')!r}, expected {FORMAT!r}")
    n_heads = len(meta["fitted"]["mixture_weights_"])
    if data.get("fingerprint_id") != meta.get("fingerprint_id") or data.get("n_heads") != n_heads:
        raise MicroError(
            f"{path}: profile of an unknown model (built for {data.get('bundle')}, "
            f"embedder {data.get('fingerprint_id')}, {data.get('n_heads')} heads)"
        )
    if data.get("kind") == "adapted":  # micro route --adapt / --online with a residual
        from pipeline.route.adapt import load_adapted

        return load_adapted(data, path)
    return HedgeProfile.from_dict(data["profile"])
