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


_STOP_SCRIPT = """
import os, sys, time
from pathlib import Path


def hour_job(arrays, meta, job):
    Path(meta["flag"]).write_text("started")
    time.sleep(3600)


def hour_worker(index, conn, parent):
    conn.send("started")
    time.sleep(3600)


if __name__ == "__main__":
    import numpy as np
    import polars as pl
    import pyarrow.compute as pc

    pl.DataFrame({"a": list(range(1000))}).sum()  # the native thread pools of a real command
    pc.sum(pc.add(list(range(1000)), 1))
    from pipeline.core.parallel import run_jobs
    from pipeline.core.processes import run_processes

    flag = Path(sys.argv[2])
    try:
        if sys.argv[1] == "jobs":
            x = np.zeros((2, 2))
            run_jobs([{}, {}], hour_job, {"x": x}, {"flag": str(flag)}, print, print, n_jobs=2, threads=1,
                     start_method="spawn")
        else:
            run_processes([(0, (0,)), (1, (1,))], hour_worker, {}, lambda i, msg: flag.write_text(msg))
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
"""


@pytest.mark.parametrize("runner", ["jobs", "processes"])
def test_sigint_to_the_parent_alone_stops_hour_long_workers(tmp_path, runner):
    """``kill -INT PID`` (a scheduler, ``timeout -s INT``) reaches the parent only, and the kernel may hand it to
    one of pyarrow's / polars' threads: the main thread's waits must wake by themselves to run the handler, or the
    command stops only when a worker finishes (here: in an hour). The jobs case hangs here without the timed waits
    (as_completed waits on a lock); the processes case (a select) is the same property for the embed workers."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    script, flag = tmp_path / "stop.py", tmp_path / "started"
    script.write_text(_STOP_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    p = subprocess.Popen([sys.executable, str(script), runner, str(flag)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        while not flag.exists() and p.poll() is None and time.monotonic() - t0 < 120:
            time.sleep(0.1)
        assert p.poll() is None and flag.exists()
        time.sleep(1.0)  # both workers inside their hour
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=60)  # a minute, where waiting for the workers takes an hour
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130 and "interrupted" in out
