"""What every embedding backend provides, and helpers they share.

A backend turns the *exact model input* (a string produced by ``render_*``) into a vector. The cache key is
hash(fingerprint + exact input), so two backends that render the same text differently never share vectors.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from pipeline import checks as C
from pipeline.errors import MicroError, ModelLoadError, OptionError, first_line

Messages = Sequence[dict]  # [{"role": "user"|"assistant"|"system", "content": str}, ...]


class Backend(Protocol):
    """Embedding backend interface (see ``pipeline.embed.backends.get_backend``)."""

    name: str  # "sentence-transformers" | "transformers" | "vllm"
    dim: int  # embedding width
    max_length: int  # max tokens per input; longer inputs are truncated (or skipped by the caller)
    chunk_size: int  # how many inputs the caller should pass to one ``embed`` call

    def fingerprint(self) -> dict:
        """JSON-able identity of the embedder: backend, model, weights_hash, pooling, dtype, max_length,
        chat_template."""

    def render_response(self, prompt: Messages, response: str) -> str:
        """Exact model input for prompt + final assistant response."""

    def render_prompt(self, prompt: Messages) -> str:
        """Exact model input for the prompt alone (chat models: with the generation prompt)."""

    def token_lengths(self, inputs: Sequence[str]) -> np.ndarray:
        """(n,) int: untruncated token count of each input as the model would see it."""

    def embed(self, inputs: Sequence[str]) -> np.ndarray:
        """(n, dim) float32 vectors, in input order."""

    def close(self) -> None:
        """Free the model (and any engine process)."""


def render_plain(messages: Messages) -> str:
    """Render messages for a model without a chat template: 'Role: content' blocks separated by blank lines."""
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def with_context(prompt: Messages, context: str) -> list[dict]:
    """The context+prompt conversation: the user's criterion as a leading system message."""
    return [{"role": "system", "content": context}, *prompt]


def fingerprint_id(fp: dict) -> str:
    """Short stable id of a fingerprint dict (16 hex chars of sha256 over canonical JSON)."""
    blob = json.dumps(fp, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".onnx", ".json", ".model", ".txt")


def weights_hash(model_dir: str | os.PathLike, sample: int = 1 << 20) -> str:
    """Fast content hash of a local model folder.

    Hashes every file's relative name and size, the whole of small files (config, tokenizer) and the first
    and last ``sample`` bytes of large weight files: changed weights or config change the hash, and a
    16 GB checkpoint hashes in milliseconds. Only ``.cache`` folders *inside*
    the model folder (download metadata) are skipped, never an ancestor: a model stored under ``~/.cache`` or
    in a Hugging Face hub snapshot is hashed like any other.
    """
    root = Path(model_dir)
    if root.is_file():
        files = [root]
        root = root.parent
    else:
        files = sorted(
            p
            for p in root.rglob("*")
            if p.is_file() and p.suffix in _WEIGHT_SUFFIXES and ".cache" not in p.relative_to(root).parts
        )
    h = hashlib.sha256()
    for p in files:
        size = p.stat().st_size
        h.update(f"{p.relative_to(root)}\0{size}\0".encode())
        with open(p, "rb") as fh:
            if size <= 2 * sample:
                h.update(fh.read())
            else:
                h.update(fh.read(sample))
                fh.seek(size - sample)
                h.update(fh.read(sample))
    return h.hexdigest()[:16]


def resolve_model_path(model: str | None, default: str | None = None) -> Path:
    """A local model folder or file; a name that is not on disk fails with how to pass a path."""
    model = model or default
    if model is None:
        raise MicroError("no model given: pass --model /path/to/model (a local folder; nothing is downloaded)")
    p = Path(model).expanduser()
    if p.exists():
        return p.resolve()
    raise MicroError(
        f"model '{model}' is not a local path: micro never downloads models at run time; "
        f"download it once (e.g. `huggingface-cli download {model} --local-dir ./models/x`) and pass --model ./models/x"
    )


WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf", "*.onnx")


def check_model_folder(path: Path, need: tuple[str, ...] = ("config.json",)) -> Path:
    """A model folder with the files a loader needs and at least one weights file; ModelLoadError otherwise."""
    if path.is_file():
        raise ModelLoadError(f"--model {path}: is a file; expected a model folder (config, tokenizer, weights)")
    if not any(path.iterdir()):
        raise ModelLoadError(f"--model {path}: the model folder is empty")
    for name in need:
        if not (path / name).is_file():
            raise ModelLoadError(f"--model {path}: no {name} (not a complete model folder)")
    if not any(next(path.rglob(pat), None) for pat in WEIGHT_FILES):
        raise ModelLoadError(f"--model {path}: no weights file ({', '.join(WEIGHT_FILES)})")
    return path


def model_load_error(path, exc: BaseException) -> ModelLoadError:
    """One line for a model that fails to load (garbage or truncated weights, bad config, ...)."""
    return ModelLoadError(f"cannot load the model in {path}: {type(exc).__name__}: {first_line(exc)}")


def check_max_length(max_length: int | None, positions: int | None, where) -> None:
    """OptionError if ``max_length`` is < 1 or beyond the model's ``positions`` (None: unknown, no upper check)."""
    if C.integer(max_length, "--max-length", optional=True) is None:
        return
    if isinstance(positions, int) and 0 < positions < max_length:
        raise OptionError(f"--max-length {max_length} is beyond the {positions} positions of the model in {where}")


def config_positions(config) -> int | None:
    """The number of positions of a model config (object or dict), None if it does not say."""
    get = config.get if isinstance(config, dict) else (lambda k: getattr(config, k, None))
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = get(key)
        if isinstance(v, int) and v > 0:
            return v
    return None
