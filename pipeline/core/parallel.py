"""One parallel runner for embed workers, sweep trials and leave-group-out folds.

* **Cores and threads**: :func:`n_cores` (the cores this process may use) and :func:`threads_per_worker` (workers
  × threads ≤ cores); BLAS / OpenMP thread variables (:data:`THREAD_ENV`) are set for every worker before it
  imports numpy, and threadpoolctl / torch limits inside it.
* **Jobs over shared arrays** (:func:`run_jobs`; sweep trials, leave-group-out folds): ``fn(arrays, meta, job)``
  runs every job, in this process (one worker), in a process pool (``local``: the arrays written once as ``.npy``
  files that every worker memory-maps; forkserver where available, else spawn, never plain fork) or as Ray tasks
  (``ray``: the arrays put in the object store once).
* **Long-lived workers** (:func:`pipeline.core.processes.run_processes`; embed workers): one spawned process per
  task with its own environment and a message pipe.
* **Ray** (:func:`ray_session`): joins ``address`` / ``RAY_ADDRESS`` when given, else starts a local Ray (and shuts
  it down afterwards); an already initialised Ray is used as it is.
* Every worker runs a **parent watchdog** (:func:`watch_parent`): it exits when the process that started the work is
  gone (e.g. killed with SIGKILL), so no worker outlives its command.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from pipeline.errors import MicroError

#: the variables BLAS / OpenMP libraries read for their thread count
THREAD_ENV = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)
#: the longest one blocking wait of the main thread lasts (s). A signal sent to the process may be delivered to one
#: of its other threads (pyarrow's, polars', torch's); Python then runs the handler only when the main thread next
#: wakes, so a wait with no timeout turns Ctrl-C / SIGTERM into "after the running job ends".
WAKE_S = 0.5
#: what the forkserver imports once before any job pool worker forks from it
PRELOAD = [
    "numpy",
    "threadpoolctl",
    "torch",
    "sklearn.utils.extmath",
    "heads.mixture",
    "heads.metrics",
    "heads.router",
    "pipeline.core.run",
    "pipeline.route.route",
    "pipeline.sweep.trials",
]


def n_cores() -> int:
    """The CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover (macOS)
        return max(1, os.cpu_count() or 1)


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """CPU threads per worker so that workers x threads <= cores (at least 1)."""
    return max(1, (cores or n_cores()) // max(1, workers))


def thread_env(threads: int) -> dict[str, str]:
    """:data:`THREAD_ENV` set to ``threads`` (a smaller positive value already in the environment wins)."""
    env = {}
    for var in THREAD_ENV:
        try:
            mine = int(os.environ.get(var, ""))
        except ValueError:
            mine = 0
        env[var] = str(min(threads, mine) if mine > 0 else threads)
    return env


@contextlib.contextmanager
def temporary_environ(values: dict[str, str]) -> Iterator[None]:
    """Set ``values`` in ``os.environ`` for the duration of the block, then restore the previous state."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def limit_threads(threads: int):
    """Cap BLAS / OpenMP (threadpoolctl) and torch at ``threads`` in this process; keep the returned object alive."""
    from threadpoolctl import threadpool_limits

    limits = threadpool_limits(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return limits


def watch_parent(pid: int) -> None:
    """Start a daemon thread that ends this process when process ``pid`` is gone."""

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(pid, 0)
            except (ProcessLookupError, PermissionError):  # gone (or its pid reused by another user's process)
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="micro-watchdog").start()


@contextlib.contextmanager
def heartbeat(log: Callable[[str], None], every: float = 5.0) -> Iterator[Callable[[str | None], float]]:
    """Yield ``begin(step) -> start time``; while the block runs, a line ``  ... STEP: still running, T s`` every
    ``every`` seconds of a step that has not ended (long steps are never silent)."""
    state = {"step": None, "t": time.perf_counter(), "last": 0.0}
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every / 4):
            now = time.perf_counter()
            if state["step"] is not None and now - state["t"] >= every and now - state["last"] >= every:
                state["last"] = now
                log(f"  ... {state['step']}: still running, {now - state['t']:.0f} s")

    def begin(step: str | None) -> float:  # None: between steps
        state["step"], state["t"] = step, time.perf_counter()
        state["last"] = state["t"]
        return state["t"]

    thread = threading.Thread(target=beat, daemon=True, name="micro-heartbeat")
    thread.start()
    try:
        yield begin
    finally:
        stop.set()
        thread.join()


def error_text(exc: BaseException) -> str:
    """'Type: first line' of an exception (what a failed job records)."""
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}"[:500]


@contextlib.contextmanager
def ray_session(
    address: str | None = None, *, log_to_driver: bool = False, what: str = "--ray", **local_kwargs
) -> Iterator[tuple[object, bool]]:
    """(ray, joined a cluster): joins ``address`` / RAY_ADDRESS, else starts a local Ray with ``local_kwargs``."""
    try:
        import ray
    except ImportError:
        raise MicroError(f"{what} needs Ray: pip install 'micro-rm[ray]'") from None
    own = not ray.is_initialized()
    addr = address or os.environ.get("RAY_ADDRESS") or None
    if own:
        ray.init(log_to_driver=log_to_driver, **({"address": addr} if addr else local_kwargs))
    try:
        yield ray, bool(addr)
    finally:
        if own:
            ray.shutdown()


# --- jobs over shared arrays ----------------------------------------------------------------------------------------
_WORKER: dict = {}


def _init_worker(npy_dir: str, names: list, aliases: dict, meta: dict, threads: int, parent: int) -> None:
    watch_parent(parent)
    _WORKER["limits"] = limit_threads(threads)  # kept alive for the worker's lifetime
    arrays = {n: np.load(os.path.join(npy_dir, f"{n}.npy"), mmap_mode="r") for n in names}
    arrays.update({a: arrays[b] for a, b in aliases.items()})
    _WORKER["arrays"], _WORKER["meta"] = arrays, meta


def _worker_job(fn, job):
    return fn(_WORKER["arrays"], _WORKER["meta"], job)


def _ray_job(fn, arrays: dict, meta: dict, job, threads: int):
    from threadpoolctl import threadpool_limits

    with threadpool_limits(threads):
        return fn(arrays, meta, job)


def _remove_stale_dirs() -> None:
    """Delete shared-array folders left by runs that were killed (their pid is in the folder name)."""
    for d in Path(tempfile.gettempdir()).glob("micro-sweep-*-*"):
        try:
            os.kill(int(d.name.split("-")[2]), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (ValueError, PermissionError, IndexError):
            pass


def _save_arrays(arrays: dict, folder: str) -> tuple[list, dict]:
    names, aliases, seen = [], {}, {}
    for name, arr in arrays.items():
        if id(arr) in seen:  # e.g. context is prompt when the run has no contexts: written once
            aliases[name] = seen[id(arr)]
            continue
        np.save(os.path.join(folder, f"{name}.npy"), np.ascontiguousarray(arr))
        seen[id(arr)] = name
        names.append(name)
    return names, aliases


def run_jobs(
    jobs: list,
    fn: Callable,
    arrays: dict,
    meta: dict,
    on_result: Callable,
    on_failure: Callable,
    *,
    n_jobs: int,
    threads: int,
    backend: str = "local",
    address: str | None = None,
    start_method: str | None = None,
) -> None:
    """``on_result(job, fn(arrays, meta, job))`` for every job as it finishes (see the module docstring);
    ``fn`` is a module-level function. A job whose worker died gives ``on_result(job, on_failure(job, exc))``."""
    _remove_stale_dirs()  # left by a killed run (kill -9 skips the cleanup below), whatever the backend now
    if backend == "ray":
        return _run_ray(jobs, fn, arrays, meta, on_result, on_failure, n_jobs, threads, address)
    if n_jobs <= 1:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(threads):
            for job in jobs:
                on_result(job, fn(arrays, meta, job))
        return
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    with tempfile.TemporaryDirectory(prefix=f"micro-sweep-{os.getpid()}-") as tmp:
        names, aliases = _save_arrays(arrays, tmp)
        with temporary_environ({k: str(threads) for k in THREAD_ENV}):  # read by BLAS when a spawned worker imports it
            start_method = start_method or ("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
            ctx = mp.get_context(start_method)
            if start_method == "forkserver":  # the server imports these once; every worker forks from it
                ctx.set_forkserver_preload(PRELOAD)
            with ProcessPoolExecutor(
                n_jobs,
                mp_context=ctx,
                initializer=_init_worker,
                initargs=(tmp, names, aliases, meta, threads, os.getpid()),
            ) as ex:
                futs = {ex.submit(_worker_job, fn, job): job for job in jobs}
                pending = set(futs)
                try:
                    while pending:
                        done, pending = wait(pending, timeout=WAKE_S, return_when=FIRST_COMPLETED)
                        for f in done:
                            try:
                                out = f.result()
                            except Exception as exc:  # noqa: BLE001 -- a worker died (e.g. out of memory)
                                out = on_failure(futs[f], exc)
                            on_result(futs[f], out)
                except BaseException:  # Ctrl-C, or on_result failed: stop now, not after the running jobs
                    stop_workers(ex)
                    raise


def stop_workers(ex) -> None:
    """Cancel the pending jobs of a ProcessPoolExecutor and terminate its workers (running jobs are abandoned), so
    Ctrl-C ends a command in about a second instead of after the running jobs."""
    stop = getattr(ex, "terminate_workers", None)  # Python 3.14+
    if stop is not None:
        stop()
        return
    procs = list((getattr(ex, "_processes", None) or {}).values())  # before shutdown() forgets them
    ex.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()


def _run_ray(jobs, fn, arrays, meta, on_result, on_failure, n_jobs, threads, address) -> None:
    """Ray tasks (1 CPU each); on a cluster every node needs this package installed (same environment)."""
    with ray_session(address, what="--backend ray", num_cpus=n_jobs, include_dashboard=False) as (ray, cluster):
        threads = 1 if cluster else threads  # a cluster's tasks get one CPU each
        ref = ray.put(arrays)
        task = ray.remote(num_cpus=1, max_retries=0)(_ray_job)
        pending = {task.remote(fn, ref, meta, job, threads): job for job in jobs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=WAKE_S)
            for r in done:
                job = pending.pop(r)
                try:
                    out = ray.get(r)
                except Exception as exc:  # noqa: BLE001
                    out = on_failure(job, exc)
                on_result(job, out)


# --- long-lived worker processes -------------------------------------------------------------------------------------
