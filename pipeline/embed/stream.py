"""The texts missing from the cache, embedded with the Python work overlapped with the forward passes.

:func:`pipeline.embed.embed.embed_missing` sorts the missing texts by token count (longest first, across the whole
missing set) and reads vectors from one of two streams:

* :func:`token_stream`, for backends with a token-level interface (the transformers backend: ``encode``,
  ``collate``, ``launch``, ``finish``, ``release_memory``, ``packed``, ``max_batch_tokens``, ``max_batch_rows``,
  optionally ``prefetch``). A background thread tokenises the next texts, cuts them into token-budget batches
  (:func:`pipeline.embed.backends.batching.plan_batches`) and collates them into host tensors (pinned on CUDA), a few
  batches ahead (bounded queue); with ``prefetch = False`` (the transformers backend on the CPU, whose forward
  pass uses every core: a thread beside it only slows its OpenMP threads) this runs in the caller's thread. The
  caller's thread launches batch i+1 before it waits for batch i's vectors, so
  the device always has queued work. A CUDA out-of-memory error halves the budget (said once), and the batch is
  split and retried; a single text that does not fit is a one-line error.
* :func:`chunk_stream`, for the others (sentence-transformers, vLLM): ``chunk_size`` texts per ``embed`` call;
  a backend with ``prepare`` / ``embed_prepared`` (vLLM: tokenisation) gets the next chunk prepared in the
  background while the current one runs.

Shards are written beside all of this by :class:`cache.writer.ShardWriter`.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import Callable, Iterator, Sequence

import numpy as np

from pipeline.embed.backends.batching import batch_cost, is_oom, plan_batches
from pipeline.errors import MicroError

PREFETCH_BATCHES = 3  # collated batches waiting for the device
ENCODE_BLOCK = 256  # texts tokenised per call in the background thread


def length_order(lengths: Sequence[int], max_length: int) -> np.ndarray:
    """Positions sorted by (truncated) token count, longest first; ties keep input order."""
    n = np.minimum(np.asarray(lengths, dtype=np.int64), int(max_length))
    return np.argsort(-n, kind="stable")


_END = object()


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


def prefetched(make: Callable[[], Iterator], depth: int) -> Iterator:
    """Iterate ``make()`` in a background thread, at most ``depth`` items ahead of the consumer (``depth`` 0: in
    the caller's thread). An error in the thread is raised in the consumer; closing the iterator stops the thread."""
    if depth < 1:
        yield from make()
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in make():
                if not put(item):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(_Failed(exc))
            return
        put(_END)

    thread = threading.Thread(target=run, name="micro-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join(timeout=30)


class Budget:
    """The token budget of one run; :meth:`halve` after an out-of-memory error (said once)."""

    def __init__(self, value: int, log: Callable[[str], None] | None):
        self.value = int(value)
        self.log = log
        self.halvings = 0

    def halve(self, cost: int) -> None:
        new = max(1, min(self.value, int(cost)) // 2)
        if self.halvings == 0 and self.log:
            self.log(
                f"out of GPU memory on a batch of {cost} token slots: --max-batch-tokens lowered from "
                f"{self.value} to {new} (halved again if needed) and the batch retried; pass a lower "
                "--max-batch-tokens to start there"
            )
        self.halvings += 1
        self.value = new


def _token_batches(backend, texts: Sequence[str], order: np.ndarray, budget: Budget) -> Iterator[tuple]:
    """(positions, token ids, collated batch) in ``order``, cut under the budget (runs in the background thread).
    The last, possibly short, batch of each tokenised block waits for the next block."""
    pos: list[int] = []
    ids: list[list[int]] = []
    for start in range(0, len(order), ENCODE_BLOCK):
        block = order[start : start + ENCODE_BLOCK]
        pos.extend(int(i) for i in block)
        ids.extend(backend.encode([texts[i] for i in block]))
        last = start + ENCODE_BLOCK >= len(order)
        groups = plan_batches([len(x) for x in ids], budget.value, backend.packed, backend.max_batch_rows)
        for g in groups if last else groups[:-1]:
            b_ids = [ids[j] for j in g]
            yield np.array([pos[j] for j in g], dtype=np.int64), b_ids, backend.collate(b_ids)
        if not last:
            pos, ids = [pos[j] for j in groups[-1]], [ids[j] for j in groups[-1]]


def _launch(backend, pos: np.ndarray, ids: list, host, budget: Budget) -> Iterator[tuple]:
    """Launch one batch: yields (handle, positions), more than once when it had to be split."""
    lengths = [len(x) for x in ids]
    cost = batch_cost(lengths, backend.packed)
    if cost > budget.value and len(ids) > 1:  # planned before the budget was lowered
        for g in plan_batches(lengths, budget.value, backend.packed, backend.max_batch_rows):
            yield from _launch(backend, pos[g], [ids[j] for j in g], None, budget)
        return
    failed = False
    try:
        handle = backend.launch(host if host is not None else backend.collate(ids))
    except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are handled
        if not is_oom(exc):
            raise
        failed = True
    if not failed:
        yield handle, pos
        return
    host = None  # the failed pass's tensors are released once the exception is gone
    backend.release_memory()
    if len(ids) == 1:
        raise MicroError(
            f"out of GPU memory embedding one text of {lengths[0]} tokens alone: lower --max-length "
            "or free GPU memory (other processes on the device?)"
        )
    budget.halve(cost)
    yield from _launch(backend, pos, ids, None, budget)


def token_stream(
    backend, texts: Sequence[str], order: np.ndarray, log: Callable[[str], None] | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(positions, (b, dim) float32 vectors) batch by batch, for a backend with a token-level interface."""
    budget = Budget(backend.max_batch_tokens, log)
    pending = None
    try:
        ahead = PREFETCH_BATCHES if getattr(backend, "prefetch", True) else 0
        batches = prefetched(lambda: _token_batches(backend, texts, order, budget), ahead)
        with contextlib.closing(batches):
            for pos, ids, host in batches:
                for handle, p in _launch(backend, pos, ids, host, budget):
                    if pending is not None:  # batch i+1 is queued on the device before we wait for batch i
                        yield pending[1], backend.finish(pending[0])
                    pending = (handle, p)
        if pending is not None:
            yield pending[1], backend.finish(pending[0])
    finally:
        backend.max_batch_tokens = budget.value  # a lowered budget holds for the backend's later calls


def chunk_stream(backend, texts: Sequence[str], order: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(positions, vectors) per ``backend.chunk_size`` texts, for backends that batch inside ``embed``."""
    step = max(1, int(backend.chunk_size))
    sels = [order[s : s + step] for s in range(0, len(order), step)]
    prepare = getattr(backend, "prepare", None)
    if prepare is None:
        for sel in sels:
            yield sel, backend.embed([texts[i] for i in sel])
        return
    ahead = prefetched(lambda: ((sel, prepare([texts[i] for i in sel])) for sel in sels), 1)
    with contextlib.closing(ahead):
        for sel, prepared in ahead:
            yield sel, backend.embed_prepared(prepared)


def stream_vectors(
    backend, texts: Sequence[str], order: np.ndarray, log: Callable[[str], None] | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The stream that suits ``backend`` (see the module docstring)."""
    if hasattr(backend, "launch"):
        return token_stream(backend, texts, order, log)
    return chunk_stream(backend, texts, order)
