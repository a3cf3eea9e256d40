"""Recipes: exact counts on small fixtures (published schemas) and on the real data in ../shared/data."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from pipeline.data.prepare import build_pairs
from pipeline.data.recipes import RECIPES
from pipeline.data.recipes.base import BadRow
from pipeline.data.recipes.dsp import DOMAIN_CONTEXT
from pipeline.data.recipes.helpsteer2 import ATTRIBUTE_CONTEXT, helpsteer_prompt
from pipeline.data.recipes.hh import OBJECTIVE_CONTEXT, hh_subset
from pipeline.data.recipes.messages import as_messages, parse_hh, resolve
from pipeline.data.split import prompts_in_both
from pipeline.errors import MicroError

FIX = Path(__file__).resolve().parent / "fixtures"
DATA = Path(__file__).resolve().parents[1].parent / "shared/data"


def groups(table) -> dict:
    return dict(Counter(table.column("group").to_pylist()))


def rows(table) -> list[dict]:
    return table.to_pylist()


def real(rel: str) -> Path:
    path = DATA / rel
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path


def test_registry_names():
    assert set(RECIPES) == {"generic", "hh-rlhf", "hh-relabeled", "dsp", "pandalm", "helpsteer2", "rpr"}


# --- conversation helpers -------------------------------------------------------------------------


def test_parse_hh_turns_and_roles():
    msgs = parse_hh("\n\nHuman: hi there\n\nAssistant: hello!\n\nHuman: bye\n\nAssistant: ciao")
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    assert msgs[0]["content"] == "hi there" and msgs[-1]["content"] == "ciao"
    assert parse_hh("Human: q\n\nAssistant: a") == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]
    with pytest.raises(BadRow):
        parse_hh("just text")


def test_as_messages_accepts_sharegpt_and_json_strings():
    assert as_messages([{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]) == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]
    assert as_messages('[{"role": "user", "content": "q"}]') == [{"role": "user", "content": "q"}]
    assert as_messages("[not json]") is None and as_messages("plain") is None


def test_resolve_shapes():
    hh_c = "\n\nHuman: q\n\nAssistant: good"
    hh_r = "\n\nHuman: q\n\nAssistant: bad"
    assert resolve(None, hh_c, hh_r) == ([{"role": "user", "content": "q"}], "good", "bad")
    assert resolve("q", "good", "bad") == ([{"role": "user", "content": "q"}], "good", "bad")
    assert resolve("Human: q", hh_c, hh_r) == ([{"role": "user", "content": "q"}], "good", "bad")
    with pytest.raises(BadRow, match="transcripts differ"):
        resolve(None, hh_c, "\n\nHuman: other\n\nAssistant: bad")
    with pytest.raises(BadRow, match="prompt"):
        resolve(None, "good", "bad")


# --- helpsteer2 (hand-written fixture in the published schema) ------------------------------------

HS = FIX / "helpsteer2_tiny.jsonl"


def test_helpsteer2_all_test_keeps_agreeing_pairs():
    table, log, n = build_pairs("helpsteer2", [HS], test_size=1.0)
    assert n == 11  # 12 lines, one unparsable
    assert table.num_rows == 11
    assert groups(table) == {"helpfulness": 2, "correctness": 2, "coherence": 2, "complexity": 2, "verbosity": 3}
    assert set(table.column("split").to_pylist()) == {"test"}
    assert log.dropped == {"equal rating": 9}
    assert log.reasons() == {"unparsable JSON": 1, "unpaired response": 2, "missing field": 1}
    assert log.skipped[2] == (f"{HS}:12", "missing field: 'coherence'")
    assert [loc for loc, _ in log.skipped] == [f"{HS}:7", f"{HS}:10", f"{HS}:12", f"{HS}:11"]
    contexts = {r["group"]: r["context"] for r in rows(table)}
    assert contexts == ATTRIBUTE_CONTEXT


def test_helpsteer2_train_drops_agreeing_pairs():
    table, log, _ = build_pairs("helpsteer2", [HS], test_size=0.0)
    assert table.num_rows == 5
    assert log.dropped == {"equal rating": 9, "all attributes agree (train)": 6}
    assert groups(table) == dict.fromkeys(ATTRIBUTE_CONTEXT, 1)
    egg = [r for r in rows(table) if r["prompt"][0]["content"] == "How do I boil an egg?"]
    by_group = {r["group"]: r["chosen"].startswith("Place") for r in egg}
    assert by_group == {"helpfulness": True, "coherence": True, "verbosity": False}


def test_helpsteer2_min_gap_and_multiturn_prompt():
    table, log, _ = build_pairs("helpsteer2", [HS], test_size=1.0, min_gap=2)
    assert table.num_rows == 2 and set(groups(table)) == {"helpfulness", "correctness"}
    assert log.dropped["rating gap below min_gap"] == 9
    assert helpsteer_prompt("What is 2+2?<extra_id_1>Assistant\n2+2 is 4.<extra_id_1>User\nAnd 3+3?") == [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "2+2 is 4."},
        {"role": "user", "content": "And 3+3?"},
    ]


def test_helpsteer2_split_from_published_file_name(tmp_path):
    path = tmp_path / "validation.jsonl"
    path.write_bytes(HS.read_bytes())
    table, log, _ = build_pairs("helpsteer2", [path], test_size=0.0)
    assert table.num_rows == 11 and set(table.column("split").to_pylist()) == {"test"}
    table, _, _ = build_pairs("helpsteer2", [path], test_size=0.0, file_split=False)
    assert table.num_rows == 5


# --- rpr (hand-written fixture in the published schema) -------------------------------------------

RPR = FIX / "rpr_tiny.jsonl"


def test_rpr_two_pairs_per_row_with_reversed_preference():
    table, log, n = build_pairs("rpr", [RPR])
    assert n == 5 and table.num_rows == 6
    assert groups(table) == {"criteria_x": 3, "criteria_y": 3}
    assert log.reasons() == {"missing field": 1, "chosen == rejected": 2}
    cat = [r for r in rows(table) if r["prompt"][0]["content"] == "Suggest a name for a cat."]
    x = next(r for r in cat if r["group"] == "criteria_x")
    y = next(r for r in cat if r["group"] == "criteria_y")
    assert (x["chosen"], x["rejected"]) == (y["rejected"], y["chosen"])
    assert x["chosen"].startswith("Sir Whiskerton")
    assert x["context"] == "The response should be playful and humorous."
    assert y["context"] == "The response should be short and conventional."
    assert prompts_in_both([r["prompt"] for r in rows(table)], table.column("split").to_pylist()) == 0


def test_rpr_scenario_context_and_aliases(tmp_path):
    table, _, _ = build_pairs("rpr", [RPR], context_field="scenario")
    assert set(groups(table)) == {"scenario_x", "scenario_y"}
    assert all(r["context"].startswith("A user who values:") for r in rows(table))
    alias = tmp_path / "rpr_alias.jsonl"
    alias.write_text('{"prompt": "p", "response_x": "A", "response_y": "B", "criteria_x": "cx", "criteria_y": "cy"}\n')
    t = rows(build_pairs("rpr", [alias])[0])
    assert [(r["chosen"], r["context"]) for r in t] == [("A", "cx"), ("B", "cy")]
    with pytest.raises(MicroError, match="context_field"):
        build_pairs("rpr", [RPR], context_field="profile")


# --- hh-rlhf and pandalm slices -------------------------------------------------------------------


def test_hh_rlhf_slice():
    path = FIX / "hh_rlhf_harmless_tiny.jsonl"
    table, log, n = build_pairs("hh-rlhf", [path])
    assert n == 6 and table.num_rows == 4
    assert log.reasons() == {"empty response": 1, "transcripts differ before the final assistant turn": 1}
    first = rows(table)[0]
    assert first["prompt"][0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    assert first["prompt"][-1]["role"] == "user" and "\n\nHuman:" not in first["chosen"]
    assert first["chosen"].startswith("No, sorry!")
    assert first["group"] is None
    assert hh_subset("harmless-base/test.jsonl.gz") == "harmless-base"
    assert hh_subset("dsp/helpful.test.json") == "helpful-base"


def test_pandalm_slice():
    table, log, n = build_pairs("pandalm", [FIX / "pandalm_tiny.json"])
    assert n == 5 and table.num_rows == 8
    assert groups(table) == {"annotator1": 3, "annotator2": 2, "annotator3": 3}
    assert log.dropped == {"tie": 1}
    assert log.reasons() == {"empty response": 3, "not text": 1}
    first = rows(table)[0]
    assert first["prompt"][0]["content"].startswith("The sentence you are given might be too wordy")
    assert "\n\nIf you have any questions about my rate" in first["prompt"][0]["content"]
    assert first["chosen"] == "If you have any questions, please let me know."


# --- the real data sets ---------------------------------------------------------------------------


def test_dsp_real_file_exact_counts():
    path = real("dsp/domain_specific_preference.test.json")
    table, log, n = build_pairs("dsp", [path])
    assert n == 661
    assert table.num_rows == 10_428 == 10_576 - 148
    assert log.reasons() == {"chosen == rejected": 144, "empty response": 4}
    assert all(loc.startswith(f"{path}:[") for loc, _ in log.skipped)
    assert sum(f"{path}:[60]" == loc for loc, reason in log.skipped if reason.startswith("empty")) == 4
    assert groups(table) == {"academy": 2599, "business": 2600, "entertainment": 2614, "literature": 2615}
    assert {r["group"]: r["context"] for r in rows(table)} == DOMAIN_CONTEXT
    assert prompts_in_both(table.column("prompt").to_pylist(), table.column("split").to_pylist()) == 0
    assert table.column("pair_id").to_pylist()[0].startswith("dsp:")


def test_hh_relabeled_real_file_counts():
    table, log, n = build_pairs("hh-relabeled", [real("hh-rlhf-relabeled/both/test.jsonl.gz")])
    assert n == 4043 and table.num_rows == 4035
    assert log.reasons() == {"empty response": 6, "chosen == rejected": 2}
    assert groups(table) == {"helpful": 2153, "harmless": 1882}
    assert {r["group"]: r["context"] for r in rows(table)} == OBJECTIVE_CONTEXT
    assert rows(table)[0]["prompt"][0]["content"] == "what are some pranks with a pen i can do?"


def test_hh_rlhf_real_file_counts():
    table, log, n = build_pairs("hh-rlhf", [real("hh-rlhf/harmless-base/test.jsonl.gz")])
    assert n == 2312 and table.num_rows == 2303
    assert log.reasons() == {"transcripts differ before the final assistant turn": 5, "empty response": 4}
    assert groups(table) == {"harmless-base": 2303}


def test_pandalm_real_file_counts():
    table, log, n = build_pairs("pandalm", [real("pandalm-testset/testset-v1.json")])
    assert n == 999 and table.num_rows == 2501
    assert log.dropped == {"tie": 322}  # 97 + 116 + 113, as in the dataset README
    assert log.reasons() == {"empty response": 156, "not text": 6}
    assert groups(table) == {"annotator1": 844, "annotator2": 825, "annotator3": 832}
