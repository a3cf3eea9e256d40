"""Data-parallel Stage 0: the texts missing from the cache are embedded by N worker processes (or Ray actors).

``micro embed PAIRS --out RUN --workers N`` (or ``--ray``) plans the run exactly as the single-process path does
(:func:`pipeline.embed.embed.embed_pairs`: render, dedupe, look up the cache, count overlong texts) and then hands the
missing texts to :class:`ParallelEmbedder` instead of embedding them in-process:

* **Sharding.** Text *i* goes to worker ``u64(key_i[:8]) % N`` (keys are content hashes, so this is deterministic
  and balanced); each worker embeds its share longest first, one atomic shard per backend chunk
  (:func:`pipeline.embed.embed.embed_missing`), into the SAME content-addressed cache folder. The store records each
  shard in the manifest under an inter-process lock, so workers never need to coordinate.
* **Workers build their own backend** from ``(factory, backend name, model, kwargs)``: a loaded model is never
  pickled. A worker checks that its backend's fingerprint equals the parent's (same cache folder, same keys).
  Each worker sees ``MICRO_WORKER_INDEX`` (0-based) and ``MICRO_WORKERS`` in its environment.
* **Local processes** (``--workers N``) are started by :func:`pipeline.core.parallel.run_processes` (spawned,
  non-daemonic so vLLM may start its engine process, a parent watchdog in each). CPU threads are capped
  so that workers x threads <= the cores this process may use (``OMP_NUM_THREADS`` & co. and
  ``torch.set_num_threads``; a smaller value already in the environment wins). On GPUs (``--device cuda``, or
  ``auto`` where GPUs are visible; every backend), worker *i* gets ``CUDA_VISIBLE_DEVICES`` set to the
  *i*-th visible GPU (the i-th group of ``tensor_parallel_size`` GPUs for vLLM, so ``--tensor-parallel-size``
  still applies inside each worker); "visible" means the parent's ``CUDA_VISIBLE_DEVICES`` list if set, else
  every GPU torch sees. vLLM needs ``workers x tensor_parallel_size`` GPUs (one engine per replica, data
  parallel); the transformers backend shares GPUs round-robin when there are more workers than GPUs.
* **Progress.** Workers report each saved chunk over their own one-way pipe (a killed worker cannot wedge the
  others); the parent feeds one progress bar (Ray: one tick per finished chunk).
* **Failure.** If a worker dies (killed, crashed, or an exception), the others finish their share, then the parent
  raises a one-line :class:`MicroError` naming the worker. Every finished chunk (also the dead worker's) stays in
  the cache, so rerunning the same command embeds only what is still missing.
* **Ray** (``--ray``, extra ``pip install -e '.[ray]'``): long-lived Ray actors (one per GPU, per CPU node or per
  ``--workers``), each loading the model once, pull chunks of the missing texts; a lost node's chunks go to the
  surviving actors (see :mod:`pipeline.embed.ray_actors`). Joins ``--address`` / ``RAY_ADDRESS`` when given, else
  starts a local Ray (and shuts it down afterwards). On a cluster the cache is an object-store URL
  (``--cache-dir s3://bucket/prefix``) or a folder every node sees at the same path; the model path and this
  package must exist on every node.

After the workers finish, the parent re-reads the manifest and returns to ``embed_pairs``, which merges the run's
new shards (``EmbeddingStore.compact(only=...)``) and writes the run folder exactly as the single-process path.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from cache.store import EmbeddingStore, key_prefix_u64
from cache.stores import open_store
from pipeline.core.parallel import ray_session, thread_env, threads_per_worker, watch_parent
from pipeline.core.processes import describe_exit, quick_exit, run_processes
from pipeline.embed.backends.device import device_kind, visible_gpus
from pipeline.embed.backends.planning import BackendSpec
from pipeline.errors import MicroError

# --- planning -----------------------------------------------------------------------------------------------------


def shard_indices(keys: np.ndarray, n: int) -> list[np.ndarray]:
    """Positions of ``keys`` (|S16 content keys) per worker: worker ``u64(key[:8]) % n``, input order kept."""
    if n < 1:
        raise MicroError(f"--workers must be >= 1, got {n}")
    owner = key_prefix_u64(keys) % np.uint64(n) if len(keys) else np.empty(0, np.uint64)
    return [np.flatnonzero(owner == np.uint64(i)) for i in range(n)]


def uses_gpu(kwargs: dict) -> bool:
    """Whether workers of a backend with these options run on GPUs (and so get one GPU (group) each):
    ``--device cuda[:N]``, or ``auto`` (the default, every backend) where GPUs are visible."""
    kind = device_kind(kwargs.get("device"))
    return kind == "cuda" if kind is not None else bool(visible_gpus())


def gpu_assignment(workers: int, gpus: Sequence[str], per_worker: int, exclusive: bool) -> list[str]:
    """CUDA_VISIBLE_DEVICES value of each worker: consecutive groups of ``per_worker`` GPUs."""
    need = workers * per_worker
    if len(gpus) < need:
        if exclusive or len(gpus) < per_worker:
            raise MicroError(
                f"--workers {workers} x {per_worker} GPU(s) per worker needs {need} GPUs but "
                f"{len(gpus)} are visible ({','.join(gpus) or 'none'}); use fewer --workers"
            )
        groups = len(gpus) // per_worker  # round-robin over whole groups
        return [",".join(gpus[(i % groups) * per_worker : (i % groups + 1) * per_worker]) for i in range(workers)]
    return [",".join(gpus[i * per_worker : (i + 1) * per_worker]) for i in range(workers)]


# --- worker side --------------------------------------------------------------------------------------------------


@dataclass
class _Job:
    index: int
    workers: int
    spec: BackendSpec
    cache_root: str
    fingerprint: dict
    fingerprint_id: str
    dtype: str
    threads: int


def _one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split()) or "(no message)"
    return msg if isinstance(exc, MicroError) else f"{type(exc).__name__}: {msg}"


def _run_job(
    job: _Job, texts: list[str], keys: np.ndarray, lengths: np.ndarray | None, progress: Callable[[int], None] | None
) -> int:
    """Build the backend, check its fingerprint, embed ``texts`` (token counts ``lengths``, as the parent counted
    them; None: counted here) into the cache; returns the count embedded."""
    from pipeline.embed.backends.base import fingerprint_id
    from pipeline.embed.embed import embed_missing

    backend = job.spec.build()
    try:
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(job.threads)
        fid = fingerprint_id(backend.fingerprint())
        if fid != job.fingerprint_id:
            raise MicroError(
                f"its backend has fingerprint {fid}, the parent's is {job.fingerprint_id} "
                "(same backend options on every worker?)"
            )
        store = open_store(job.cache_root, job.fingerprint, job.fingerprint_id, job.dtype)
        return embed_missing(store, backend, texts, keys, progress, lengths=lengths)
    finally:
        backend.close()


def _process_worker(job: _Job, texts: list[str], keys: np.ndarray, lengths, conn, parent_pid: int) -> None:
    """Entry point of a spawned worker process: messages ("done", n) per chunk, then ("ok", n) or ("error", msg)."""
    watch_parent(parent_pid)
    code = 0
    try:
        n = _run_job(job, texts, keys, lengths, lambda k: conn.send(("done", int(k))))
        conn.send(("ok", n))
    except KeyboardInterrupt:
        code = 130
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as one line
        code = 1
        try:
            conn.send(("error", _one_line(exc)))
        except OSError:
            pass
    conn.close()
    if job.spec.name == "vllm":  # a normal exit: vLLM's finalizers release its engine's shared memory
        sys.exit(code)
    quick_exit(code)


# --- parent side --------------------------------------------------------------------------------------------------


def _worker_env(index: int, workers: int, threads: int, cuda: str | None) -> dict[str, str]:
    env = {
        "MICRO_WORKER_INDEX": str(index),
        "MICRO_WORKERS": str(workers),
        "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "false"),
        **thread_env(threads),
    }
    if cuda is not None:
        env["CUDA_VISIBLE_DEVICES"] = cuda
    return env


class ParallelEmbedder:
    """Drop-in for :func:`pipeline.embed.embed.embed_missing` (pass as ``embed_pairs(..., embed_fn=...)``) that embeds
    the missing texts with ``workers`` processes (or Ray actors), each building the backend from ``spec``."""

    def __init__(
        self,
        spec: BackendSpec,
        workers: int = 2,
        *,
        use_ray: bool = False,
        address: str | None = None,
    ):
        if workers < 1:
            raise MicroError(f"--workers must be >= 1, got {workers}")
        if address and not use_ray:
            raise MicroError("--address is the Ray cluster to join: it needs --ray")
        if use_ray and importlib.util.find_spec("ray") is None:
            raise MicroError("--ray needs Ray: pip install -e '.[ray]'")
        self.spec, self.workers, self.use_ray, self.address = spec, int(workers), use_ray, address
        self.threads = threads_per_worker(self.workers)
        self.saved: list[int] = []  # texts saved per worker (last call)

    def _jobs(self, store: EmbeddingStore, gpu: bool = False, n: int | None = None) -> list[_Job]:
        spec = self.spec
        if gpu and str(spec.kwargs.get("device", "")).startswith("cuda:"):  # each worker sees only its own GPU(s)
            spec = BackendSpec(spec.name, spec.model, {**spec.kwargs, "device": "cuda"}, spec.factory)
        common = (spec, str(store.root), store.fingerprint, store.fingerprint_id, store.dtype, self.threads)
        n = self.workers if n is None else n
        return [_Job(i, n, *common) for i in range(n)]

    def __call__(
        self,
        store: EmbeddingStore,
        backend,
        texts: list[str],
        keys: np.ndarray,
        progress: Callable[[int], None] | None = None,
        *,
        lengths=None,
        log=None,
    ) -> int:
        """Each worker gets its share of ``texts``, ``keys`` and ``lengths`` (the token counts, so that no worker
        counts them again; None: each counts its own); ``log`` is accepted for
        :func:`pipeline.embed.embed.embed_missing`'s signature: each worker reports to its own stderr."""
        if not texts:
            return 0
        parts = shard_indices(keys, 1 if self.use_ray else self.workers)  # Ray: the actors pull chunks
        split = [([texts[i] for i in p], keys[p], None if lengths is None else np.asarray(lengths)[p]) for p in parts]
        if self.use_ray:
            done = self._run_ray(store, split, progress, backend, log)
        else:
            done = self._run_processes(store, split, progress)
        store.refresh()  # the workers' shards, for embed_pairs' compaction and run.json
        return done

    def _failed(self, store, why: list[str], total: int | None = None) -> MicroError:
        saved = f"the {total} texts saved by the workers stay" if total is not None else "what the workers saved stays"
        return MicroError(
            "; ".join(why) + f"; {saved} in the cache ({store.dir}): rerun the same command to embed the rest"
        )

    @property
    def gpus_per_worker(self) -> int:
        """GPUs of one worker on a GPU: vLLM's tensor-parallel group, else one."""
        return int(self.spec.kwargs.get("tensor_parallel_size") or 1) if self.spec.name == "vllm" else 1

    # --- local processes ---
    def _cuda(self) -> list[str | None]:
        if not uses_gpu(self.spec.kwargs):
            return [None] * self.workers
        return gpu_assignment(self.workers, visible_gpus(), self.gpus_per_worker, exclusive=self.spec.name == "vllm")

    def _run_processes(self, store, split, progress) -> int:
        cuda = self._cuda()
        work = list(zip(self._jobs(store, cuda[0] is not None), split))  # (job, (texts, keys, lengths))
        todo = {job.index: len(share[0]) for job, share in work}
        self.saved = [0] * self.workers
        errors: dict[int, str] = {}

        def handle(i: int, msg) -> None:
            kind, val = msg
            if kind == "done":
                self.saved[i] += val
                if progress:
                    progress(val)
            elif kind == "error":
                errors[i] = val

        procs = run_processes(
            [(job.index, (job, *share)) for job, share in work if share[0]],
            _process_worker,
            {i: _worker_env(i, self.workers, self.threads, cuda[i]) for i in range(self.workers)},
            handle,
        )
        failed = [i for i, p in procs.items() if p.exitcode != 0]
        if failed:
            why = []
            for i in failed:
                p = procs[i]
                what = f"failed: {errors[i]}" if i in errors else describe_exit(p.exitcode)
                why.append(
                    f"embedding worker {i} of {self.workers} (pid {p.pid}) {what} after saving "
                    f"{self.saved[i]} of {todo[i]} texts"
                )
            raise self._failed(store, why, sum(self.saved))
        return sum(self.saved)

    # --- Ray ---
    def _run_ray(self, store, split, progress, backend=None, log=None) -> int:
        from pipeline.embed import ray_actors

        texts = [t for share in split for t in share[0]]
        keys = np.concatenate([share[1] for share in split])
        lengths = None if split[0][2] is None else np.concatenate([share[2] for share in split])
        with ray_session(self.address, log_to_driver=False) as (ray, _):  # errors come back as one line
            kind = device_kind(self.spec.kwargs.get("device"))
            gpu = kind == "cuda" if kind is not None else ray.cluster_resources().get("GPU", 0) > 0  # auto: cluster's
            self.saved = ray_actors.run(
                ray,
                lambda on_gpu, n: self._jobs(store, on_gpu, n),
                self.workers,
                self.gpus_per_worker,
                gpu,
                backend,
                texts,
                keys,
                lengths,
                progress,
                log,
            )
        return sum(self.saved)
