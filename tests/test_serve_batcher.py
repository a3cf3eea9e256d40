"""pipeline.serve.batcher.MicroBatcher without HTTP: closed-loop one-sample clients against a scorer that takes a
fixed time, the rows of each call, results routed back to their requests, a failing row isolated.

The closed loop is OpenRLHF's pattern: each client sends its next sample a few ms after its answer, and the
answers go out one after another (a server sends and parses requests in turn), so a cohort comes back spread over
~20 ms. With a fixed 5 ms wait alone the clients split into cohorts that alternate with part-full batches; the
wait that follows the scoring time (10 % of the last call: 50 ms) lets the answered cohort rejoin, so every call
after the first carries all clients.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from pipeline.serve.batcher import MicroBatcher

CALL_S = 0.5  # the scorer's time per call (any batch size: a GPU-like cost)
CLIENT_S = 0.004  # client c's time between its answer and its next request: CLIENT_S + c * SPREAD_S
SPREAD_S = 0.001


def scorer(log: list, fail_on=None):
    def score(rows):
        log.append(list(rows))
        if fail_on is not None and fail_on in rows:
            raise ValueError(f"row {fail_on} is bad")
        time.sleep(CALL_S)
        return {"reward": np.asarray(rows, dtype=float) * 2, "per_head": np.asarray([[r, -r] for r in rows], float)}

    return score


async def closed_loop(batcher: MicroBatcher, clients: int, rounds: int) -> list:
    """Each client submits one row per round, the next one CLIENT_S + c * SPREAD_S after its answer; → every answer."""
    batcher.start()
    answers = []

    async def client(c):
        for r in range(rounds):
            row = c * 1000 + r
            out = await batcher.submit([row])
            answers.append((row, out))
            await asyncio.sleep(CLIENT_S + c * SPREAD_S)

    try:
        await asyncio.gather(*(client(c) for c in range(clients)))
    finally:
        await batcher.stop()
    return answers


@pytest.mark.parametrize("follow", [0.1, 0.0])
def test_one_sample_clients_fill_every_batch_when_the_wait_follows_the_scoring_time(follow):
    log: list = []
    clients, rounds = 16, 5
    batcher = MicroBatcher(scorer(log), max_batch=64, max_wait_ms=5, follow=follow)
    answers = asyncio.run(closed_loop(batcher, clients, rounds))
    assert len(answers) == clients * rounds and batcher.rows == clients * rounds and batcher.calls == len(log)
    for row, out in answers:  # each request gets its own row's results
        assert out["reward"].tolist() == [2.0 * row] and out["per_head"].tolist() == [[row, -row]]
    sizes = [len(rows) for rows in log]
    if follow:
        # the first call may start before every client has arrived; after it, all 16 ride together
        assert all(s == clients for s in sizes[1:]), sizes
        assert len(log) <= rounds + 1
    else:  # the fixed 5 ms closes before the answered cohort is back: part-full batches, more calls
        assert len(log) > rounds + 1 and min(sizes[1:]) < clients, sizes


def test_a_failing_row_fails_only_its_request():
    log: list = []
    batcher = MicroBatcher(scorer(log, fail_on=7), max_batch=64, max_wait_ms=50)

    async def main():
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit([r]) for r in (5, 7, 9)), return_exceptions=True)
        finally:
            await batcher.stop()

    good5, bad, good9 = asyncio.run(main())
    assert isinstance(bad, ValueError) and "row 7" in str(bad)
    assert good5["reward"].tolist() == [10.0] and good9["reward"].tolist() == [18.0]
    assert log[0] == [5, 7, 9] and sorted(map(tuple, log[1:])) == [(5,), (7,), (9,)]  # one call, then each alone


def test_the_wait_follows_a_full_batch_not_one_huge_request():
    b = MicroBatcher(lambda rows: {}, max_batch=64, max_wait_ms=5)
    assert b.wait_s() == 0.005  # nothing scored yet
    b.last_call, b.last_rows = 0.5, 16  # a part-full call: 10 % of its time
    assert b.wait_s() == pytest.approx(0.05)
    b.last_call, b.last_rows = 60.0, 4096  # one 4,096-row request: 10 % of a 64-row share of it, not 6 s
    assert b.wait_s() == pytest.approx(0.1 * 60.0 * 64 / 4096)
    b.last_call, b.last_rows = 0.01, 64  # a fast GPU call: the 5 ms floor
    assert b.wait_s() == 0.005
