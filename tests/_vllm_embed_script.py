"""Run by tests/test_backend_vllm.py in a subprocess (vLLM spawns an engine process, so it needs __main__).

usage: python tests/_vllm_embed_script.py MODEL_DIR OUT_DIR [MAX_LENGTH]
Writes OUT_DIR/emb.npy, OUT_DIR/meta.json (inputs, token_lengths, fingerprint, dim, max_length).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

CONVERSATIONS = [
    ([{"role": "user", "content": "hello world"}], "the fox"),
    (
        [
            {"role": "system", "content": "prefers concise answers"},
            {"role": "user", "content": "what is the capital of france ?"},
        ],
        "paris is the capital of france .",
    ),
    (
        [{"role": "user", "content": "please write a short poem about the sea and the sky"}],
        " ".join(["the sea and the sky"] * 30),
    ),  # longer than the max_length below: truncated
    ([{"role": "user", "content": "explain gradient descent"}], "a helpful assistant answers questions clearly"),
]


def main() -> None:
    from pipeline.embed.backends.vllm_backend import VLLMBackend

    model, out = sys.argv[1], Path(sys.argv[2])
    max_length = int(sys.argv[3]) if len(sys.argv) > 3 else None
    t0 = time.time()
    # the engine settings of `micro embed --backend vllm` (none of them changes the vectors or the fingerprint)
    be = VLLMBackend(
        model,
        max_length=max_length,
        dtype="float32",
        enforce_eager=True,  # no torch.compile warm-up
        max_model_len=2 * (max_length or 256),
        max_num_batched_tokens=1024,
        gpu_memory_utilization=0.2,
    )
    t1 = time.time()
    inputs = []
    for prompt, response in CONVERSATIONS:
        inputs.append(be.render_response(prompt, response))
        inputs.append(be.render_prompt(prompt))
    emb = be.embed(inputs)
    t2 = time.time()
    # the path micro embed takes: prompts prepared in the background, then embedded
    prepared = be.prepare(inputs)
    assert [p["prompt_token_ids"] for p in prepared] == be.renderer.encode(inputs)
    assert np.array_equal(be.embed_prepared(prepared), emb)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "emb.npy", emb)
    meta = {
        "inputs": inputs,
        "token_lengths": be.token_lengths(inputs).tolist(),
        "fingerprint": be.fingerprint(),
        "dim": be.dim,
        "max_length": be.max_length,
        "chunk_size": be.chunk_size,
        "load_s": t1 - t0,
        "embed_s": t2 - t1,
    }
    (out / "meta.json").write_text(json.dumps(meta))
    be.close()


if __name__ == "__main__":
    main()
