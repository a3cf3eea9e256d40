"""User profiles, the files ``micro score --user`` applies: online Hedge profiles (a weight vector over the frozen
heads, updated pair by pair, no training) and adapted profiles (``micro route --adapt``: the gate a user mixes with
and a residual vector v, see :mod:`pipeline.route.adapt`). Both are :class:`pipeline.route.users.UserModel` files."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from heads.defaults import HEDGE_TAU
from pipeline.core.model import Model
from pipeline.errors import MicroError
from pipeline.route.users import UserModel, load_user, save_user


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


def as_model(bundle) -> Model:
    """A bundle folder or an already loaded :class:`Model` as a Model."""
    return bundle if isinstance(bundle, Model) else Model.load(bundle)


def build_profile(
    bundle: str | Path, user_data: str | Path, user: str, out_dir: str | Path, *, tau: float = HEDGE_TAU, log=print
) -> ProfileResult:
    """Hedge profile of ``user`` from their 'train' pairs in stream order, scored on their 'test' pairs."""
    from heads.profile import HedgeProfile

    model = as_model(bundle)
    bundle = model.path
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
    path = save_user(
        out_dir / f"{safe_name(user)}.json",
        UserModel.weights(prof.weights_, user=user),
        model.meta,
        bundle,
        {
            "source": "route --online",
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


def build_online_hedge(
    bundle, user_data, user: str, out_dir, *, adapt: str = "mixture", tau: float = HEDGE_TAU, log=print
):
    """``micro route --online --adapt mixture``: the Hedge profile (:func:`build_profile`)."""
    return build_profile(bundle, user_data, user, out_dir, tau=tau, log=log)


def load_profile(path: str | Path, meta: dict, bundle_path: str | Path | None = None):
    """The :class:`pipeline.route.users.UserModel` of a profile file (any version); error if it belongs to another
    model."""
    return load_user(path, meta, bundle_path)
