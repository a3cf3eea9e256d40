"""Execution of sweep trials: the trial function and the local (process pool) and Ray backends.

A *job* is one Stage-1 fit (fit hyperparameters + seed) and the trials that share it: one trial for
``--stage fit``, one per routing configuration for ``--stage route|all`` (the fit is done once per job).
Workers never receive feature arrays per job: the local backend writes them once as ``.npy`` files that every
worker memory-maps (``np.load(mmap_mode="r")``); the Ray backend puts them in the object store once
(``ray.put``) and passes the reference. BLAS / OpenMP threads per worker are capped so that
workers × threads ≤ cores.
"""
from __future__ import annotations

import hashlib
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.parallel import THREAD_ENV, temporary_environ

PRELOAD = ["numpy", "threadpoolctl", "torch", "sklearn.utils.extmath", "heads.mixture", "heads.metrics",
           "heads.router", "pipeline.fit.fit", "pipeline.route.route", "pipeline.sweep.trials"]
FIT_KEYS = ("alpha", "l2", "n_init", "max_iter", "tol", "init", "dim", "gate_dim", "gate_hidden")


def n_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover (macOS)
        return max(1, os.cpu_count() or 1)


# ----------------------------------------------------------------------------------------------- data
@dataclass
class SweepData:
    """Feature arrays a sweep shares with its workers, and what the trials need to know about them."""

    arrays: dict       # delta, prompt, context (the prompt array itself if no contexts), split (0 train, 1 test,
    meta: dict         # -1 other), group (codes into meta["groups"]), prompt_id (codes), has_context
    data_id: str
    fingerprint_id: str = ""
    unique_texts: int | None = None

    @classmethod
    def from_arrays(cls, delta, prompt, split, group=None, context=None, prompt_id=None, fingerprint_id="arrays",
                    unique_texts=None) -> "SweepData":
        n = len(delta)
        split = np.asarray(split)
        codes = np.where(split == "train", 0, np.where(split == "test", 1, -1)).astype(np.int8) \
            if split.dtype.kind in "OUS" else split.astype(np.int8)
        g = ["all" if x is None else str(x) for x in (group if group is not None else [None] * n)]
        names, gcodes = np.unique(np.array(g, dtype=object).astype(str), return_inverse=True)
        pid = np.arange(n) if prompt_id is None else np.unique(np.asarray(prompt_id), return_inverse=True)[1]
        has_ctx = np.zeros(n, bool) if context is None else np.ones(n, bool)
        return cls._make(delta, prompt, context, codes, gcodes, names, pid, has_ctx, fingerprint_id, unique_texts)

    @classmethod
    def from_run(cls, run_dir: str | Path) -> "SweepData":
        import pyarrow.parquet as pq

        from pipeline.core.run import load_features

        feats = load_features(run_dir)
        keys = pq.read_table(Path(run_dir) / "keys.parquet", columns=["prompt"]).column("prompt").to_pylist()
        pid = np.unique(np.array(keys, dtype=object).astype(bytes), return_inverse=True)[1]
        split = np.where(feats.split == "train", 0, np.where(feats.split == "test", 1, -1)).astype(np.int8)
        g = np.array(["all" if x is None else str(x) for x in feats.group], dtype=object).astype(str)
        names, gcodes = np.unique(g, return_inverse=True)
        ctx = feats.context if feats.has_context.any() else None
        ids = "\n".join(map(str, feats.pairs.column("pair_id").to_pylist()))
        return cls._make(feats.delta, feats.prompt, ctx, split, gcodes, names, pid, feats.has_context,
                         feats.fingerprint_id, feats.run.get("summary", {}).get("unique_texts"), ids)

    @classmethod
    def _make(cls, delta, prompt, context, split, gcodes, names, pid, has_ctx, fid, unique_texts, ids=None):
        delta, prompt = np.ascontiguousarray(delta), np.ascontiguousarray(prompt)
        context = prompt if context is None else np.ascontiguousarray(context)
        train = split == 0
        auto = "context" if has_ctx.any() and has_ctx[train].all() else "prompt"
        h = hashlib.sha256(f"{fid}|{delta.shape}|{prompt.shape}".encode())
        h.update(split.tobytes())
        sample = np.ascontiguousarray(delta[:: max(1, len(delta) // 512)])
        h.update(ids.encode() if ids is not None else sample.tobytes())
        arrays = {"delta": delta, "prompt": prompt, "context": context, "split": split,
                  "group": gcodes.astype(np.int32), "prompt_id": pid.astype(np.int64), "has_context": has_ctx}
        meta = {"groups": [str(x) for x in names], "gate_input_auto": auto, "has_context": bool(has_ctx.any())}
        return cls(arrays, meta, f"{fid}:{h.hexdigest()[:12]}", fid, unique_texts)



def holdout_mask(prompt_id: np.ndarray, train: np.ndarray, frac: float, seed: int) -> np.ndarray:
    """Validation rows: train pairs whose prompt falls in a seeded random ``frac`` of the prompts (grouped by
    prompt, so no prompt is on both sides); a different draw per seed (repeated random sub-sampling)."""
    if frac <= 0 or len(prompt_id) == 0:
        return np.zeros(len(prompt_id), dtype=bool)
    u = np.random.default_rng([int(seed), 7919]).random(int(prompt_id.max()) + 1)
    return train & (u[prompt_id] < frac)


@dataclass
class _Part:
    """The attributes of pipeline.core.run.Features that pipeline.route.route.route_seeds reads."""

    delta: np.ndarray
    prompt: np.ndarray
    context: np.ndarray
    group: np.ndarray
    has_context: np.ndarray

    @property
    def n(self) -> int:
        return len(self.group)


def _part(arrays: dict, meta: dict, rows: np.ndarray) -> _Part:
    names = np.array(meta["groups"], dtype=object)
    return _Part(arrays["delta"][rows], arrays["prompt"][rows], arrays["context"][rows],
                 names[arrays["group"][rows]], arrays["has_context"][rows])


def _nanmean(v) -> float:
    v = [x for x in v if not math.isnan(x)]
    return float(np.mean(v)) if v else math.nan


def column_name(prefix: str, group: str) -> str:
    return prefix + "".join(c if c.isalnum() or c == "_" else "_" for c in str(group))


def _fit(arrays: dict, meta: dict, fit: dict, seed: int, holdout: float):
    """Fit one model on train minus the validation rows; Stage-1 metrics on fit / val / test rows."""
    from heads.metrics import accuracy, expected_calibration_error, log_likelihood
    from pipeline.fit.fit import build_model

    gi = fit["gate_input"]
    if gi == "auto":
        gi = meta["gate_input_auto"]
    elif gi == "context" and not meta["has_context"]:
        raise ValueError("gate_input=context: this run has no contexts")
    elif gi not in ("prompt", "context"):
        raise ValueError(f"gate_input must be prompt, context or auto, got {gi!r}")
    split, group = arrays["split"], arrays["group"]
    train, test = split == 0, split == 1
    val = holdout_mask(arrays["prompt_id"], train, holdout, seed)
    rows = {"train": train & ~val, "val": val, "test": test}
    model = build_model(fit["k"], fit["gate"], None, random_state=seed, **{k: fit[k] for k in FIT_KEYS})
    needs_gate = model.gate == "context" and model.n_components > 1
    D, X = arrays["delta"], arrays[gi]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(D[rows["train"]], X[rows["train"]] if needs_gate else None)
    out = {"n_iter": int(model.n_iter_), "converged": bool(model.converged_),
           "objective": float(model.objective_), "n_collapsed": len(model.collapsed_pairs_),
           "fit_seconds": float(model.fit_time_)}
    for name, m in rows.items():
        out[f"{name}_n"] = int(m.sum())
        if not m.any():
            out[f"{name}_loglik"] = out[f"{name}_acc"] = out[f"{name}_acc_macro"] = math.nan
            continue
        p = model.predict_proba(D[m], X[m] if needs_gate else None)
        out[f"{name}_loglik"], out[f"{name}_acc"] = log_likelihood(p), accuracy(p)
        g = group[m]
        accs = [float(np.mean(p[g == j] > 0.5)) if (g == j).any() else math.nan for j in range(len(meta["groups"]))]
        out[f"{name}_acc_macro"] = _nanmean(accs)
        if name == "test":
            out["test_ece"] = expected_calibration_error(p)
            out.update({column_name("acc_", n): a for n, a in zip(meta["groups"], accs)})
    parts = (_part(arrays, meta, rows["train"]), _part(arrays, meta, rows["test"]))
    return model, out, parts, (gi if needs_gate else "none")


def _route(model, parts, gate_used: str, route: dict, seed: int) -> dict:
    from pipeline.route.route import route_seeds

    train, test = parts
    if test.n == 0:
        raise ValueError("routing needs test pairs (split == 'test')")
    res = route_seeds(model, {"gate_input": gate_used}, train, test, tau=route["tau"], epochs=route["epochs"],
                      budget=route["budget"], seeds=(seed,), lr=route["lr"])
    after = res.after[0]
    out = {column_name("routed_acc_", g): float(a) for g, a in zip(res.groups, after)}
    out["routed_acc_macro"] = _nanmean(after.tolist())
    return out


def _err(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}"[:500]


def run_job(arrays: dict, meta: dict, job: dict) -> list[dict]:
    """Run one job (see module docstring); never raises: failures become the rows' ``error``."""
    t0 = time.perf_counter()
    try:
        model, fit_out, parts, gate_used = _fit(arrays, meta, job["fit"], job["seed"], job["holdout"])
        fit_err = None
    except Exception as exc:  # noqa: BLE001 -- a failing trial is recorded, the sweep goes on
        fit_err = _err(exc)
    fit_wall = time.perf_counter() - t0
    rows = []
    for i, t in enumerate(job["trials"]):
        t1 = time.perf_counter()
        row = {"config_hash": t["hash"], "error": fit_err, "fit_reused": i > 0}
        if fit_err is None:
            row.update(fit_out)
            if t["route"] is not None:
                try:
                    row.update(_route(model, parts, gate_used, t["route"], job["seed"]))
                except Exception as exc:  # noqa: BLE001
                    row["error"] = _err(exc)
        row["wall_seconds"] = (fit_wall if i == 0 else 0.0) + time.perf_counter() - t1
        rows.append(row)
    return rows


def error_rows(job: dict, exc: BaseException) -> list[dict]:
    """Rows for a job whose worker died (the trial function itself never raises); one ``error`` row for a job
    without sweep trials."""
    if "trials" not in job:
        return [{"error": _err(exc)}]
    return [{"config_hash": t["hash"], "error": _err(exc), "fit_reused": False, "wall_seconds": math.nan}
            for t in job["trials"]]


# --------------------------------------------------------------------------------------------- local backend
_WORKER: dict = {}


def _exit_with(pid: int) -> None:
    """Worker watchdog: exit when the sweep process is gone (e.g. killed with SIGKILL); pool workers would
    otherwise wait forever on their task queue."""
    while True:
        time.sleep(1.0)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:  # pragma: no cover -- the pid was reused by another user's process
            os._exit(1)


def _init_worker(npy_dir: str, names: list, aliases: dict, meta: dict, threads: int, parent: int) -> None:
    import threading

    from threadpoolctl import threadpool_limits

    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()

    _WORKER["limits"] = threadpool_limits(threads)  # kept alive for the worker's lifetime
    arrays = {n: np.load(os.path.join(npy_dir, f"{n}.npy"), mmap_mode="r") for n in names}
    arrays.update({a: arrays[b] for a, b in aliases.items()})
    _WORKER["arrays"], _WORKER["meta"] = arrays, meta
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover
        pass


def _worker_job(job: dict, fn=None) -> list[dict]:
    return (fn or run_job)(_WORKER["arrays"], _WORKER["meta"], job)


def _remove_stale_dirs() -> None:
    """Delete shared-array folders left by sweeps that were killed (their pid is in the folder name)."""
    import shutil

    for d in Path(tempfile.gettempdir()).glob("micro-sweep-*-*"):
        try:
            os.kill(int(d.name.split("-")[2]), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (ValueError, PermissionError, IndexError):
            pass


def run_local(jobs: list, arrays: dict, meta: dict, n_jobs: int, threads: int, on_rows,
              start_method: str | None = None, fn=None) -> None:
    """Run ``jobs`` in a process pool of ``n_jobs`` workers (in this process when ``n_jobs == 1``). Start method:
    forkserver where available (workers fork from a server that imported numpy / torch / the heads once and ran
    nothing, so no BLAS or OpenMP state is inherited), else spawn; never plain fork. ``fn(arrays, meta, job)``
    (a module-level function, default :func:`run_job`) runs each job and returns its rows."""
    if n_jobs <= 1:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(threads):
            for job in jobs:
                on_rows(job, (fn or run_job)(arrays, meta, job))
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    _remove_stale_dirs()
    with tempfile.TemporaryDirectory(prefix=f"micro-sweep-{os.getpid()}-") as tmp:
        names, aliases, seen = [], {}, {}
        for name, arr in arrays.items():
            if id(arr) in seen:                       # context is prompt when the run has no contexts
                aliases[name] = seen[id(arr)]
                continue
            np.save(os.path.join(tmp, f"{name}.npy"), np.ascontiguousarray(arr))
            seen[id(arr)] = name
            names.append(name)
        # read by BLAS when a spawned worker imports it
        with temporary_environ({k: str(threads) for k in THREAD_ENV}):
            start_method = start_method or ("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
            ctx = mp.get_context(start_method)
            if start_method == "forkserver":  # the server imports these once; every worker forks from it
                ctx.set_forkserver_preload(PRELOAD)
            with ProcessPoolExecutor(n_jobs, mp_context=ctx, initializer=_init_worker,
                                     initargs=(tmp, names, aliases, meta, threads, os.getpid())) as ex:
                futs = {ex.submit(_worker_job, job, fn): job for job in jobs}
                try:
                    for f in as_completed(futs):
                        try:
                            rows = f.result()
                        except Exception as exc:  # noqa: BLE001 -- a worker died (e.g. out of memory)
                            rows = error_rows(futs[f], exc)
                        on_rows(futs[f], rows)
                except BaseException:
                    ex.shutdown(wait=False, cancel_futures=True)
                    raise


# ----------------------------------------------------------------------------------------------- ray backend
def _ray_job(arrays: dict, meta: dict, job: dict, threads: int) -> list[dict]:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(threads):
        return run_job(arrays, meta, job)


def run_ray(jobs: list, arrays: dict, meta: dict, n_jobs: int, threads: int, on_rows,
            address: str | None = None) -> None:
    """Run ``jobs`` as Ray tasks (1 CPU each); the arrays go to the object store once. Joins ``address`` /
    RAY_ADDRESS when given, else starts a local Ray with ``n_jobs`` CPUs; an already initialised Ray is used
    as it is (and left running). On a cluster every node needs this package installed (same environment)."""
    from pipeline.errors import MicroError

    try:
        import ray
    except ImportError:
        raise MicroError("--backend ray needs Ray: pip install 'micro-rm[ray]'") from None
    own = not ray.is_initialized()
    if own:
        addr = address or os.environ.get("RAY_ADDRESS")
        kw = {"address": addr} if addr else {"num_cpus": n_jobs, "include_dashboard": False}
        ray.init(log_to_driver=False, **kw)
        threads = 1 if addr else threads   # a cluster's tasks get one CPU each
    try:
        ref = ray.put(arrays)
        task = ray.remote(num_cpus=1, max_retries=0)(_ray_job)
        pending = {task.remote(ref, meta, job, threads): job for job in jobs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for r in done:
                job = pending.pop(r)
                try:
                    rows = ray.get(r)
                except Exception as exc:  # noqa: BLE001
                    rows = error_rows(job, exc)
                on_rows(job, rows)
    finally:
        if own:
            ray.shutdown()
