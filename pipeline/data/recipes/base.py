"""Shared pieces of the recipes: records, bad-row errors, field access and the pair dict.

A recipe is a function ``recipe(records, log, **options) -> Iterator[dict]``: it turns the raw records of
one input file into pair dicts (see :func:`make_pair`).  Bad rows are reported with ``log.skip`` and
expected drops (ties, equal ratings) with ``log.drop``; the common checks (empty response,
chosen == rejected, duplicate ids) and the split happen later, in ``pipeline.data.prepare``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Iterator, NamedTuple

from pipeline.data.schema import RowLog


class Record(NamedTuple):
    """One raw row: ``loc`` is 'path:line' for messages, ``file`` and ``index`` name it stably for ids."""

    loc: str
    file: str
    index: int
    data: dict


class BadRow(Exception):
    """A row that cannot be used; the message is the skip reason ('category: detail')."""


def need(data: dict, name: str) -> Any:
    """The value of field ``name``; BadRow if it is absent or null."""
    value = data.get(name)
    if value is None:
        raise BadRow(f"missing field: '{name}'")
    return value


def need_text(data: dict, name: str) -> str:
    """Field ``name`` as a string (may be empty: emptiness is checked per pair later)."""
    value = need(data, name)
    if not isinstance(value, str):
        raise BadRow(f"not text: field '{name}' is {type(value).__name__}")
    return value


def make_pair(
    rec: Record,
    prompt: list[dict],
    chosen: str,
    rejected: str,
    *,
    group: str | None = None,
    context: str | None = None,
    split: str | None = None,
    key: tuple = (),
    note: str | None = None,
    train_drop: str | None = None,
) -> dict:
    """A pair dict; ``key`` disambiguates several pairs of one row, ``note`` enriches skip reasons,
    ``train_drop`` is a reason to drop the pair if it lands in the train split."""
    return {
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "group": group,
        "context": context,
        "split": split,
        "loc": rec.loc,
        "key": (rec.file, rec.index, group, *key),
        "note": note,
        "train_drop": train_drop,
    }


Recipe = Callable[..., Iterator[dict]]


def per_record(fn: Callable[..., Iterable[dict]]) -> Recipe:
    """Turn ``fn(rec, log, **opts) -> pairs`` into a recipe that skips rows raising BadRow."""

    @functools.wraps(fn)
    def recipe(records: Iterable[Record], log: RowLog, **opts) -> Iterator[dict]:
        for rec in records:
            try:
                pairs = list(fn(rec, log, **opts))
            except BadRow as exc:
                log.skip(rec.loc, str(exc))
                continue
            yield from pairs

    return recipe
