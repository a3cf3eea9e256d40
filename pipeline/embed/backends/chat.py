"""Rendering and tokenisation shared by the decoder backends (transformers and vLLM).

Both backends go through :class:`ChatRenderer`, so for one model they feed the network the *identical* token ids:

* **Rendering.** When the tokenizer has a chat template, ``render_response(prompt, response)`` is
  ``apply_chat_template(prompt + [assistant response], tokenize=False)`` and ``render_prompt(prompt)`` is
  ``apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)``; for a causal model the last-token
  state of the latter is the prompt/response boundary state. A template that rejects the system role gets the
  system text folded into the first user message (``"<system>\\n\\n<user>"``). Without a template the
  conversation is rendered with :func:`pipeline.embed.backends.base.render_plain`.
* **Tokenisation.** A template-rendered string already carries BOS and the other special tokens, so it is
  tokenised with ``add_special_tokens=False``; a plain-rendered string with ``add_special_tokens=True``.
* **Truncation.** Inputs longer than ``max_length`` tokens keep their LAST ``max_length`` tokens by default
  (``truncation="left"``): a reward model must see the final response, and last-token pooling must read the end
  of the conversation. ``truncation="right"`` keeps the first tokens. Special tokens are added after truncation.
  ``truncation="history"`` shortens the conversation before rendering instead (oldest turns first, then the
  response's end; :mod:`pipeline.embed.backends.truncation`), so the template's tokens stay intact.
  ``token_lengths`` reports the untruncated counts, so the caller can see (or skip) what was cut.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.embed.backends.base import (
    Messages,
    check_max_length,
    config_positions,
    model_load_error,
    render_plain,
    resolve_model_path,
    weights_hash,
)
from pipeline.embed.backends.truncation import DEFAULT_TRUNCATION
from pipeline.errors import MicroError

DEFAULT_MAX_LENGTH = 4096
TRUNCATION_SIDES = ("left", "right", "history")
COMPUTE_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}


def resolve_dtype(dtype, on_gpu: bool) -> str:
    """Canonical dtype name: the given one, else bfloat16 on GPU and float32 on CPU."""
    if dtype is None or dtype == "auto":
        return "bfloat16" if on_gpu else "float32"
    name = str(dtype).replace("torch.", "")
    if name not in COMPUTE_DTYPES:
        raise MicroError(f"unknown dtype '{dtype}': use float32, bfloat16 or float16")
    return COMPUTE_DTYPES[name]


def split_gguf(path: Path, gguf_file: str | None) -> tuple[Path, str | None]:
    """(folder, gguf file name): a path to a .gguf file is split into its folder and name."""
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name
    return path, gguf_file


def quiet_transformers() -> None:
    """Silence transformers' info/warning logging and progress bars (backends are used inside a CLI)."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - very old/new transformers
        pass


def load_tokenizer(path, *, trust_remote_code: bool = False, gguf_file: str | None = None):
    """The model's tokenizer from a local folder (never downloads)."""
    from transformers import AutoTokenizer

    quiet_transformers()
    kw = {"gguf_file": gguf_file} if gguf_file else {}
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust_remote_code, **kw)


def default_max_length(tokenizer, config, cap: int = DEFAULT_MAX_LENGTH) -> int:
    """min(tokenizer.model_max_length, config.max_position_embeddings, cap), ignoring unset/sentinel values."""
    cands = [cap]
    tml = getattr(tokenizer, "model_max_length", None)
    if isinstance(tml, int) and 0 < tml < 1_000_000:
        cands.append(tml)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(config, key, None)
        if isinstance(v, int) and v > 0:
            cands.append(v)
            break
    return int(min(cands))


def fold_system(messages: Messages) -> list[dict]:
    """Merge system messages into the first user message (for templates that reject the system role)."""
    system = [m["content"] for m in messages if m["role"] == "system"]
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if not system:
        return rest
    sys_text = "\n\n".join(system)
    for m in rest:
        if m["role"] == "user":
            m["content"] = f"{sys_text}\n\n{m['content']}"
            return rest
    return [{"role": "user", "content": sys_text}, *rest]


class ChatRenderer:
    """Renders conversations and turns rendered strings into (optionally truncated) token ids."""

    def __init__(self, tokenizer, max_length: int, truncation: str = DEFAULT_TRUNCATION):
        if truncation not in TRUNCATION_SIDES:
            raise MicroError(f"truncation must be one of {', '.join(TRUNCATION_SIDES)}, got {truncation!r}")
        self.tok = tokenizer
        self.truncation = truncation
        self.max_length = int(max_length)
        tmpl = getattr(tokenizer, "chat_template", None)
        self.template = tmpl if tmpl else None
        self._fold_system = False
        # "left" keeps the last max_length tokens; "history" texts fit already (left is only the safety net)
        self.tok.truncation_side = "left" if truncation == "history" else truncation
        self._history = None
        if truncation == "history":
            from pipeline.embed.backends.truncation import HistoryRenderer

            self._history = HistoryRenderer(self.max_length, self._render, self._count, self._count_text, self._cut)

        self.tok.padding_side = "left"

    # ---------- identity ----------
    @property
    def has_template(self) -> bool:
        return self.template is not None

    def template_hash(self) -> str | None:
        """sha256[:16] of the chat template string (None without a template)."""
        if self.template is None:
            return None
        blob = self.template if isinstance(self.template, str) else json.dumps(self.template, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    # ---------- rendering ----------
    def _apply(self, messages: list[dict], add_generation_prompt: bool) -> str:
        msgs = fold_system(messages) if self._fold_system else messages
        try:
            out = self.tok.apply_chat_template(msgs, add_generation_prompt=add_generation_prompt, tokenize=False)
        except Exception:
            if self._fold_system or not any(m["role"] == "system" for m in messages):
                raise
            # e.g. Gemma / Mistral templates: "System role not supported" -> fold it into the first user turn
            out = self.tok.apply_chat_template(
                fold_system(messages), add_generation_prompt=add_generation_prompt, tokenize=False
            )
            self._fold_system = True
        if not isinstance(out, str):  # some versions return a list for batched input
            out = out[0]
        return out

    def _render(self, prompt: Messages, response: str | None) -> str:
        """prompt + final assistant response (``response`` None: the prompt with the generation prompt)."""
        msgs = [dict(m) for m in prompt]
        if response is not None:
            msgs.append({"role": "assistant", "content": response})
        if not self.has_template:
            return render_plain(msgs)
        return self._apply(msgs, add_generation_prompt=response is None)

    def render_response(self, prompt: Messages, response: str) -> str:
        return self._history(prompt, response) if self._history else self._render(prompt, response)

    def render_prompt(self, prompt: Messages) -> str:
        return self._history(prompt, None) if self._history else self._render(prompt, None)

    # ---------- token counting for the history mode ----------
    def _count(self, text: str) -> int:
        return len(self._encode([text], truncation=False)[0])

    def _count_text(self, text: str) -> int:
        return len(self.tok(text, add_special_tokens=False)["input_ids"])

    def _cut(self, text: str, n: int, keep: str) -> str:
        from pipeline.embed.backends.truncation import offsets_cut

        if getattr(self.tok, "is_fast", False):
            offsets = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            return offsets_cut(offsets, text, n, keep)
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        return self.tok.decode(ids[:n] if keep == "start" else ids[len(ids) - n :]) if n > 0 else ""

    # ---------- tokenisation ----------
    @property
    def add_special_tokens(self) -> bool:
        return not self.has_template

    def _encode(self, texts: list[str], **kw) -> list[list[int]]:
        if not texts:
            return []
        return [
            list(x)
            for x in self.tok(texts, add_special_tokens=self.add_special_tokens, return_attention_mask=False, **kw)[
                "input_ids"
            ]
        ]

    def token_lengths(self, inputs: Sequence[str]) -> np.ndarray:
        """(n,) untruncated token counts (history mode: of the conversation before it was shortened)."""
        texts = list(inputs)
        n = [len(x) for x in self._encode(texts, truncation=False)]
        if self._history:
            n = self._history.lengths(texts, n)
        return np.asarray(n, dtype=np.int64)

    def encode(self, inputs: Sequence[str]) -> list[list[int]]:
        """Token ids of each input exactly as the model sees them (truncated to ``max_length`` tokens)."""
        texts = list(inputs)
        ids = self._encode(texts, truncation=False)
        long = [i for i, x in enumerate(ids) if len(x) > self.max_length]
        if long:
            cut = self._encode([texts[i] for i in long], truncation=True, max_length=self.max_length)
            for i, x in zip(long, cut):
                ids[i] = x
        return ids

    def pad_id(self) -> int:
        for v in (self.tok.pad_token_id, self.tok.eos_token_id, self.tok.unk_token_id):
            if v is not None:
                return int(v)
        return 0


class RenderedBackend:
    """Identity, rendering and token counting shared by the decoder backends (transformers, vLLM).

    Subclasses set ``name``, ``pooling`` and ``padding`` and call :meth:`load_identity`, which sets ``model_path``,
    ``gguf_file``, ``dtype``, ``tokenizer``, ``max_length`` and ``renderer`` (a :class:`ChatRenderer`).
    """

    def load_identity(
        self,
        model: str | None,
        gguf_file: str | None,
        *,
        on_gpu: bool,
        dtype: str | None,
        trust_remote_code: bool,
        max_length: int | None,
        truncation: str,
    ) -> tuple[Path, object]:
        """Read a local decoder model's tokenizer and config (not its weights) and set the identity attributes;
        returns (the folder to load from, the config). A tokenizer or config that does not load is a one-line
        :class:`MicroError` naming the model folder and this backend."""
        from transformers import AutoConfig

        quiet_transformers()
        self.model_path = resolve_model_path(model)
        load_dir, self.gguf_file = split_gguf(self.model_path, gguf_file)
        self.dtype = resolve_dtype(dtype, on_gpu)
        self._weights_hash = None
        kw = {"gguf_file": self.gguf_file} if self.gguf_file else {}
        try:
            tokenizer = load_tokenizer(load_dir, trust_remote_code=trust_remote_code, gguf_file=self.gguf_file)
            config = AutoConfig.from_pretrained(
                str(load_dir), local_files_only=True, trust_remote_code=trust_remote_code, **kw
            )
        except ImportError as e:
            hint = " (GGUF files need `pip install gguf`)" if self.gguf_file else ""
            raise MicroError(f"cannot load '{self.model_path}' with {self.name}: {e}{hint}") from e
        except (OSError, ValueError) as e:
            raise MicroError(f"cannot load model from '{self.model_path}' with {self.name}: {e}") from e
        except Exception as e:  # noqa: BLE001 - a damaged tokenizer or config: one line
            raise model_load_error(self.model_path, e) from None
        check_max_length(max_length, config_positions(config), self.model_path)
        self.tokenizer = tokenizer
        self.max_length = int(max_length) if max_length is not None else default_max_length(tokenizer, config)
        self.renderer = ChatRenderer(tokenizer, self.max_length, truncation)
        return load_dir, config

    def fingerprint(self) -> dict:
        if self._weights_hash is None:
            self._weights_hash = weights_hash(self.model_path)
        return {
            "backend": self.name,
            "model": self.model_path.name,
            "weights_hash": self._weights_hash,
            "pooling": self.pooling,
            "dtype": self.dtype,
            "max_length": self.max_length,
            "chat_template": self.renderer.template_hash(),
            "padding": self.padding,
            "truncation": self.renderer.truncation,
        }

    def render_response(self, prompt: Messages, response: str) -> str:
        return self.renderer.render_response(prompt, response)

    def render_prompt(self, prompt: Messages) -> str:
        return self.renderer.render_prompt(prompt)

    def token_lengths(self, inputs: Sequence[str]) -> np.ndarray:
        return self.renderer.token_lengths(inputs)
