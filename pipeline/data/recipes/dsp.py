"""``dsp``: Domain-Specific Preference test set (Linear95/DSP, Cheng et al. 2023).

Rows {query, responses: {academy, business, entertainment, literature, normal}}.  The authors' rule
(reward_datasets.py, --to_pairs): under domain d (one of the four non-normal domains) responses[d] beats
each of the other four responses -> 4 pairs per query per domain.  group = domain, context = a sentence
describing that domain's preference, prompt = the query as one user turn.
"""

from __future__ import annotations

from pipeline.data.recipes.base import BadRow, Record, make_pair, need, need_text, per_record
from pipeline.data.recipes.messages import user
from pipeline.data.schema import RowLog

DOMAIN_CONTEXT = {
    "academy": "I am an academic: prefer rigorous, scholarly answers with precise terminology.",
    "business": "I am a business professional: prefer practical, concise answers focused on goals, "
    "costs and actionable next steps.",
    "entertainment": "I want to be entertained: prefer lively, witty, engaging answers with humour and vivid examples.",
    "literature": "I love literature: prefer expressive, literary answers with rich imagery and elegant prose.",
}
DOMAINS = tuple(DOMAIN_CONTEXT)
RESPONSES = DOMAINS + ("normal",)


@per_record
def dsp(rec: Record, log: RowLog) -> list[dict]:
    """16 pairs per query: for each domain d, responses[d] over each other response."""
    query = need_text(rec.data, "query")
    responses = need(rec.data, "responses")
    if not isinstance(responses, dict):
        raise BadRow("bad field: 'responses' must be an object")
    for name in RESPONSES:
        need_text(responses, name)
    prompt = user(query)
    return [
        make_pair(
            rec,
            prompt,
            responses[d],
            responses[other],
            group=d,
            context=DOMAIN_CONTEXT[d],
            key=(other,),
            note=f"responses.{d} vs responses.{other}",
        )
        for d in DOMAINS
        for other in RESPONSES
        if other != d
    ]
