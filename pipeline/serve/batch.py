"""Score a list of items (each with its own context and user) with one RewardModel: the server's one scoring path.

One ``RewardModel.rewards`` call with per-row contexts and users, so the results equal ``RewardModel.rewards``
(and ``micro score``) on the same rows and user, and a batch of requests is one embedder pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import MicroError
from pipeline.serve.protocol import Item, RequestError, as_prompt


def load_users(rm, folder: str | Path | None) -> dict:
    """{name: UserModel} of every ``*.json`` profile in ``folder`` (name = file stem); MicroError on a bad one."""
    if folder is None:
        return {}
    folder = Path(folder)
    if not folder.is_dir():
        raise MicroError(f"--users {folder}: not a folder")
    return {p.stem: rm.load_user(p) for p in sorted(folder.glob("*.json"))}


def resolve(rm, items: list[Item], users: dict, default_context: str | None, field: str) -> list[tuple]:
    """Per item (context, UserModel or None) after the defaults; RequestError naming the row when a user is
    unknown or the gate needs a context that no one gave. ``field`` is where the user comes from (for errors)."""
    out = []
    for i, it in enumerate(items):
        if it.user is not None and it.user not in users:
            known = ", ".join(sorted(users)[:10]) or "none loaded (start with --users DIR)"
            raise RequestError(f"unknown user {it.user!r} (known: {known})", f"{field}.user", i)
        context = it.context or default_context
        user = users[it.user] if it.user is not None else None
        try:
            rm.check_context(context, user)
        except MicroError:
            raise RequestError(
                "the gate reads the user's context with the prompt: give a context or a user "
                "(or start the server with --context)",
                field,
                i,
            ) from None
        out.append((context, user))
    return out


def score_items(rm, items: list[Item], keys: list[tuple]) -> dict:
    """{"reward": (N,), "per_head": (N, K), "weights": (N, K), "residual": (N,)} of ``items`` under ``keys``
    (from :func:`resolve`); residual is 0 where the user has none."""
    if not items:
        K = rm.n_heads
        return {
            "reward": np.zeros(0),
            "per_head": np.zeros((0, K)),
            "weights": np.zeros((0, K)),
            "residual": np.zeros(0),
        }
    return rm.rewards(
        [as_prompt(it.prompt) for it in items],
        [it.response for it in items],
        context=[k[0] for k in keys],
        user=[k[1] for k in keys],
    )
