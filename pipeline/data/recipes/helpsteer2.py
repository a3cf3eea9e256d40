"""``helpsteer2``: nvidia/HelpSteer2 multi-attribute ratings -> per-attribute pairs (MiCRo paper §5.1).

Published schema (train.jsonl.gz / validation.jsonl.gz): rows {prompt, response, helpfulness,
correctness, coherence, complexity, verbosity}, ratings 0-4; the two responses to a prompt are
consecutive rows.  Multi-turn prompts separate earlier turns with '<extra_id_1>User' /
'<extra_id_1>Assistant' markers.

For each attribute with a rating gap >= ``min_gap`` the higher-rated response is chosen (group =
attribute, context = a sentence for the attribute); equal ratings are dropped and counted.  When all the
pairs of a prompt prefer the same response ("all attributes agree") they carry no attribute-specific
signal: they are dropped from the train split only (counted), kept in test.  The split comes from the
file name (train* -> train, validation*/test* -> test) unless ``file_split`` is false.
"""

from __future__ import annotations

import re
from typing import Iterable, Iterator

from pipeline.data.recipes.base import BadRow, Record, make_pair, need, need_text
from pipeline.data.schema import RowLog
from pipeline.data.split import split_from_name

ATTRIBUTE_CONTEXT = {
    "helpfulness": "Prefer the response that is more helpful overall.",
    "correctness": "Prefer the response that is more correct: it includes all pertinent facts without errors.",
    "coherence": "Prefer the response that is more coherent: consistent and clearly expressed.",
    "complexity": "Prefer the response that is more sophisticated: it takes deeper expertise to write.",
    "verbosity": "Prefer the response that is more detailed relative to what the prompt asks for.",
}
ATTRIBUTES = tuple(ATTRIBUTE_CONTEXT)
_TURN = re.compile(r"\s*<extra_id_1>(User|Assistant)\s*\n?")


def helpsteer_prompt(text: str) -> list[dict]:
    """Messages from a HelpSteer2 prompt (first turn is the user's; markers introduce later turns)."""
    parts = _TURN.split(text)
    msgs = [{"role": "user", "content": parts[0].strip()}]
    for i in range(1, len(parts), 2):
        msgs.append({"role": "user" if parts[i] == "User" else "assistant", "content": parts[i + 1].strip()})
    return msgs


def _ratings(rec: Record) -> dict[str, float]:
    out = {}
    for attr in ATTRIBUTES:
        value = need(rec.data, attr)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadRow(f"not a rating: field '{attr}' is {value!r}")
        out[attr] = value
    return out


def _item_pairs(a: Record, b: Record, log: RowLog, min_gap: float, split: str | None) -> list[dict]:
    """The per-attribute pairs of two (already validated) responses to the same prompt."""
    resp_a, resp_b = a.data["response"], b.data["response"]
    rat_a, rat_b = _ratings(a), _ratings(b)
    prompt = helpsteer_prompt(a.data["prompt"])
    pairs, winners = [], set()
    for attr in ATTRIBUTES:
        gap = rat_a[attr] - rat_b[attr]
        if gap == 0:
            log.drop("equal rating")
            continue
        if abs(gap) < min_gap:
            log.drop("rating gap below min_gap")
            continue
        chosen, rejected = (resp_a, resp_b) if gap > 0 else (resp_b, resp_a)
        winners.add(gap > 0)
        pairs.append(
            make_pair(a, prompt, chosen, rejected, group=attr, context=ATTRIBUTE_CONTEXT[attr], split=split, note=attr)
        )
    if len(winners) == 1:
        for p in pairs:
            p["train_drop"] = "all attributes agree"
    return pairs


def helpsteer2(
    records: Iterable[Record], log: RowLog, *, min_gap: float = 1, file_split: bool = True
) -> Iterator[dict]:
    """Per-attribute pairs from consecutive same-prompt rows (see the module docstring)."""
    pending: Record | None = None
    for rec in records:
        try:
            prompt = need_text(rec.data, "prompt")
            need_text(rec.data, "response")
            _ratings(rec)
        except BadRow as exc:
            log.skip(rec.loc, str(exc))
            continue
        if pending is not None and pending.data["prompt"] == prompt:
            split = split_from_name(rec.file) if file_split else None
            yield from _item_pairs(pending, rec, log, min_gap, split)
            pending = None
            continue
        if pending is not None:
            log.skip(pending.loc, "unpaired response: the next row has a different prompt")
        pending = rec
    if pending is not None:
        log.skip(pending.loc, "unpaired response: no next row with the same prompt")
