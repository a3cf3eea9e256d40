"""``pandalm``: PandaLM human-annotated test set (WeOpenML/PandaLM data/testset-v1.json).

Rows {instruction, input, response1, response2, annotator1, annotator2, annotator3}; labels
1 = response1 better, 2 = response2 better, 0 = tie.  One pair per annotator label, group = the
annotator; ties are dropped and counted.  prompt = instruction + ("\\n\\n" + input if input).
"""

from __future__ import annotations

from pipeline.data.recipes.base import BadRow, Record, make_pair, need, need_text, per_record
from pipeline.data.recipes.messages import user
from pipeline.data.schema import RowLog

ANNOTATORS = ("annotator1", "annotator2", "annotator3")


def pandalm_prompt(instruction: str, extra: object) -> str:
    """The instruction, followed by the input after a blank line when there is one."""
    extra = extra.strip() if isinstance(extra, str) else ""
    return f"{instruction}\n\n{extra}" if extra else instruction


@per_record
def pandalm(rec: Record, log: RowLog) -> list[dict]:
    """Up to 3 pairs per item (one per annotator; ties dropped)."""
    d = rec.data
    prompt = user(pandalm_prompt(need_text(d, "instruction"), d.get("input")))
    r1, r2 = need_text(d, "response1"), need_text(d, "response2")
    labels = {a: need(d, a) for a in ANNOTATORS}
    for annotator, label in labels.items():
        if label not in (0, 1, 2) or isinstance(label, bool):
            raise BadRow(f"unknown label: field '{annotator}' is {label!r} (expected 0, 1 or 2)")
    pairs = []
    for annotator, label in labels.items():
        if label == 0:
            log.drop("tie")
            continue
        chosen, rejected = (r1, r2) if label == 1 else (r2, r1)
        pairs.append(make_pair(rec, prompt, chosen, rejected, group=annotator))
    return pairs
