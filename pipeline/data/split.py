"""Deterministic train/test split grouped by prompt.

Each prompt is hashed together with the seed; the hash, read as a number in [0, 1), puts the prompt in
'test' when it is below ``test_size``.  The result depends only on (prompt, seed), never on row order,
so every pair sharing a prompt lands in the same split.
"""

from __future__ import annotations

import hashlib
from typing import Any

_SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "test": "test",
    "testing": "test",
    "validation": "test",
    "valid": "test",
    "val": "test",
    "dev": "test",
    "eval": "test",
    "evaluation": "test",
}


def render_prompt(messages: list[dict]) -> str:
    """A canonical text form of a prompt (role: content per message)."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def prompt_unit(messages: list[dict], seed: int) -> float:
    """A number in [0, 1) fixed by the prompt text and the seed."""
    text = f"{seed}\x1f{render_prompt(messages)}".encode("utf-8", errors="surrogatepass")
    return int.from_bytes(hashlib.sha1(text).digest()[:8], "big") / 2.0**64


def assign_split(messages: list[dict], test_size: float, seed: int) -> str:
    """'test' for a fraction ``test_size`` of prompts (in expectation), else 'train'."""
    return "test" if prompt_unit(messages, seed) < test_size else "train"


def normalize_split(value: Any) -> str | None:
    """Map a split label from an input file to 'train' / 'test' (validation, dev, ... -> test); None if empty.

    Raises ValueError for a label it does not know.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    name = _SPLIT_NAMES.get(str(value).strip().lower())
    if name is None:
        raise ValueError(f"is {value!r}; expected train or test (or validation/dev)")
    return name


def split_from_name(file_name: str) -> str | None:
    """'train' / 'test' from a published file name such as 'train.jsonl.gz' or 'test-00000-of-00001.parquet'."""
    stem = file_name.rsplit("/", 1)[-1].lower()
    for prefix in sorted(_SPLIT_NAMES, key=len, reverse=True):
        if stem.startswith(prefix) and not stem[len(prefix) : len(prefix) + 1].isalpha():
            return _SPLIT_NAMES[prefix]
    return None


def prompts_in_both(prompts: list[list[dict]], splits: list[str]) -> int:
    """How many distinct prompts occur in both splits (0 for a correct grouped split)."""
    seen: dict[str, set[str]] = {}
    for messages, split in zip(prompts, splits, strict=True):
        seen.setdefault(render_prompt(messages), set()).add(split)
    return sum(1 for s in seen.values() if len(s) > 1)
