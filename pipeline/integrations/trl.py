"""TRL ``GRPOTrainer`` / ``RLOOTrainer`` reward functions.

TRL calls each entry of ``reward_funcs`` as ``f(prompts=..., completions=..., completion_ids=..., **dataset_columns,
trainer_state=..., log_extra=..., log_metric=...)`` and wants one float per completion (each prompt's G completions
are consecutive); prompts/completions are strings, or message lists in the conversational format. The user of a
row comes from the dataset column ``context_column`` (a context text) and/or ``user_column`` (a profile name)::

    from pipeline.integrations.trl import reward_func, async_reward_func
    GRPOTrainer(..., reward_funcs=[reward_func("runs/demo/model-routed")])          # in-process
    GRPOTrainer(..., reward_funcs=[async_reward_func("http://127.0.0.1:5000")])     # `micro serve`, awaited
"""

from __future__ import annotations

import functools

from pipeline.integrations.client import InProcess, apost_items, is_url, items_of, post_items


def _rows(kwargs: dict, column: str | None, n: int):
    if column is None or column not in kwargs:
        return None
    values = list(kwargs[column])
    if len(values) != n:
        from pipeline.errors import MicroError

        raise MicroError(f"dataset column {column!r}: {len(values)} values for {n} completions")
    return values


def _log(res: dict, log_extra) -> None:
    if callable(log_extra):
        for k in range(res["per_head"].shape[1]):
            log_extra(f"micro_head_{k}", res["per_head"][:, k].tolist())


class MicroReward:
    """A picklable TRL reward function (see :func:`reward_func`); its name in TRL's logs is ``__name__``."""

    __name__ = "micro_reward"

    def __init__(self, target, context_column="user_context", user_column=None, api_key=None, users=None):
        self.url = str(target) if is_url(target) else None
        self.local = None if self.url else InProcess(target, users)
        self.context_column, self.user_column, self.api_key = context_column, user_column, api_key

    def __call__(self, prompts, completions, completion_ids=None, trainer_state=None, log_extra=None,
                 log_metric=None, **columns) -> list[float]:  # fmt: skip
        n = len(completions)
        items = items_of(
            prompts, completions, _rows(columns, self.context_column, n), _rows(columns, self.user_column, n)
        )
        res = post_items(self.url, items, self.api_key) if self.url else self.local.score(items)
        _log(res, log_extra)
        return [float(r) for r in res["reward"]]


def reward_func(model_or_url, context_column: str = "user_context", user_column: str | None = None, *,
                api_key: str | None = None, users=None) -> MicroReward:  # fmt: skip
    """A reward function for TRL: ``model_or_url`` is a bundle folder (scored in-process; ``users``: its profiles
    folder) or a `micro serve` URL. Per-head rewards go to TRL's completions table through ``log_extra``."""
    return MicroReward(model_or_url, context_column, user_column, api_key, users)


async def micro_reward_async(prompts, completions, completion_ids=None, trainer_state=None, log_extra=None,
                             log_metric=None, *, micro_url: str, micro_context_column: str = "user_context",
                             micro_user_column: str | None = None, micro_api_key: str | None = None,
                             **columns) -> list[float]:  # fmt: skip
    """The coroutine behind :func:`async_reward_func`."""
    n = len(completions)
    items = items_of(
        prompts, completions, _rows(columns, micro_context_column, n), _rows(columns, micro_user_column, n)
    )
    res = await apost_items(micro_url, items, micro_api_key)
    _log(res, log_extra)
    return [float(r) for r in res["reward"]]


def async_reward_func(url: str, context_column: str = "user_context", user_column: str | None = None, *,
                      api_key: str | None = None) -> functools.partial:  # fmt: skip
    """An async reward function for TRL on a `micro serve` URL: a partial of a coroutine function (TRL awaits it
    concurrently with the other async rewards; picklable)."""
    return functools.partial(
        micro_reward_async,
        micro_url=url,
        micro_context_column=context_column,
        micro_user_column=user_column,
        micro_api_key=api_key,
    )
