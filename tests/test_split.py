"""The seeded, prompt-grouped train/test split."""

from __future__ import annotations

import random

import pytest

from pipeline.data.split import (
    assign_split,
    normalize_split,
    prompt_unit,
    prompts_in_both,
    render_prompt,
    split_from_name,
)


def prompt(i: int) -> list[dict]:
    return [{"role": "user", "content": f"question number {i}"}]


PROMPTS = [prompt(i) for i in range(4000)]


def test_render_prompt():
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert render_prompt(msgs) == "user: q\nassistant: a"


def test_fraction_close_to_test_size():
    for test_size in (0.1, 0.2, 0.5):
        frac = sum(assign_split(p, test_size, 0) == "test" for p in PROMPTS) / len(PROMPTS)
        assert abs(frac - test_size) < 0.03


def test_extremes():
    assert {assign_split(p, 0.0, 0) for p in PROMPTS[:200]} == {"train"}
    assert {assign_split(p, 1.0, 0) for p in PROMPTS[:200]} == {"test"}


def test_independent_of_row_order_and_deterministic():
    shuffled = PROMPTS[:]
    random.Random(1).shuffle(shuffled)
    a = {render_prompt(p): assign_split(p, 0.2, 7) for p in PROMPTS}
    b = {render_prompt(p): assign_split(p, 0.2, 7) for p in shuffled}
    assert a == b
    assert 0.0 <= prompt_unit(PROMPTS[0], 0) < 1.0


def test_seed_changes_split():
    a = [assign_split(p, 0.2, 0) for p in PROMPTS]
    b = [assign_split(p, 0.2, 1) for p in PROMPTS]
    assert a != b
    assert sum(x != y for x, y in zip(a, b, strict=True)) > 400


def test_same_prompt_same_split():
    prompts = PROMPTS[:100] * 3
    splits = [assign_split(p, 0.3, 3) for p in prompts]
    assert prompts_in_both(prompts, splits) == 0
    assert prompts_in_both([prompt(1), prompt(1)], ["train", "test"]) == 1


def test_normalize_split():
    assert normalize_split("Train") == "train"
    assert [normalize_split(v) for v in ("test", "validation", "dev", "val")] == ["test"] * 4
    assert normalize_split(None) is None and normalize_split(" ") is None
    with pytest.raises(ValueError):
        normalize_split("holdout")


def test_split_from_name():
    assert split_from_name("x/train.jsonl.gz") == "train"
    assert split_from_name("data/test-00000-of-00001.parquet") == "test"
    assert split_from_name("x/validation.jsonl.gz") == "test"
    assert split_from_name("dsp/domain_specific_preference.test.json") is None
    assert split_from_name("x/trainer.jsonl") is None
