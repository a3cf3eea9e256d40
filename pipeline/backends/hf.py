"""transformers backend: ``AutoModel`` final-layer hidden state of the last real token.

* Base model (``AutoModel``), ``last_hidden_state`` of the final layer, pooled at the last non-pad token.
* LEFT padding (so the last real token is always at position -1) with explicit ``position_ids`` counted from each
  sequence's first real token, so a padded row computes what the unpadded sequence would.
* Inputs are sorted by token length into batches of ``batch_size`` and the vectors restored to input order.
* Raw vectors (no normalisation); bf16 on GPU and fp32 on CPU unless ``dtype`` says otherwise.
* Rendering/tokenisation/truncation: :mod:`pipeline.backends.chat` (shared with the vLLM backend). Inputs longer
  than ``max_length`` tokens keep their last ``max_length`` tokens (``truncation='right'``: first); ``token_lengths`` reports untruncated counts.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.backends.base import check_max_length, config_positions, model_load_error, resolve_model_path
from pipeline.backends.chat import (ChatRenderer, RenderedBackend, default_max_length, load_tokenizer,
                                    quiet_transformers)
from pipeline.errors import MicroError

_DTYPES = {"float32": "float32", "fp32": "float32", "float": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16", "half": "float16"}


def resolve_dtype(dtype, on_gpu: bool) -> str:
    """Canonical dtype name: the given one, else bfloat16 on GPU and float32 on CPU."""
    if dtype is None or dtype == "auto":
        return "bfloat16" if on_gpu else "float32"
    name = str(dtype).replace("torch.", "")
    if name not in _DTYPES:
        raise MicroError(f"unknown dtype '{dtype}': use float32, bfloat16 or float16")
    return _DTYPES[name]


def split_gguf(path: Path, gguf_file: str | None) -> tuple[Path, str | None]:
    """(folder, gguf file name): a path to a .gguf file is split into its folder and name."""
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name
    return path, gguf_file


class TransformersBackend(RenderedBackend):
    """Embeds with a Hugging Face ``AutoModel``: last-token pooling of the final hidden layer."""

    name = "transformers"
    pooling = "last"
    padding = "left"

    def __init__(self, model: str | None = None, *, batch_size: int = 8, max_length: int | None = None,
                 device: str | None = None, dtype: str | None = None, trust_remote_code: bool = False,
                 gguf_file: str | None = None, chunk_size: int | None = None, truncation: str = "left"):
        import torch
        from transformers import AutoConfig, AutoModel

        quiet_transformers()
        self.model_path = resolve_model_path(model)
        load_dir, self.gguf_file = split_gguf(self.model_path, gguf_file)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = resolve_dtype(dtype, self.device.type == "cuda")
        kw = {"local_files_only": True, "trust_remote_code": trust_remote_code}
        if self.gguf_file:
            kw["gguf_file"] = self.gguf_file
        try:
            self.tokenizer = load_tokenizer(load_dir, trust_remote_code=trust_remote_code, gguf_file=self.gguf_file)
            config = AutoConfig.from_pretrained(str(load_dir), **kw)
            check_max_length(max_length, config_positions(config), self.model_path)
            self.model = AutoModel.from_pretrained(str(load_dir), dtype=getattr(torch, self.dtype), **kw)
        except MicroError:
            raise
        except ImportError as e:
            hint = " (GGUF files need `pip install gguf`)" if self.gguf_file else ""
            raise MicroError(f"cannot load '{self.model_path}' with transformers: {e}{hint}") from e
        except (OSError, ValueError) as e:
            raise MicroError(f"cannot load model from '{self.model_path}' with transformers: {e}") from e
        except Exception as e:
            if not self.gguf_file:
                raise model_load_error(self.model_path, e) from None  # garbage / truncated weights
            raise MicroError(f"cannot load GGUF file '{self.gguf_file}' with transformers: {e}") from e
        self.model.to(self.device).eval()
        self.max_length = int(max_length) if max_length is not None else default_max_length(self.tokenizer, config)
        self.renderer = ChatRenderer(self.tokenizer, self.max_length, truncation)
        self.batch_size = int(batch_size)
        self.chunk_size = int(chunk_size or max(256, 16 * self.batch_size))
        self.dim = int(getattr(config, "hidden_size", 0) or self.model.get_input_embeddings().embedding_dim)
        self._pass_positions = "position_ids" in inspect.signature(self.model.forward).parameters
        self._weights_hash = None

    # ---------- embedding ----------
    def embed(self, inputs: Sequence[str]) -> np.ndarray:
        import torch

        if self.model is None:
            raise MicroError("the transformers backend was closed")
        ids = self.renderer.encode(inputs)
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        if not ids:
            return out
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # longest first: OOM shows up at once
        pad = self.renderer.pad_id()
        with torch.inference_mode():
            for s in range(0, len(order), self.batch_size):
                idx = order[s:s + self.batch_size]
                width = max(max(len(ids[i]) for i in idx), 1)
                input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for r, i in enumerate(idx):
                    n = len(ids[i])
                    if n:
                        input_ids[r, width - n:] = torch.tensor(ids[i], dtype=torch.long)
                        mask[r, width - n:] = 1
                kw = {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}
                if self._pass_positions:
                    kw["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(self.device)
                res = self.model(**kw)
                hidden = res.last_hidden_state if hasattr(res, "last_hidden_state") else res[0]
                out[idx] = hidden[:, -1, :].float().cpu().numpy()  # left padding: last real token at -1
        return out

    def close(self) -> None:
        self.model = None
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # pragma: no cover
            pass
