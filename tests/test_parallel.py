"""pipeline.core.parallel: the one runner of sweep trials, leave-group-out folds and embed workers."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from pipeline.core.parallel import run_jobs, thread_env, threads_per_worker
from pipeline.core.processes import describe_exit, run_processes


def row_sums(arrays: dict, meta: dict, job: dict) -> dict:
    """A job: the sum of some rows of the shared array (and where it ran)."""
    if job.get("die"):
        os._exit(3)  # a worker that dies without a word (as when killed for memory)
    rows = arrays["x"][job["rows"]]
    return {
        "job": job["i"],
        "sum": float(rows.sum()),
        "scale": meta["scale"],
        "alias": arrays["y"] is arrays["x"],
        "pid": os.getpid(),
    }


def shout(index: int, n: int, conn, parent: int) -> None:
    """A worker process: sends n messages, then dies by signal when its index is 1."""
    for k in range(n):
        conn.send(("done", index * 10 + k))
    conn.close()
    if index == 1:
        os.kill(os.getpid(), signal.SIGKILL)


def _run(n_jobs: int, jobs: list, arrays: dict) -> dict:
    out = {}
    run_jobs(
        jobs,
        row_sums,
        arrays,
        {"scale": 2.0},
        lambda job, res: out.__setitem__(job["i"], res),
        lambda job, exc: {"job": job["i"], "error": type(exc).__name__},
        n_jobs=n_jobs,
        threads=1,
        start_method="spawn",
    )
    return out


def test_jobs_in_this_process_and_in_a_pool_agree():
    x = np.arange(60, dtype=np.float64).reshape(20, 3)
    arrays = {"x": x, "y": x}  # one array under two names is written once
    jobs = [{"i": i, "rows": list(range(i, 20, 4))} for i in range(4)]
    inline, pool = _run(1, jobs, arrays), _run(2, jobs, arrays)
    want = {i: float(x[i::4].sum()) for i in range(4)}
    assert {i: r["sum"] for i, r in inline.items()} == want == {i: r["sum"] for i, r in pool.items()}
    assert all(r["scale"] == 2.0 for r in pool.values()) and all(r["alias"] for r in pool.values())
    assert {r["pid"] for r in inline.values()} == {os.getpid()} and os.getpid() not in {r["pid"] for r in pool.values()}


def test_a_dead_worker_is_a_failure_of_its_job():
    x = np.ones((4, 2))
    out = _run(2, [{"i": 0, "rows": [0], "die": True}], {"x": x, "y": x})
    assert out == {0: {"job": 0, "error": "BrokenProcessPool"}}


def test_worker_processes_report_messages_and_exit_codes():
    got = []
    procs = run_processes(
        [(0, (0, 2)), (1, (1, 1))], shout, {0: {"MICRO_TEST": "1"}}, lambda i, msg: got.append((i, msg))
    )
    assert sorted(got) == [(0, ("done", 0)), (0, ("done", 1)), (1, ("done", 10))]
    assert procs[0].exitcode == 0 and procs[1].exitcode == -signal.SIGKILL
    assert describe_exit(procs[1].exitcode) == "was killed by SIGKILL" and describe_exit(1) == "exited with code 1"


def test_thread_limits(monkeypatch):
    assert threads_per_worker(2, cores=2) == 1 and threads_per_worker(3, cores=16) == 5
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    env = thread_env(4)
    assert env["OMP_NUM_THREADS"] == "2" and env["MKL_NUM_THREADS"] == "4"  # a smaller value already set wins


@pytest.mark.parametrize("code,line", [(-15, "was killed by SIGTERM"), (0, "exited with code 0")])
def test_describe_exit(code, line):
    assert describe_exit(code) == line
