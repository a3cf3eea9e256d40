"""Server-side micro-batching: concurrent requests coalesced into one scoring call.

Requests wait in an asyncio queue; one worker takes the first, then whatever arrives within the wait up to
``max_batch`` rows, and scores them all in one call on one worker thread (the model runs on one thread at a
time). The wait is ``max_wait_ms`` or, when longer, ``FOLLOW`` (10 %) of the last scoring call's time, scaled to
a call of ``max_batch`` rows (one huge request never makes the next lone one wait long): clients
that send one sample at a time (OpenRLHF) and were answered by that call have time to send their next one and
join, instead of splitting into cohorts that alternate with half-full batches; the scorer idles at most ~10 %
for it. 64 one-sample clients thus cost about one 64-row call (bench/bench_serve.py: 64 rows per call, 36-50
with the fixed 5 ms wait alone).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

MAX_BATCH = 64  # rows coalesced into one scoring call (`micro serve --max-batch`)
MAX_WAIT_MS = 5.0  # how long the first request of a batch waits for others (`micro serve --max-wait-ms`)
FOLLOW = 0.1  # ... or this share of the last scoring call's time, when longer


class MicroBatcher:
    """``await batcher.submit(rows)`` → the scoring function's dict of arrays for those rows.

    ``score(rows)`` takes a list of rows and returns a dict of arrays with one leading entry per row."""

    def __init__(
        self,
        score: Callable[[list], dict],
        max_batch: int = MAX_BATCH,
        max_wait_ms: float = MAX_WAIT_MS,
        follow: float = FOLLOW,
    ):
        self.score, self.max_batch, self.max_wait, self.follow = score, max_batch, max_wait_ms / 1000.0, follow
        self.last_call = self.last_rows = 0  # seconds the last scoring call took, and its rows
        self.queue: asyncio.Queue | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="micro-score")
        self.task: asyncio.Task | None = None
        self.calls = self.rows = 0  # scoring calls made and rows they scored (for /info, tests, benches)
        self.busy = 0.0  # seconds spent in scoring calls (busy / wall time: the scorer's utilisation)

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._worker())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)

    async def submit(self, rows: list) -> dict:
        if not rows:
            return self.score([])
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((rows, fut))
        return await fut

    def wait_s(self) -> float:
        """Seconds a batch's first request waits for others: max_wait, or FOLLOW of the last call's time for
        ``max_batch`` rows when longer."""
        per_batch = self.last_call * min(1.0, self.max_batch / max(1, self.last_rows))
        return max(self.max_wait, self.follow * per_batch)

    async def _collect(self) -> list:
        batch = [await self.queue.get()]
        n = len(batch[0][0])
        deadline = asyncio.get_running_loop().time() + self.wait_s()
        while n < self.max_batch:
            timeout = deadline - asyncio.get_running_loop().time()
            if timeout <= 0 and self.queue.empty():
                break
            try:
                nxt = self.queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(self.queue.get(), timeout)
            except (asyncio.TimeoutError, asyncio.QueueEmpty):
                break
            batch.append(nxt)
            n += len(nxt[0])
        return batch

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [(rows, fut) for rows, fut in batch if not fut.done()]  # a client gone: skip its rows
            if not live:
                continue
            rows = [r for rs, _ in live for r in rs]
            try:
                self.calls, self.rows = self.calls + 1, self.rows + len(rows)
                started = loop.time()
                res = await loop.run_in_executor(self.executor, self.score, rows)
                self.last_call, self.last_rows = loop.time() - started, len(rows)
                self.busy += self.last_call
            except Exception:  # noqa: BLE001 - one bad request must not fail the others: score each alone
                await self._one_by_one(live)
                continue
            start = 0
            for rs, fut in live:
                part = {k: np.asarray(v)[start : start + len(rs)] for k, v in res.items()}
                start += len(rs)
                if not fut.done():
                    fut.set_result(part)

    async def _one_by_one(self, live: list) -> None:
        loop = asyncio.get_running_loop()
        for rs, fut in live:
            try:
                self.calls += 1
                res = await loop.run_in_executor(self.executor, self.score, rs)
            except Exception as exc:  # noqa: BLE001 - handed to that request's handler
                if not fut.done():
                    fut.set_exception(exc)
            else:
                if not fut.done():
                    fut.set_result(res)
