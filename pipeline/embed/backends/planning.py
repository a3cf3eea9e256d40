"""Backends for the parent of a data-parallel embed: how workers build theirs, and a model-free planner.

:class:`BackendSpec` says how a worker builds its own backend (a loaded model is never pickled);
:class:`PlanningBackend` renders, counts tokens and fingerprints with the real backends' code without loading the
model, so the parent of ``micro embed --workers N`` never starts an engine of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from pipeline.embed.backends.chat import RenderedBackend
from pipeline.embed.backends.truncation import DEFAULT_TRUNCATION
from pipeline.errors import MicroError

GPU_BACKENDS = ("vllm", "transformers")


@dataclass
class BackendSpec:
    """How a worker builds its own backend: ``factory(name, model, **kwargs)`` (factory: an importable function)."""

    name: str
    model: str | None = None
    kwargs: dict = field(default_factory=dict)
    factory: Callable | None = None

    def build(self):
        if self.factory is None:
            from pipeline.embed.backends import get_backend

            return get_backend(self.name, self.model, **self.kwargs)
        return self.factory(self.name, self.model, **self.kwargs)


class PlanningBackend(RenderedBackend):
    """A chat-model backend's identity (fingerprint, rendering, token counts) without loading the model.

    The parent of ``--workers N`` transformers / vLLM workers only plans (render, dedupe, count tokens) and writes
    the run folder; the models (vLLM: the engines) live in the workers, which check that their fingerprint equals
    this one. Rendering and the fingerprint are the backends' own code (:mod:`pipeline.embed.backends.chat`,
    ``<Backend>.fingerprint``), so the two cannot drift.
    """

    pooling = "last"
    padding = "left"

    def __init__(
        self,
        name: str,
        model: str | None = None,
        *,
        max_length: int | None = None,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        gguf_file: str | None = None,
        device: str | None = None,
        chunk_size: int | None = None,
        truncation: str = DEFAULT_TRUNCATION,
        **_runtime_kwargs,
    ):
        from pipeline.embed.backends.device import device_kind, visible_gpus

        if name not in GPU_BACKENDS:
            raise ValueError(f"no planning backend for {name!r}")
        self.name = name
        kind = device_kind(device)
        _, config = self.load_identity(
            model,
            gguf_file,
            on_gpu=bool(visible_gpus()) if kind is None else kind == "cuda",
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            max_length=max_length,
            truncation=truncation,
        )
        self.dim = int(getattr(config, "hidden_size", 0) or 0)
        self.chunk_size = int(chunk_size or 4096)

    def embed(self, inputs):  # pragma: no cover - the workers embed
        raise MicroError(f"the {self.name} planning backend does not embed; its workers do")

    def close(self) -> None:
        pass


def parent_backend(spec: BackendSpec):
    """The backend the parent plans with (fingerprint, rendering, token counts, run.json). transformers and vLLM
    built by the stock factory would load the model (vLLM: start an engine on a GPU) in the parent as well:
    :class:`PlanningBackend` instead. Other backends are built as usual (sentence-transformers loads its weights
    on first use only, so the parent never does)."""
    stock = spec.factory is None or getattr(spec.factory, "__module__", None) == "pipeline.embed.backends"
    if spec.name in GPU_BACKENDS and stock:
        return PlanningBackend(spec.name, spec.model, **spec.kwargs)
    return spec.build()
