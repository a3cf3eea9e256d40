"""OpenRLHF ``--reward.remote_url`` file: ``reward_func(queries, prompts, labels, **kwargs)``.

Point OpenRLHF at this file and say where the rewards come from in the environment: ``MICRO_REWARD_URL`` (a
`micro serve` URL, one ``/get_reward`` request per call) or ``MICRO_MODEL`` (a bundle scored in-process; optional
``MICRO_USERS`` profiles folder and ``MICRO_CONTEXT`` default context). ``labels`` carry the user: a string is the
context, an object ``{"context": ..., "user": ...}`` names a context and/or a profile. Returns ``rewards``,
``scores`` (sigmoid of the rewards, in 0..1) and ``extra_logs`` (per-head rewards) as torch tensors.
"""

from __future__ import annotations

import os

import numpy as np

from pipeline.errors import MicroError

_LOCAL = {}


def _local(bundle: str):
    from pipeline.integrations.client import InProcess

    if bundle not in _LOCAL:
        _LOCAL[bundle] = InProcess(bundle, os.environ.get("MICRO_USERS"), os.environ.get("MICRO_CONTEXT"))
    return _LOCAL[bundle]


def _tensor(values):
    try:
        import torch
    except ImportError:  # pragma: no cover - OpenRLHF always has torch
        return list(values)
    return torch.tensor(np.asarray(values, dtype=np.float32))


def score(queries, prompts, labels) -> dict:
    """{"reward": (N,), "per_head": (N, K)} of an OpenRLHF batch, from the server or in-process."""
    url, bundle = os.environ.get("MICRO_REWARD_URL"), os.environ.get("MICRO_MODEL")
    body = {"query": list(queries), "prompts": list(prompts), "labels": list(labels) if labels is not None else None}
    if url:
        from pipeline.integrations.client import post_json

        out = post_json(url.rstrip("/") + "/get_reward", body, timeout=300)
        K = sum(1 for k in out["extra_logs"] if k.startswith("reward_head_"))
        per_head = np.asarray([out["extra_logs"][f"reward_head_{k}"] for k in range(K)]).T.reshape(len(queries), K)
        return {"reward": np.asarray(out["rewards"]), "per_head": per_head}
    if not bundle:
        raise MicroError("set MICRO_REWARD_URL (a `micro serve` URL) or MICRO_MODEL (a bundle folder)")
    from pipeline.serve.protocol import parse_openrlhf

    items = parse_openrlhf(body, max_rows=len(body["query"]) or 1)
    rows = [{"prompt": it.prompt, "response": it.response, "context": it.context, "user": it.user} for it in items]
    return _local(bundle).score(rows) if rows else {"reward": np.zeros(0), "per_head": np.zeros((0, 0))}


def reward_func(queries, prompts, labels, **kwargs) -> dict:
    """OpenRLHF's custom reward function (module docstring)."""
    res = score(queries, prompts, labels)
    r = np.asarray(res["reward"], dtype=np.float64)
    logs = {f"micro_head_{k}": _tensor(res["per_head"][:, k]) for k in range(res["per_head"].shape[1])}
    return {"rewards": _tensor(r), "scores": _tensor(1.0 / (1.0 + np.exp(-r))), "extra_logs": logs}
