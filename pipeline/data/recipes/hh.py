"""Anthropic HH-RLHF recipes.

``hh-rlhf``: rows {chosen, rejected} of full 'Human:/Assistant:' transcripts (anthropics/hh-rlhf), or the
DSP authors' copies {text: [t0, t1], score: [s0, s1]}; group = the HH subset named by the parent folder
(e.g. 'harmless-base') or by a DSP file name ('helpful.test.json' -> 'helpful-base'), else None.

``hh-relabeled``: rows {prompt, responses, label, objective} from cassidylaidlaw/hidden-context
(relabeled per objective); group = objective, context = a sentence stating the objective.
"""

from __future__ import annotations

import re

from pipeline.data.recipes.base import BadRow, Record, make_pair, need, need_text, per_record
from pipeline.data.recipes.messages import prompt_messages, split_transcripts
from pipeline.data.schema import RowLog

HH_SUBSET = re.compile(r"^(harmless|helpful)-[a-z-]+$|^red-team-attempts$")
DSP_COPIES = {"helpful": "helpful-base", "harmless": "harmless-base"}
OBJECTIVE_CONTEXT = {
    "helpful": "Prefer the response that is more helpful: it answers the request fully and usefully.",
    "harmless": "Prefer the response that is less harmful: it avoids assisting with dangerous, unethical "
    "or offensive requests.",
}


def hh_subset(file_name: str) -> str | None:
    """The HH subset a file belongs to, from 'parent/name' (None if it cannot be told)."""
    parent, _, name = file_name.rpartition("/")
    if HH_SUBSET.match(parent):
        return parent
    return DSP_COPIES.get(name.split(".")[0])


def _scored_pair(data: dict) -> tuple[str, str] | None:
    """(chosen, rejected) transcripts from {text, score}; None for a tie."""
    text, score = need(data, "text"), need(data, "score")
    if not (isinstance(text, list) and isinstance(score, list) and len(text) == 2 == len(score)):
        raise BadRow("bad field: 'text' and 'score' must be lists of two")
    if score[0] == score[1]:
        return None
    return (text[0], text[1]) if score[0] > score[1] else (text[1], text[0])


@per_record
def hh_rlhf(rec: Record, log: RowLog) -> list[dict]:
    """One pair per HH row: shared turns -> prompt, final assistant turns -> chosen / rejected."""
    d = rec.data
    if "chosen" in d or "text" not in d:
        chosen, rejected = need(d, "chosen"), need(d, "rejected")
    else:
        pair = _scored_pair(d)
        if pair is None:
            log.drop("tie")
            return []
        chosen, rejected = pair
    prompt, chosen, rejected = split_transcripts(chosen, rejected)
    return [make_pair(rec, prompt, chosen, rejected, group=hh_subset(rec.file))]


@per_record
def hh_relabeled(rec: Record, log: RowLog) -> list[dict]:
    """One pair per relabeled row: responses[label] beats responses[1 - label] under ``objective``."""
    d = rec.data
    prompt = prompt_messages(need_text(d, "prompt"))
    responses, label, objective = need(d, "responses"), need(d, "label"), need_text(d, "objective")
    if not isinstance(responses, list) or len(responses) != 2:
        raise BadRow("bad field: 'responses' must be a list of two")
    if label not in (0, 1) or isinstance(label, bool):
        raise BadRow(f"unknown label: field 'label' is {label!r} (expected 0 or 1)")
    chosen, rejected = responses[label], responses[1 - label]
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise BadRow("not text: field 'responses'")
    context = OBJECTIVE_CONTEXT.get(objective, f"Prefer the response that is better on: {objective}.")
    return [make_pair(rec, prompt, chosen, rejected, group=objective, context=context)]
