"""Content keys of the embedding cache and the in-memory key index (sorted 64-bit prefixes, searchsorted)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

KEY_BYTES = 16


def text_keys(fingerprint_id: str, texts: Sequence[str]) -> np.ndarray:
    """(n,) |S16 content keys: sha256(fingerprint_id + NUL + text)[:16]."""
    prefix = hashlib.sha256(fingerprint_id.encode() + b"\0")
    out = np.empty(len(texts), dtype=f"S{KEY_BYTES}")
    for i, t in enumerate(texts):
        h = prefix.copy()
        h.update(t.encode("utf-8", "surrogatepass"))
        out[i] = h.digest()[:KEY_BYTES]
    return out


def key_prefix_u64(keys: np.ndarray) -> np.ndarray:
    """First 8 bytes of each |S16 key as big-endian uint64 (sortable, for searchsorted)."""
    return np.ascontiguousarray(keys).view(np.uint8).reshape(-1, KEY_BYTES)[:, :8].copy().view(">u8").ravel()


@dataclass
class KeyIndex:
    keys: np.ndarray  # (M,) |S16, all stored keys in load order
    vecs: np.ndarray  # (M, d) stored dtype
    order: np.ndarray = field(init=False)  # argsort of the u64 prefix
    sorted_u64: np.ndarray = field(init=False)

    def __post_init__(self):
        u = key_prefix_u64(self.keys)
        self.order = np.argsort(u, kind="stable")
        self.sorted_u64 = u[self.order]

    def find(self, keys: np.ndarray) -> np.ndarray:
        """(n,) row into ``vecs`` for each key, -1 where absent."""
        if len(self.keys) == 0 or len(keys) == 0:
            return np.full(len(keys), -1, dtype=np.int64)
        u = key_prefix_u64(keys)
        pos = np.searchsorted(self.sorted_u64, u)
        pos = np.minimum(pos, len(self.order) - 1)
        rows = self.order[pos]
        ok = (self.sorted_u64[pos] == u) & (self.keys[rows] == keys)
        return np.where(ok, rows, -1)

    @classmethod
    def concat(cls, parts: list, dim: int, dtype) -> "KeyIndex":
        """The index of ``parts`` [((m,) keys, (m, dim) vectors), ...] in order (empty parts skipped)."""
        parts = [p for p in parts if len(p[0])]
        if not parts:
            return cls(np.empty(0, f"S{KEY_BYTES}"), np.empty((0, dim), dtype))
        if len(parts) == 1:
            return cls(*parts[0])
        return cls(np.concatenate([k for k, _ in parts]), np.concatenate([v for _, v in parts]))

    def extended(self, added: list) -> "KeyIndex":
        """This index plus the ``added`` parts (one merge, not one copy of the whole index per part)."""
        return KeyIndex.concat([(self.keys, self.vecs), *added], self.vecs.shape[1], self.vecs.dtype)
