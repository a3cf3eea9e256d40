"""Embedding backends: sentence-transformers (default), transformers, vLLM."""

from __future__ import annotations

from pipeline.errors import MicroError

BACKENDS = ("sentence-transformers", "transformers", "vllm")

# options that only some backends take: keyword -> (CLI spelling, backends)
_ONLY_FOR = {
    "max_batch_tokens": ("--max-batch-tokens", ("sentence-transformers", "transformers")),
    "attn_implementation": ("--attn-implementation", ("transformers",)),
    "gpu_memory_utilization": ("--gpu-memory-utilization", ("vllm",)),
    "max_model_len": ("--max-model-len", ("vllm",)),
    "max_num_batched_tokens": ("--max-num-batched-tokens", ("vllm",)),
    "enforce_eager": ("--enforce-eager", ("vllm",)),
    "tensor_parallel_size": ("--tensor-parallel-size", ("vllm",)),
    "trust_remote_code": ("--trust-remote-code", ("transformers", "vllm")),
}
_HINTS = {
    ("max_batch_tokens", "vllm"): " (vLLM schedules by --max-num-batched-tokens)",
    ("max_num_batched_tokens", "transformers"): " (the transformers backend: --max-batch-tokens)",
}


def canonical_name(name: str) -> str:
    name = "sentence-transformers" if name == "st" else name
    if name not in BACKENDS:
        raise MicroError(f"unknown backend '{name}': choose one of {', '.join(BACKENDS)}")
    return name


def check_options(name: str, **opts) -> dict:
    """Validate backend options before any model loads (one-line :class:`MicroError` naming the option) and
    return the keyword arguments for :func:`get_backend`, options left at None dropped."""
    from pipeline import checks as C
    from pipeline.embed.backends.device import check_device
    from pipeline.embed.backends.hf import check_attention
    from pipeline.embed.backends.vllm_backend import check_engine_options

    name = canonical_name(name)
    kw = {k: v for k, v in opts.items() if v is not None}
    for key, (option, backends) in _ONLY_FOR.items():
        if key in kw and name not in backends:
            raise MicroError(
                f"{option} applies to the {' and '.join(backends)} backend{'s' if len(backends) > 1 else ''}, "
                f"not {name}" + _HINTS.get((key, name), "")
            )
    for key, option in (
        ("batch_size", "--batch-size"),
        ("max_length", "--max-length"),
        ("max_batch_tokens", "--max-batch-tokens"),
    ):
        C.integer(kw.get(key), option, optional=True)
    if "device" in kw:
        kw["device"] = check_device(kw["device"])
    if "attn_implementation" in kw:
        check_attention(kw["attn_implementation"])
    check_engine_options(
        kw.get("gpu_memory_utilization"),
        kw.get("max_model_len"),
        kw.get("max_num_batched_tokens"),
        kw.get("tensor_parallel_size", 1),
    )
    return kw


def get_backend(name: str, model: str | None = None, **kw):
    """Instantiate a backend by name (heavy imports happen here, not at import time)."""
    name = canonical_name(name)
    if name == "sentence-transformers":
        from pipeline.embed.backends.st import SentenceTransformersBackend

        return SentenceTransformersBackend(model, **kw)
    if name == "transformers":
        from pipeline.embed.backends.hf import TransformersBackend

        return TransformersBackend(model, **kw)
    from pipeline.embed.backends.vllm_backend import VLLMBackend

    return VLLMBackend(model, **kw)
