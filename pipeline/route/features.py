"""Embedding exact model inputs for scoring: the persistent cache read (written only when asked), an in-memory LRU
of prompt/gate features, the embedder loaded once.

:class:`Featurizer` ``features(texts, remember=...)`` → (n, d) float32 vectors: texts in the LRU come from memory,
then the persistent cache is read, and every remaining text is embedded in ONE pass of the embedder's stream
(longest first, the backend's batching). With ``cache_writes`` the new vectors are stored in the persistent
cache (as ``micro embed`` does); without, the cache is opened read-only: nothing in it is created, written, probed
or cleaned up. New vectors are rounded to the cache dtype either way, so both modes give the same numbers.
``cache_root`` is a folder or an object-store URL (``s3://...``).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from pathlib import Path

import numpy as np

from pipeline.errors import MicroError

LRU_SIZE = 8192  # prompt/gate features kept in memory (rows of d float32: 134 MB at d = 4096)


class Featurizer:
    """Vectors of exact model inputs with ``backend_factory()`` (called once, lazily) and the cache under
    ``cache_root`` in ``dtype``; ``calls`` counts embedder passes (tests, benches)."""

    def __init__(
        self, backend_factory, cache_root: Path | str, dtype: str, cache_writes: bool = False, lru: int = LRU_SIZE
    ):
        from cache.stores import is_remote

        self._factory, self.dtype = backend_factory, dtype
        self.cache_root = str(cache_root) if is_remote(str(cache_root)) else Path(cache_root)
        self.cache_writes, self.lru_size = bool(cache_writes), int(lru)
        self._backend = self._store = None
        self._store_opened = False
        self.lru: OrderedDict[str, np.ndarray] = OrderedDict()
        self.calls = 0

    @property
    def backend(self):
        if self._backend is None:
            self._backend = self._factory()
        return self._backend

    def store(self):
        """The persistent cache (None when reading only and there is none here yet); read-only unless
        ``cache_writes``."""
        from cache.store import DTYPES
        from pipeline.embed.backends.base import fingerprint_id
        from pipeline.embed.embed import open_store

        if not self._store_opened:
            self._store_opened = True
            remote = isinstance(self.cache_root, str)
            fid = fingerprint_id(self.backend.fingerprint())
            folder = None if remote else self.cache_root.expanduser().resolve() / f"{fid}-{DTYPES[self.dtype][2]}"
            if self.cache_writes or remote or (folder / "manifest.json").is_file():
                self._store = open_store(self.cache_root, self.backend, self.dtype, read_only=not self.cache_writes)
        return self._store

    def features(self, texts: list[str], remember: np.ndarray | None = None) -> np.ndarray:
        """(n, d) float32 vectors of ``texts``; rows where ``remember`` (n,) bool is set go to the LRU."""
        from cache.keys import text_keys

        n = len(texts)
        if n == 0:
            return np.zeros((0, self.backend.dim or 0), np.float32)
        remember = np.zeros(n, bool) if remember is None else np.asarray(remember, bool)
        uniq, inverse = np.unique(np.array(texts, dtype=object), return_inverse=True)
        uniq = uniq.tolist()
        vecs: list[np.ndarray | None] = [self.lru.get(t) for t in uniq]
        for t, v in zip(uniq, vecs):
            if v is not None:
                self.lru.move_to_end(t)
        todo = [i for i, v in enumerate(vecs) if v is None]
        store = self.store() if todo else None
        if todo and store is not None:
            keys = text_keys(store.fingerprint_id, [uniq[i] for i in todo])
            have = ~store.missing(keys)
            if have.any():
                got = store.lookup(keys[have], np.float32)
                for j, i in enumerate(np.asarray(todo)[have]):
                    vecs[i] = got[j]
            todo = [i for i, h in zip(todo, have) if not h]
        if todo:
            new = self._embed_new([uniq[i] for i in todo])
            for j, i in enumerate(todo):
                vecs[i] = new[j]
        keep = np.zeros(len(uniq), bool)
        keep[inverse[remember]] = True
        for i in np.flatnonzero(keep):
            self.lru[uniq[i]] = vecs[i]
            self.lru.move_to_end(uniq[i])
        while len(self.lru) > self.lru_size:
            self.lru.popitem(last=False)
        return np.stack(vecs).astype(np.float32, copy=False)[inverse]

    def _embed_new(self, texts: list[str]) -> np.ndarray:
        """(n, d) vectors of ``texts`` (not cached), in one pass of the embedder; stored when cache_writes."""
        from cache.keys import text_keys
        from cache.store import DTYPES
        from pipeline.embed.embed import embed_missing
        from pipeline.embed.stream import length_order, stream_vectors

        self.calls += 1
        be = self.backend
        if self.cache_writes:
            store = self.store()
            keys = text_keys(store.fingerprint_id, texts)
            embed_missing(store, be, texts, keys)
            return store.lookup(keys, np.float32)
        order = length_order(be.token_lengths(texts), be.max_length)
        out = [None] * len(texts)
        with contextlib.closing(stream_vectors(be, texts, order)) as stream:
            for pos, v in stream:
                if v.shape[0] != len(pos):
                    raise MicroError(f"backend {be.name} returned {v.shape[0]} vectors for {len(pos)} inputs")
                for p, row in zip(pos, v):
                    out[p] = row
        np_dtype = DTYPES[self.dtype][0]
        return np.stack(out).astype(np_dtype).astype(np.float32)

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None
