"""The history truncation mode (pipeline.embed.backends.truncation): what it keeps, in which order, and the counts."""

from __future__ import annotations

import re

import pytest

from pipeline.embed.backends.base import render_plain
from pipeline.embed.backends.truncation import HistoryRenderer, fit_history, offsets_cut


def _words(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in re.finditer(r"\S+", text)]


def _render(messages, response):
    return render_plain([*messages, {"role": "assistant", "content": response}] if response is not None else messages)


def _count(text):
    return len(_words(text))


def _cut(text, n, keep):
    return offsets_cut(_words(text), text, n, keep)


def _fit(messages, response, max_length):
    return fit_history(messages, response, max_length, _render, _count, _cut, _count)


CONV = [
    {"role": "system", "content": "I am an academic"},
    {"role": "user", "content": "u1 " * 10},
    {"role": "assistant", "content": "a1 " * 10},
    {"role": "user", "content": "u2 " * 10},
    {"role": "assistant", "content": "a2 " * 10},
    {"role": "user", "content": "final question here"},
]


def test_short_conversations_are_untouched():
    text, n = _fit(CONV[:2], "ok", 100)
    assert text == _render(CONV[:2], "ok") and n == _count(text)


def test_oldest_turns_go_first_the_system_context_and_final_user_turn_stay():
    full = _render(CONV, "the answer")
    text, n = _fit(CONV, "the answer", _count(full) - 5)
    assert n == _count(full) and _count(text) <= _count(full) - 5
    assert "I am an academic" in text and "final question here" in text and "the answer" in text
    assert "u1" not in text and "a2" in text  # only as many old turns as needed went
    text2, _ = _fit(CONV, "the answer", 20)
    assert "u1" not in text2 and "a2" not in text2 and "u2" not in text2
    assert text2.startswith("System: I am an academic") and "final question here" in text2


def test_then_the_response_is_cut_from_its_end_keeping_a_quarter_of_the_budget():
    response = " ".join(f"r{i}" for i in range(100))
    text, n = _fit(CONV, response, 40)
    assert _count(text) <= 40 and n > 100
    assert "final question here" in text and "r0 r1 r2" in text and "r99" not in text
    tiny = _fit(CONV, response, 12)[0]  # the final user turn loses its start before the response goes below 1/4
    kept = re.search(r"Assistant: (.*)", tiny).group(1).split()
    assert kept[0] == "r0" and len(kept) >= 3 and _count(tiny) <= 12


def test_prompts_alone_drop_old_turns_then_cut_the_user_turn_from_its_start():
    text, _ = _fit(CONV, None, 10)
    assert _count(text) <= 10 and text.endswith("final question here") and "u1" not in text


def test_renderer_remembers_the_untruncated_counts():
    r = HistoryRenderer(20, _render, _count, _count, _cut)
    text = r(CONV, "the answer")
    assert _count(text) <= 20
    assert r.lengths([text, "a b"], [_count(text), 2]) == [_count(_render(CONV, "the answer")), 2]


@pytest.mark.slow
def test_sentence_transformers_backend_history_mode():
    from pipeline.embed.backends.st import SentenceTransformersBackend

    be = SentenceTransformersBackend(max_length=32, truncation="history")
    text = be.render_response(CONV, "Paris is the capital of France. " * 10)
    assert be._count(text) <= 32 and "final question here" in text and "Paris is the capital" in text
    assert be.token_lengths([text])[0] > 32  # reported: the conversation did not fit
    assert be.fingerprint()["truncation"] == "history"


def test_transformers_backend_history_mode_keeps_the_template(tiny_llama_dir):
    from pipeline.embed.backends.hf import TransformersBackend

    be = TransformersBackend(str(tiny_llama_dir), max_length=24)
    assert be.fingerprint()["truncation"] == "history"  # the default
    conv = [
        {"role": "user", "content": "the quick brown fox " * 3},
        {"role": "assistant", "content": "hello world"},
        {"role": "user", "content": "what is the capital of france ?"},
    ]
    text = be.render_response(conv, "paris is the capital of france . " * 4)
    ids = be.renderer.encode([text])[0]
    assert len(ids) <= 24 and text.rstrip().endswith("</s>")  # the template's end-of-turn survives the cut
    assert "what is the capital of france ?" in text and "quick brown" not in text
    assert be.token_lengths([text])[0] > 24
    be.close()
