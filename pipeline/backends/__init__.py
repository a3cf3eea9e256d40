"""Embedding backends: sentence-transformers (default), transformers, vLLM."""
from __future__ import annotations

from pipeline.errors import MicroError

BACKENDS = ("sentence-transformers", "transformers", "vllm")


def get_backend(name: str, model: str | None = None, **kw):
    """Instantiate a backend by name (heavy imports happen here, not at import time)."""
    if name in ("sentence-transformers", "st"):
        from pipeline.backends.st import SentenceTransformersBackend

        return SentenceTransformersBackend(model, **kw)
    if name == "transformers":
        from pipeline.backends.hf import TransformersBackend

        return TransformersBackend(model, **kw)
    if name == "vllm":
        from pipeline.backends.vllm_backend import VLLMBackend

        return VLLMBackend(model, **kw)
    raise MicroError(f"unknown backend '{name}': choose one of {', '.join(BACKENDS)}")
