"""The sentence-transformers backend's forward passes: token-budget batches (pipeline/embed/backends/st.py)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.embed.backends import check_options, get_backend
from pipeline.embed.backends.batching import CPU_BATCH_TOKENS

WORDS = "the reward model scores every response under the user's context with a mixture of linear heads".split()


def texts_of_many_lengths(n: int = 40, seed: int = 0) -> list[str]:
    """Texts of 1 to ~300 words (some over MiniLM's 256 tokens, half under 20 words), in random order."""
    rng = np.random.default_rng(seed)
    sizes = [int(rng.integers(1, 20 if i % 2 else 300)) for i in range(n)]
    return [" ".join(rng.choice(WORDS, size=k)) + f" ({i})" for i, k in enumerate(sizes)]


def test_passes_respect_the_token_budget_and_the_row_cap(st_backend, monkeypatch):
    texts = texts_of_many_lengths()
    monkeypatch.setattr(st_backend, "max_batch_tokens", 300)
    n = np.minimum([len(e.ids) for e in st_backend.tokenizer.encode_batch(texts)], st_backend.max_length)
    passes = st_backend.batches(texts)
    order = np.concatenate(passes)
    assert sorted(order.tolist()) == list(range(len(texts)))  # every text in exactly one pass
    assert (np.diff(n[order]) <= 0).all()  # longest first
    for pos in passes:
        assert len(pos) <= st_backend.batch_size
        assert len(pos) == 1 or len(pos) * n[pos].max() <= 300
    assert any(len(p) == 1 and n[p[0]] == 256 for p in passes)  # a full-length text (256 > 300 / 2) goes alone
    assert max(len(p) for p in passes) == st_backend.batch_size  # short ones fill the row cap
    monkeypatch.setattr(st_backend, "max_batch_tokens", None)  # rows only (the CUDA default)
    assert [len(p) for p in st_backend.batches(texts)] == [8] * 5


def test_vectors_do_not_depend_on_the_budget(st_backend, monkeypatch, one_torch_thread):
    texts = texts_of_many_lengths(24, seed=1)
    ref = st_backend._model.encode(texts, batch_size=1, convert_to_numpy=True)  # one text at a time
    for budget in (256, 2048, None):
        monkeypatch.setattr(st_backend, "max_batch_tokens", budget)
        got = st_backend.embed(texts)
        assert got.dtype == np.float32 and got.shape == (24, 384)
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0, err_msg=f"budget {budget}")
    assert st_backend.embed([]).shape == (0, 384)


def test_the_cpu_default_and_the_option():
    be = get_backend("sentence-transformers", device="cpu")
    assert be.max_batch_tokens is None  # resolved when the weights load (the device decides)
    be.load()
    assert be.max_batch_tokens == CPU_BATCH_TOKENS
    be.close()
    kw = check_options("st", max_batch_tokens=512, batch_size=16)
    assert kw == {"max_batch_tokens": 512, "batch_size": 16}
    be = get_backend("st", **kw)
    assert (be.max_batch_tokens, be.batch_size) == (512, 16)
    with pytest.raises(Exception, match="--max-batch-tokens must be >= 1, got 0"):
        get_backend("st", max_batch_tokens=0)
