"""Long-lived worker processes (embed workers): one spawned, non-daemonic process per task with its own environment
(e.g. ``CUDA_VISIBLE_DEVICES``) and a one-way message pipe; a killed worker cannot wedge the others and is described
in one line (:func:`describe_exit`). Job pools over shared arrays are :mod:`pipeline.core.parallel`."""

from __future__ import annotations

import os
import signal
import sys
from typing import Callable

from pipeline.core.parallel import WAKE_S, temporary_environ


def describe_exit(code: int | None) -> str:
    """'was killed by SIGKILL' / 'exited with code N' for a worker's exit code."""
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def run_processes(
    tasks: list[tuple[int, tuple]], target: Callable, envs: dict[int, dict], on_message: Callable[[int, object], None]
) -> dict:
    """Start ``target(*args, conn, parent_pid)`` in one spawned process per ``(index, args)`` of ``tasks`` (with
    ``envs[index]`` in its environment), hand every message it sends on ``conn`` to ``on_message(index, msg)``
    and wait for all of them; returns {index: the finished Process} (``exitcode``, ``pid``). Ctrl-C or an error
    here stops the workers (terminate, then kill) after reading what they sent."""
    import multiprocessing as mp
    from multiprocessing.connection import wait

    ctx = mp.get_context("spawn")  # safe with CUDA and with vLLM's own engine processes
    procs, readers, sentinels = {}, {}, {}

    def drain(conn, i: int) -> None:
        try:
            while conn.poll():
                on_message(i, conn.recv())
        except (EOFError, OSError):
            pass

    try:
        for i, args in tasks:
            recv, send = ctx.Pipe(duplex=False)
            p = ctx.Process(
                target=target, args=(*args, send, os.getpid()), name=f"micro-worker-{i}", daemon=False
            )  # non-daemonic: vLLM starts its own engine process
            with temporary_environ(envs.get(i, {})):
                p.start()
            send.close()
            procs[i], readers[recv], sentinels[p.sentinel] = p, i, i
        while sentinels:
            for obj in wait([*readers, *sentinels], timeout=WAKE_S):
                if obj in readers:
                    try:
                        on_message(readers[obj], obj.recv())
                    except (EOFError, OSError):
                        del readers[obj]
                        obj.close()
                elif obj in sentinels:
                    i = sentinels.pop(obj)
                    procs[i].join()
                    for conn, j in list(readers.items()):
                        if j == i:
                            drain(conn, i)
                            del readers[conn]
                            conn.close()
    except BaseException:  # Ctrl-C (the workers got SIGINT too) or an error here: stop the workers
        for p in procs.values():
            if p.is_alive():
                p.terminate()
        for p in procs.values():
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
        for conn, i in list(readers.items()):
            drain(conn, i)  # count what was saved, for the "interrupted: N saved" line
        raise
    return procs


def quick_exit(code: int) -> None:
    """Leave a worker without interpreter teardown (seconds with torch loaded); its work is already on disk.
    Multiprocessing's own exit hooks still run (they release e.g. named semaphores)."""
    try:
        from multiprocessing import util

        util._exit_function()
    except Exception:  # noqa: BLE001 - best effort
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    os._exit(code)
