"""Fitting a conversation into ``max_length`` tokens before it is rendered: the ``history`` truncation mode.

The token-level modes cut the rendered text: ``left`` keeps its last ``max_length`` tokens (the final response
survives, the start of the conversation goes), ``right`` keeps its first (the response's end goes, and with long
conversations the whole response). ``history`` instead shortens the *conversation* and renders it again, so the
chat template's special tokens stay intact:

1. drop the oldest turns (leading system messages, e.g. a user's stated context, stay), down to the final user turn;
2. then cut the response from its end (keeping at least ``min_response`` of the budget, or all of a short response);
3. then cut the final user turn from its start (its end is what the response answers);
4. then cut the leading system text from its end.

A prompt alone (``response is None``) goes through steps 1, 3 and 4. Every function here is pure; the tokenizer is
reached through three callables: ``render(messages, response) -> str``, ``count(text) -> int`` (tokens of a
rendered text, special tokens included) and ``cut(text, n, keep) -> str`` (the first or last ``n`` tokens of a
message's text, cut at a token boundary of the original string).
"""

from __future__ import annotations

from typing import Callable, Sequence

Render = Callable[[list, "str | None"], str]
Count = Callable[[str], int]
Cut = Callable[[str, int, str], str]

#: the default truncation mode of every backend (README "Truncation": history beats left and right on DSP and HH)
DEFAULT_TRUNCATION = "history"
#: share of max_length a cut response keeps at least (the reward model must see some of the response)
MIN_RESPONSE = 0.25


def _split(messages: Sequence[dict]) -> tuple[list, list]:
    """(leading system messages, the rest)."""
    i = 0
    while i < len(messages) and messages[i]["role"] == "system":
        i += 1
    return [dict(m) for m in messages[:i]], [dict(m) for m in messages[i:]]


def _last_user(turns: list) -> int:
    idx = [i for i, m in enumerate(turns) if m["role"] == "user"]
    return idx[-1] if idx else max(len(turns) - 1, 0)


def _shrink(text: str, over: int, keep: str, floor: int, count_text: Callable[[str], int], cut: Cut) -> str:
    """``text`` shortened by about ``over`` tokens (never below ``floor`` tokens)."""
    n = count_text(text)
    return cut(text, max(n - over, min(n, floor), 0), keep)


def fit_history(
    messages: Sequence[dict],
    response: str | None,
    max_length: int,
    render: Render,
    count: Count,
    cut: Cut,
    count_text: Callable[[str], int],
    min_response: float = MIN_RESPONSE,
) -> tuple[str, int]:
    """(rendered text within ``max_length`` tokens where possible, token count of the unshortened rendering).

    ``count_text(s)`` counts the tokens of a bare message text (no special tokens); see the module docstring for
    the order in which the conversation is shortened."""
    seen: dict[str, int] = {}  # a rendering is often counted twice (e.g. one-turn prompts re-rendered in step 2)

    def count(text: str, _count=count) -> int:
        if text not in seen:
            seen[text] = _count(text)
        return seen[text]

    full = render(list(messages), response)
    n_full = count(full)
    if n_full <= max_length:
        return full, n_full
    system, turns = _split(messages)
    for start in range(1, _last_user(turns) + 1):  # 1. oldest turns first
        text = render(system + turns[start:], response)
        if count(text) <= max_length:
            return text, n_full
    kept = turns[_last_user(turns) :]
    text = render(system + kept, response)
    for _ in range(3):  # 2. the response, from its end
        over = count(text) - max_length
        if response is None or over <= 0:
            break
        floor = int(min_response * max_length)
        new = _shrink(response, over, "start", floor, count_text, cut)
        if new == response:
            break
        response = new
        text = render(system + kept, response)
    for target, keep in ((kept, "end"), (system, "start")):  # 3. the final user turn's start, 4. the system text
        for _ in range(3):
            over = count(text) - max_length
            if over <= 0 or not target:
                break
            m = target[0] if keep == "end" else target[-1]
            new = _shrink(m["content"], over, keep, 1, count_text, cut)
            if new == m["content"]:
                break
            m["content"] = new
            text = render(system + kept, response)
    return text, n_full


def offsets_cut(offsets: Sequence[tuple[int, int]], text: str, n: int, keep: str) -> str:
    """The first (``keep="start"``) or last (``"end"``) ``n`` tokens of ``text``, given the tokens' character
    ``offsets``, as a substring of the original text."""
    if n <= 0 or not offsets:
        return ""
    if n >= len(offsets):
        return text
    return text[: offsets[n - 1][1]] if keep == "start" else text[offsets[len(offsets) - n][0] :]


class HistoryRenderer:
    """``render`` wrapped by :func:`fit_history`; remembers the unshortened token count of each text it shortened,
    so callers can still count (or skip) what was cut."""

    def __init__(self, max_length: int, render: Render, count: Count, count_text: Callable[[str], int], cut: Cut):
        self.max_length, self._render, self._count, self._count_text, self._cut = (
            int(max_length),
            render,
            count,
            count_text,
            cut,
        )
        self.full_lengths: dict[str, int] = {}

    def __call__(self, messages: Sequence[dict], response: str | None = None) -> str:
        text, n_full = fit_history(
            messages, response, self.max_length, self._render, self._count, self._cut, self._count_text
        )
        if n_full > self.max_length:
            self.full_lengths[text] = n_full
        return text

    def lengths(self, texts: Sequence[str], counted: Sequence[int]) -> list[int]:
        """Token counts of ``texts`` before shortening (``counted``: their counts as rendered)."""
        return [self.full_lengths.get(t, n) for t, n in zip(texts, counted)]
