"""Score a list of items (each with its own context and user) with one RewardModel: the server's one scoring path.

Rows are grouped by (context, user) and each group is one ``RewardModel.rewards`` call, so the results equal
``RewardModel.rewards`` (and ``micro score``) on the same rows and user.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import MicroError
from pipeline.serve.protocol import Item, RequestError, as_prompt


def load_users(rm, folder: str | Path | None) -> dict:
    """{name: profile} of every ``*.json`` profile in ``folder`` (name = file stem); MicroError on a bad one."""
    from pipeline.route.profiles import load_profile

    if folder is None:
        return {}
    folder = Path(folder)
    if not folder.is_dir():
        raise MicroError(f"--users {folder}: not a folder")
    return {p.stem: load_profile(p, rm.meta) for p in sorted(folder.glob("*.json"))}


def needs_context(rm) -> bool:
    """True when the bundle's gate reads context+prompt (a row needs a context or a user)."""
    return rm.model.gate_kind_ != "static" and rm.meta.get("gate_input") == "context"


def resolve(rm, items: list[Item], users: dict, default_context: str | None, field: str) -> list[tuple]:
    """Per item (context, user name or None, profile or None) after the defaults; RequestError naming the row
    when a user is unknown or the gate needs a context that no one gave. ``field`` is where the user comes from (for errors)."""
    out = []
    gated = needs_context(rm)
    for i, it in enumerate(items):
        if it.user is not None and it.user not in users:
            known = ", ".join(sorted(users)[:10]) or "none loaded (start with --users DIR)"
            raise RequestError(f"unknown user {it.user!r} (known: {known})", f"{field}.user", i)
        context = it.context or default_context
        if gated and it.user is None and not context:
            raise RequestError(
                "the gate reads the user's context with the prompt: give a context or a user "
                "(or start the server with --context)",
                field,
                i,
            )
        out.append((context, it.user, users.get(it.user) if it.user is not None else None))
    return out


def score_items(rm, items: list[Item], keys: list[tuple]) -> dict:
    """{"reward": (N,), "per_head": (N, K), "weights": (N, K), "residual": (N,)} of ``items`` under ``keys``
    (from :func:`resolve`); residual is 0 where the user has none."""
    K = rm.model.coef_.shape[0]
    n = len(items)
    out = {"reward": np.zeros(n), "per_head": np.zeros((n, K)), "weights": np.zeros((n, K)), "residual": np.zeros(n)}
    groups: dict[tuple, list[int]] = {}
    profiles = {}
    for i, (context, _, profile) in enumerate(keys):
        key = (context, id(profile))  # a reload may give a name a new profile: group by the object
        groups.setdefault(key, []).append(i)
        profiles[key] = profile
    for key, rows in groups.items():
        res = rm.rewards(
            [as_prompt(items[i].prompt) for i in rows],
            [items[i].response for i in rows],
            context=key[0],
            profile=profiles[key],
        )
        for name, arr in out.items():
            if name in res:
                arr[rows] = res[name]
    return out
