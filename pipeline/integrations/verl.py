"""verl ``custom_reward_function``: ``compute_score(data_source, solution_str, ground_truth, extra_info, **kwargs)``.

verl passes no prompt, so each row's ``extra_info`` carries it (``prompt``: text or messages) and its user
(``user_context``: the context; ``user``: a profile name served with ``--users``). The server URL is the
``url`` reward kwarg (``custom_reward_function.reward_kwargs.url``) or ``MICRO_REWARD_URL``. Returns a dict with
``score`` (the reward) and the per-head rewards ``micro_head_k``::

    custom_reward_function.path=pipeline/integrations/verl.py custom_reward_function.name=compute_score
"""

from __future__ import annotations

import os

from pipeline.errors import MicroError
from pipeline.integrations.client import apost_items, items_of
from pipeline.serve.protocol import strip_special


def _request(solution_str, extra_info, kwargs) -> tuple[str, dict, str | None]:
    url = kwargs.get("url") or os.environ.get("MICRO_REWARD_URL")
    if not url:
        raise MicroError("verl compute_score: give reward_kwargs.url or set MICRO_REWARD_URL (a `micro serve` URL)")
    info = extra_info or {}
    prompt = info.get("prompt") or info.get("question")
    if not prompt:
        raise MicroError("verl compute_score: extra_info has no 'prompt' (put the row's prompt there)")
    context = info.get(kwargs.get("context_key", "user_context")) or info.get("context")
    user = info.get(kwargs.get("user_key", "user"))
    item = items_of([prompt], [strip_special(solution_str)], [context], [user])[0]
    return url, item, kwargs.get("api_key")


def _result(res: dict) -> dict:
    out = {"score": float(res["reward"][0])}
    out |= {f"micro_head_{k}": float(v) for k, v in enumerate(res["per_head"][0])}
    return out


async def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> dict:
    """The reward of one verl rollout from `micro serve` (module docstring)."""
    url, item, key = _request(solution_str, extra_info, kwargs)
    return _result(await apost_items(url, [item], key))


def compute_score_sync(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> dict:
    """:func:`compute_score` for verl reward managers that call synchronously."""
    from pipeline.integrations.client import post_items

    url, item, key = _request(solution_str, extra_info, kwargs)
    return _result(post_items(url, [item], key))
