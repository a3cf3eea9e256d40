"""``rpr``: Reasonable Preference Reversal (microsoft/rpr; Pitis et al. 2024, "Improving
Context-Aware Preference Modeling for Language Models", arXiv 2407.14916).

Published schema (data/train-*.parquet, data/test-*.parquet): {prompt, response_a, response_b,
criteria_x, criteria_y, category_x, category_y, id, scenario_x, scenario_y, profile_0..4}.  Each row is
built so that preference reverses with the context: response_a is preferred under criteria_x (and
scenario_x), response_b under criteria_y (and scenario_y).  Two pairs per row, one per criterion:
context = the criterion (or the scenario with ``context_field='scenario'``), group = 'criteria_x' /
'criteria_y'.  'response_x' / 'response_y' are accepted as aliases of response_a / response_b.
The split comes from the file name (train* / test*) unless ``file_split`` is false.
"""

from __future__ import annotations

from pipeline.data.recipes.base import Record, make_pair, need_text, per_record
from pipeline.data.recipes.messages import prompt_messages
from pipeline.data.schema import RowLog
from pipeline.data.split import split_from_name
from pipeline.errors import MicroError

CONTEXT_FIELDS = ("criteria", "scenario")


def _response(data: dict, side: str, alias: str) -> str:
    return need_text(data, f"response_{side}" if f"response_{side}" in data else f"response_{alias}")


@per_record
def rpr(rec: Record, log: RowLog, *, context_field: str = "criteria", file_split: bool = True) -> list[dict]:
    """Two pairs per row: a over b under ``{context_field}_x``, b over a under ``{context_field}_y``."""
    if context_field not in CONTEXT_FIELDS:
        raise MicroError(f"rpr: context_field must be one of {', '.join(CONTEXT_FIELDS)}, got {context_field!r}")
    d = rec.data
    prompt = prompt_messages(need_text(d, "prompt"))
    a, b = _response(d, "a", "x"), _response(d, "b", "y")
    cx, cy = need_text(d, f"{context_field}_x"), need_text(d, f"{context_field}_y")
    split = split_from_name(rec.file) if file_split else None
    gx, gy = f"{context_field}_x", f"{context_field}_y"
    return [
        make_pair(rec, prompt, a, b, group=gx, context=cx.strip() or None, split=split, note=gx),
        make_pair(rec, prompt, b, a, group=gy, context=cy.strip() or None, split=split, note=gy),
    ]
