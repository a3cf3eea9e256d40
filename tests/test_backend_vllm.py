"""vLLM backend == transformers backend on the tiny Llama (same token ids, same last-token state).

vLLM starts engine processes, so the vLLM side runs in a subprocess (tests/_vllm_embed_script.py). By default the
engine runs in-process inside that subprocess (VLLM_ENABLE_V1_MULTIPROCESSING=0: ~40 s instead of ~80 s on 2 CPU
cores); set MICRO_TEST_VLLM_MP=1 to exercise the default multi-process engine instead.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.embed.backends.hf import TransformersBackend

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed"),
]

ROOT = Path(__file__).resolve().parents[1]
MAX_LENGTH = 48  # one input is longer: both backends must truncate identically


def test_vllm_matches_transformers(tiny_llama_dir, tmp_path):
    env = dict(os.environ)
    env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "1" if os.environ.get("MICRO_TEST_VLLM_MP") == "1" else "0")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    out = tmp_path / "vllm_out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "_vllm_embed_script.py"), str(tiny_llama_dir), str(out), str(MAX_LENGTH)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    emb = np.load(out / "emb.npy")
    meta = json.loads((out / "meta.json").read_text())
    inputs = meta["inputs"]

    hf = TransformersBackend(str(tiny_llama_dir), batch_size=3, max_length=MAX_LENGTH, dtype="float32")
    # the same rendering (history truncation included) as the vLLM backend's
    assert inputs == [
        hf.render_response(p, r) if i % 2 == 0 else hf.render_prompt(p) for (p, r) in _convs() for i in (0, 1)
    ]
    ref = hf.embed(inputs)
    lengths = hf.token_lengths(inputs)

    assert emb.shape == ref.shape == (len(inputs), 64) and emb.dtype == np.float32
    assert meta["token_lengths"] == lengths.tolist()
    assert max(lengths) > MAX_LENGTH  # truncation exercised
    diff = float(np.abs(emb - ref).max())
    print(f"vLLM vs transformers max abs diff: {diff:.3g}; vLLM load {meta['load_s']:.1f}s")
    assert diff <= 1e-4

    fp_v, fp_t = meta["fingerprint"], hf.fingerprint()
    assert fp_v["backend"] == "vllm" and fp_t["backend"] == "transformers"
    assert {k: v for k, v in fp_v.items() if k != "backend"} == {k: v for k, v in fp_t.items() if k != "backend"}
    assert meta["chunk_size"] >= 4096 and meta["dim"] == 64 and meta["max_length"] == MAX_LENGTH
    hf.close()


def _convs():
    spec = importlib.util.spec_from_file_location("_vllm_embed_script", ROOT / "tests" / "_vllm_embed_script.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.CONVERSATIONS


def test_engine_settings_are_checked_before_the_engine_starts(tiny_llama_dir):
    from pipeline.embed.backends.vllm_backend import VLLMBackend, check_engine_options
    from pipeline.errors import MicroError

    with pytest.raises(MicroError, match="--max-model-len 32 is below the max length 64"):
        VLLMBackend(str(tiny_llama_dir), max_length=64, max_model_len=32)
    with pytest.raises(MicroError, match="--gpu-memory-utilization must be > 0 and <= 1"):
        VLLMBackend(str(tiny_llama_dir), gpu_memory_utilization=0.0)
    with pytest.raises(MicroError, match="--device must be one of"):
        VLLMBackend(str(tiny_llama_dir), device="npu")
    check_engine_options(0.5, 4096, 8192, 2)  # valid values pass
