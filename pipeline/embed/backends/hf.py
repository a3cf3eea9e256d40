"""transformers backend: ``AutoModel`` final-layer hidden state of the last real token.

* Base model (``AutoModel``, ``attn_implementation`` sdpa by default), ``last_hidden_state`` of the final layer,
  pooled at the last real token; raw vectors (no normalisation); bf16 on GPU and fp32 on CPU unless ``dtype`` says
  otherwise; ``device`` auto (CUDA when present) | cpu | cuda | cuda:N.
* Token-budget batches (:mod:`pipeline.embed.backends.batching`): inputs sorted by token count, at most
  ``max_batch_tokens`` token slots per forward pass (default: what free GPU memory holds, a fixed value on CPU),
  at most ``batch_size`` rows if given; vectors come back in input order. The token-level interface
  (``encode``/``collate``/``launch``/``finish``) lets :mod:`pipeline.embed.stream` overlap tokenisation and shard
  writes with the forward passes.
* Batch layouts, each computing for every text what it would compute alone (up to kernel rounding):
  **packed** (flash attention, causal model): the batch is one padding-free sequence with per-text position ids
  and ``cu_seq_lens``, so no token attends across texts and no padding is computed; **right** (causal model,
  other attention): right padding and no mask, so causal attention never lets a real token see a pad, and sdpa
  runs its fastest causal kernel; **left** (bidirectional encoders): left padding, an attention mask and position
  ids counted from each row's first real token.
* Rendering/tokenisation/truncation: :mod:`pipeline.embed.backends.chat` (shared with the vLLM backend). Inputs longer
  than ``max_length`` tokens keep their last ``max_length`` tokens (``truncation='right'``: first);
  ``token_lengths`` reports untruncated counts.
"""

from __future__ import annotations

import importlib.util
import inspect
from contextlib import nullcontext
from itertools import chain
from typing import Sequence

import numpy as np

from pipeline import checks as C
from pipeline.embed.backends.base import model_load_error
from pipeline.embed.backends.batching import CPU_BATCH_TOKENS, activation_bytes_per_token, budget_for_memory
from pipeline.embed.backends.chat import RenderedBackend
from pipeline.embed.backends.device import resolve_device
from pipeline.embed.backends.truncation import DEFAULT_TRUNCATION
from pipeline.errors import MicroError

DEFAULT_ATTENTION = "sdpa"
ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3")
DEFAULT_CHUNK = 1024  # texts per cache shard


def check_attention(name: str, device=None, dtype: str | None = None) -> str:
    """A valid ``--attn-implementation``; flash attention also needs its package, CUDA and a 16-bit dtype."""
    if name not in ATTENTION:
        raise MicroError(f"--attn-implementation must be one of {', '.join(ATTENTION)}, got {name!r}")
    if name.startswith("flash_attention"):
        package = "flash_attn" if name == "flash_attention_2" else "flash_attn_interface"
        if device is not None and importlib.util.find_spec(package) is None:
            raise MicroError(
                f"--attn-implementation {name} needs the {package} package (pip install flash-attn); "
                f"the default is {DEFAULT_ATTENTION}"
            )
        if device is not None and device.type != "cuda":
            raise MicroError(f"--attn-implementation {name} runs on CUDA only (device {device})")
        if dtype == "float32":
            raise MicroError(f"--attn-implementation {name} needs --dtype bfloat16 or float16")
    return name


def is_causal(model) -> bool:
    """Whether every attention module of ``model`` is causal (decoders), so right padding needs no mask."""
    flags = [m.is_causal for m in model.modules() if isinstance(getattr(m, "is_causal", None), bool)]
    return bool(flags) and all(flags)


def batch_layout(attn_implementation: str, causal: bool, takes_positions: bool, packed: bool | None = None) -> str:
    """'packed' (flash attention on a causal model; ``packed=True`` forces it for any attention of a causal model),
    'right' (other causal models) or 'left' (bidirectional encoders)."""
    if packed is None:
        packed = attn_implementation.startswith("flash_attention")
    if causal and takes_positions and packed:
        return "packed"
    return "right" if causal else "left"


class TransformersBackend(RenderedBackend):
    """Embeds with a Hugging Face ``AutoModel``: last-token pooling of the final hidden layer."""

    name = "transformers"
    pooling = "last"
    padding = "left"  # identity field: last-token pooling that ignores padding (vectors are layout-independent)

    def __init__(
        self,
        model: str | None = None,
        *,
        batch_size: int | None = None,
        max_batch_tokens: int | None = None,
        max_length: int | None = None,
        device: str | None = None,
        dtype: str | None = None,
        attn_implementation: str | None = None,
        trust_remote_code: bool = False,
        gguf_file: str | None = None,
        chunk_size: int | None = None,
        truncation: str = DEFAULT_TRUNCATION,
        packed: bool | None = None,
    ):
        import torch
        from transformers import AutoModel

        self.device = resolve_device(device)
        self.max_batch_rows = C.integer(batch_size, "--batch-size", optional=True)
        budget = C.integer(max_batch_tokens, "--max-batch-tokens", optional=True)
        load_dir, config = self.load_identity(
            model,
            gguf_file,
            on_gpu=self.device.type == "cuda",
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            max_length=max_length,
            truncation=truncation,
        )
        self.attn_implementation = check_attention(attn_implementation or DEFAULT_ATTENTION, self.device, self.dtype)
        kw = {"local_files_only": True, "trust_remote_code": trust_remote_code}
        if self.gguf_file:
            kw["gguf_file"] = self.gguf_file
        try:
            self.model = AutoModel.from_pretrained(
                str(load_dir), dtype=getattr(torch, self.dtype), attn_implementation=self.attn_implementation, **kw
            )
        except ImportError as e:
            hint = " (GGUF files need `pip install gguf`)" if self.gguf_file else ""
            raise MicroError(f"cannot load '{self.model_path}' with transformers: {e}{hint}") from e
        except (OSError, ValueError) as e:
            raise MicroError(
                f"cannot load model from '{self.model_path}' with transformers "
                f"(--attn-implementation {self.attn_implementation}): {e}"
            ) from e
        except Exception as e:
            if not self.gguf_file:
                raise model_load_error(self.model_path, e) from None  # garbage / truncated weights
            raise MicroError(f"cannot load GGUF file '{self.gguf_file}' with transformers: {e}") from e
        self.model.to(self.device).eval()
        self.dim = int(getattr(config, "hidden_size", 0) or self.model.get_input_embeddings().embedding_dim)
        params = inspect.signature(self.model.forward).parameters
        self._forward_kw = {"use_cache": False} if "use_cache" in params else {}
        causal = is_causal(self.model)
        self.layout = batch_layout(self.attn_implementation, causal, "position_ids" in params, packed)
        self.packed = self.layout == "packed"
        # tokenise ahead in a background thread only where the forward pass does not need the CPU cores itself
        self.prefetch = self.device.type == "cuda"
        self.max_batch_tokens = budget or self._default_budget(config)
        self.batch_size = self.max_batch_rows
        self.chunk_size = int(chunk_size or DEFAULT_CHUNK)
        self.pad_id = self.renderer.pad_id()

    def _default_budget(self, config) -> int:
        if self.device.type != "cuda":
            return CPU_BATCH_TOKENS
        import torch

        free, _ = torch.cuda.mem_get_info(self.device)
        per = activation_bytes_per_token(
            config,
            4 if self.dtype == "float32" else 2,
            self.max_length,
            eager_attention=self.attn_implementation == "eager",
        )
        return budget_for_memory(free, per)

    # ---------- token-level interface (pipeline.embed.stream) ----------
    def encode(self, inputs: Sequence[str]) -> list[list[int]]:
        """Token ids of each input exactly as the model sees them (truncated to ``max_length``)."""
        return self.renderer.encode(inputs)

    def collate(self, ids: list[list[int]]) -> dict:
        """Host tensors of one batch in this backend's layout (pinned on CUDA, for non-blocking copies)."""
        import torch

        ids = [x if len(x) else [self.pad_id] for x in ids]
        lens = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        out: dict = {}
        if self.layout == "packed":
            ends = np.cumsum(lens)
            flat = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=int(ends[-1]))
            pos = np.arange(int(ends[-1]), dtype=np.int64) - np.repeat(ends - lens, lens)
            cu = np.concatenate([[0], ends]).astype(np.int32)
            out["input_ids"], out["position_ids"] = torch.from_numpy(flat[None]), torch.from_numpy(pos[None])
            out["gather"] = torch.from_numpy(ends - 1)
            if self.attn_implementation.startswith("flash_attention"):  # varlen kernels without a device sync
                out["cu_seq_lens_q"] = out["cu_seq_lens_k"] = torch.from_numpy(cu)
                out["max_length_q"] = out["max_length_k"] = int(lens.max())
        else:
            width = int(lens.max())
            arr = np.full((len(ids), width), self.pad_id, dtype=np.int64)
            if self.layout == "right":
                for r, x in enumerate(ids):
                    arr[r, : len(x)] = x
                out["gather"] = torch.from_numpy(lens - 1)
            else:
                mask = np.zeros((len(ids), width), dtype=np.int64)
                for r, x in enumerate(ids):
                    arr[r, width - len(x) :] = x
                    mask[r, width - len(x) :] = 1
                out["attention_mask"] = torch.from_numpy(mask)
                out["position_ids"] = torch.from_numpy(np.maximum(mask.cumsum(-1) - 1, 0))
            out["input_ids"] = torch.from_numpy(arr)
        if self.device.type == "cuda":
            out = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in out.items()}
        return out

    def launch(self, batch: dict):
        """Queue the forward pass of a collated batch on the device; returns a handle for :meth:`finish`."""
        import torch

        if self.model is None:
            raise MicroError("the transformers backend was closed")
        cuda = self.device.type == "cuda"
        with torch.inference_mode(), torch.cuda.device(self.device) if cuda else nullcontext():
            kw = {
                k: v.to(self.device, non_blocking=cuda) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
            }
            gather = kw.pop("gather", None)
            res = self.model(**kw, **self._forward_kw)
            hidden = res.last_hidden_state if hasattr(res, "last_hidden_state") else res[0]
            if self.layout == "packed":
                rows = hidden[0].index_select(0, gather)
            elif self.layout == "right":
                rows = hidden[torch.arange(hidden.shape[0], device=hidden.device), gather]
            else:
                rows = hidden[:, -1]  # left padding: the last real token is at -1
            rows = rows.float().contiguous()  # never a view that keeps the batch's hidden states alive
            if not cuda:
                return rows, None
            host = torch.empty(rows.shape, dtype=torch.float32, pin_memory=True)
            host.copy_(rows, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            return host, done

    def finish(self, handle) -> np.ndarray:
        """(b, dim) float32 vectors of a launched batch (waits for the device)."""
        rows, done = handle
        if done is None:
            return rows.numpy()
        done.synchronize()
        return rows.numpy().copy()

    def release_memory(self) -> None:
        """After an out-of-memory error: hand cached blocks back so the retried (smaller) batch can allocate."""
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    # ---------- embedding ----------
    def embed(self, inputs: Sequence[str]) -> np.ndarray:
        from pipeline.embed.stream import length_order, token_stream

        if self.model is None:
            raise MicroError("the transformers backend was closed")
        inputs = list(inputs)
        out = np.zeros((len(inputs), self.dim), dtype=np.float32)
        if inputs:
            for pos, vecs in token_stream(self, inputs, length_order(self.token_lengths(inputs), self.max_length)):
                out[pos] = vecs
        return out

    def close(self) -> None:
        self.model = None
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # pragma: no cover
            pass
