"""pipeline.embed.stream: token-budget batches in input order, out-of-memory retry, background work."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from cache.store import text_keys
from conftest import FakeBackend, FakeTokenBackend
from pipeline.embed.backends.batching import batch_cost
from pipeline.embed.embed import embed_missing, open_store
from pipeline.embed.stream import chunk_stream, length_order, prefetched, token_stream
from pipeline.errors import MicroError


def texts_of_lengths(lengths, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(f"w{rng.integers(1_000_000)}" for _ in range(n)) for n in lengths]


def embed_all(tmp_path, backend, texts, **kw):
    store = open_store(tmp_path / "cache", backend, "float32")
    keys = text_keys(store.fingerprint_id, texts)
    n = embed_missing(store, backend, texts, keys, **kw)
    return n, open_store(tmp_path / "cache", backend, "float32").lookup(keys)


@pytest.mark.parametrize("packed", [False, True])
def test_token_budget_batches_are_sorted_within_budget_and_in_input_order(tmp_path, packed):
    lengths = np.random.default_rng(1).integers(1, 30, 200)
    texts = texts_of_lengths(lengths)
    be = FakeTokenBackend(max_batch_tokens=60, packed=packed, chunk_size=16)
    n, got = embed_all(tmp_path, be, texts)
    assert n == 200
    np.testing.assert_array_equal(got, np.stack([FakeTokenBackend.vector_of(t) for t in texts]))
    costs = [batch_cost([len(x) for x in b], packed) for b in be.launched]
    assert all(c <= 60 for c in costs) and sum(map(len, be.launched)) == 200
    assert len(be.launched) < 200 / 2  # really batched
    longest = [max(len(x) for x in b) for b in be.launched]
    assert longest == sorted(longest, reverse=True)  # globally sorted by token count, longest first
    for b, nxt in zip(be.launched, be.launched[1:]):  # full batches: the next text would have broken the budget
        assert batch_cost([len(x) for x in b] + [len(nxt[0])], packed) > 60


def test_max_rows_caps_batches(tmp_path):
    be = FakeTokenBackend(max_batch_tokens=10_000, max_batch_rows=7)
    n, _ = embed_all(tmp_path, be, texts_of_lengths([3] * 50))
    assert n == 50 and [len(b) for b in be.launched] == [7] * 7 + [1]


def test_out_of_memory_halves_the_budget_retries_and_says_so_once(tmp_path):
    lengths = np.random.default_rng(2).integers(1, 12, 120)
    texts = texts_of_lengths(lengths, seed=2)
    said: list[str] = []
    be = FakeTokenBackend(max_batch_tokens=256, capacity=40, chunk_size=10)
    n, got = embed_all(tmp_path, be, texts, log=said.append)
    assert n == 120
    np.testing.assert_array_equal(got, np.stack([FakeTokenBackend.vector_of(t) for t in texts]))
    assert len(said) == 1 and "256" in said[0] and "out of GPU memory" in said[0]
    assert be.released >= 2  # from ~256 down to <= 40 takes at least two failed passes
    assert 10 <= be.max_batch_tokens <= 40  # the lowered budget holds for the backend's later calls
    assert all(batch_cost([len(x) for x in b], False) <= 40 for b in be.launched)
    assert sum(map(len, be.launched)) == 120  # nothing embedded twice, nothing lost
    # a second call starts at the lowered budget: no failure, no message
    said.clear()
    released = be.released
    embed_all(tmp_path / "again", be, texts_of_lengths(lengths, seed=3), log=said.append)
    assert said == [] and be.released == released


def test_a_text_that_does_not_fit_alone_is_a_one_line_error(tmp_path):
    be = FakeTokenBackend(max_batch_tokens=64, capacity=8)
    with pytest.raises(MicroError, match="one text of 9 tokens alone"):
        embed_all(tmp_path, be, texts_of_lengths([2, 9, 3]))


def test_token_stream_yields_each_position_once():
    texts = texts_of_lengths([5, 1, 9, 9, 2, 7])
    be = FakeTokenBackend(max_batch_tokens=18)
    order = length_order([5, 1, 9, 9, 2, 7], 10_000)
    assert order.tolist() == [2, 3, 5, 0, 4, 1]
    seen = np.concatenate([pos for pos, _ in token_stream(be, texts, order)])
    assert seen.tolist() == order.tolist()
    assert length_order([5, 50, 40], 30).tolist() == [1, 2, 0]  # truncated lengths tie: input order


def test_prefetched_runs_ahead_in_a_thread_and_raises_its_errors():
    names: list[str] = []

    def make():
        for i in range(5):
            names.append(threading.current_thread().name)
            if i == 3:
                raise ValueError("bad item 3")
            yield i

    got = []
    with pytest.raises(ValueError, match="bad item 3"):
        for x in prefetched(make, 2):
            got.append(x)
    assert got == [0, 1, 2] and set(names) == {"micro-prefetch"}

    started = threading.Event()

    def endless():
        started.set()
        i = 0
        while True:
            yield i
            i += 1

    it = prefetched(endless, 2)
    assert next(it) == 0 and started.is_set()
    it.close()  # the consumer stops early: the thread ends
    assert not any(t.name == "micro-prefetch" and t.is_alive() for t in threading.enumerate())


class PreparingBackend(FakeBackend):
    """A chunk backend with prepare / embed_prepared (as vLLM): records where preparation ran."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.prepared_in: list[str] = []

    def prepare(self, texts):
        self.prepared_in.append(threading.current_thread().name)
        return list(texts)

    def embed_prepared(self, prepared):
        return self.embed(prepared)


def test_chunk_stream_prepares_the_next_chunk_in_the_background(tmp_path):
    texts = texts_of_lengths(range(1, 12))
    be = PreparingBackend(chunk_size=3)
    out = list(chunk_stream(be, texts, length_order(be.token_lengths(texts), be.max_length)))
    assert [len(p) for p, _ in out] == [3, 3, 3, 2]
    assert set(be.prepared_in) == {"micro-prefetch"}
    for pos, vecs in out:
        np.testing.assert_array_equal(vecs, np.stack([FakeBackend.vector(texts[i]) for i in pos]))
    n, got = embed_all(tmp_path, PreparingBackend(chunk_size=3), texts)
    assert n == 11 and np.array_equal(got, np.stack([FakeBackend.vector(t) for t in texts]))
