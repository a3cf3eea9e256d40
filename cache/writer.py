"""Shard writes beside the computation: one background thread, at most one write in flight.

``ShardWriter.put(keys, vectors)`` hands a finished chunk to the writer thread, which stores it with
:meth:`cache.store.EmbeddingStore.append` (atomic shard + manifest) and then reports it to ``progress``. Before
taking the next chunk it waits for the previous write, so a kill loses at most the chunk being written and the one
being computed; leaving the ``with`` block (normally, by an error or by Ctrl-C) waits for the write in flight, so
every chunk handed over is on disk when the block is left. A failed write is raised in the caller's thread.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import numpy as np


class ShardWriter:
    """Background shard writer for an :class:`cache.store.EmbeddingStore` (use as a context manager)."""

    def __init__(self, store, progress: Callable[[int], None] | None = None):
        self.store = store
        self.progress = progress
        self.written = 0  # texts stored so far
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="micro-shard-writer")
        self._pending: Future | None = None

    def _write(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        self.store.append(keys, vectors)
        self.written += len(keys)
        if self.progress:
            self.progress(len(keys))

    def wait(self) -> None:
        """Block until the write in flight (if any) is on disk; re-raise its error here."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def put(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Store ``vectors`` under ``keys`` as one shard, in the background."""
        self.wait()
        self._pending = self._pool.submit(self._write, keys, vectors)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.wait()
            else:  # keep what was computed; the original error is the one to report
                try:
                    self.wait()
                except Exception:  # noqa: BLE001
                    pass
        finally:
            self._pool.shutdown(wait=True)
