"""Stage 0 across a Ray cluster: long-lived Ray actors, each holding the model once, embed chunks of the missing texts.

``micro embed PAIRS --out RUN --ray [--address ADDR] [--cache-dir DIR_OR_URL]`` (:class:`pipeline.embed.workers.
ParallelEmbedder` with ``use_ray``) hands the texts the cache lacks to :func:`embed_on_ray`:

* **Actors.** One per GPU (a vLLM tensor-parallel group) on a GPU cluster; on a CPU-only cluster one per alive node
  (pinned to it, ``num_cpus`` = the node's CPUs, as many torch threads), or ``--workers N`` actors of one CPU each.
  Each actor builds its backend once (never pickled), checks its fingerprint against the parent's and opens the one
  content-addressed cache itself (a folder every node sees, or an object-store URL such as ``s3://bucket/prefix``:
  shards with create-only PUTs and manifest fragments, see :mod:`cache.objstore`).
* **Chunks.** The parent orders the missing texts longest first (as the single-process path does) and cuts them
  into consecutive chunks of a multiple of the backend's chunk size, so every chunk is embedded in the same batches
  as one process would; idle actors pull the next chunk. An actor first drops the keys another writer (a concurrent
  run, or the lost actor before it died) has cached meanwhile, then writes its own shards.
* **A lost node.** A chunk whose actor died (node gone, raylet killed, out of memory) goes back to the queue for the
  surviving actors (one line names the node); if no actor is left, the run fails with one line naming the lost
  node(s) and the count left missing. Finished chunks stay in the cache, so a rerun embeds exactly the rest.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable

import numpy as np

from pipeline.core.parallel import WAKE_S
from pipeline.embed.stream import length_order
from pipeline.errors import MicroError

MAX_CHUNK = 16384  # texts per chunk at most (one or more shards each)
START_TIMEOUT = 600.0  # seconds an actor may take to start and load its model


class EmbedActor:
    """The body of one Ray actor: a backend built from ``job.spec`` and the cache at ``job.cache_root``."""

    def __init__(self, job, threads: int):
        from cache.stores import open_store
        from pipeline.embed.backends.base import fingerprint_id

        os.environ["MICRO_WORKER_INDEX"], os.environ["MICRO_WORKERS"] = str(job.index), str(job.workers)
        self.backend = job.spec.build()
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(max(1, int(threads)))
        fid = fingerprint_id(self.backend.fingerprint())
        if fid != job.fingerprint_id:
            raise MicroError(
                f"its backend has fingerprint {fid}, the parent's is {job.fingerprint_id} "
                "(same backend options on every worker?)"
            )
        self.store = open_store(job.cache_root, job.fingerprint, job.fingerprint_id, job.dtype)

    def where(self) -> tuple[str, int]:
        """(node id, pid) of this actor."""
        import ray

        return ray.get_runtime_context().get_node_id(), os.getpid()

    def embed(self, texts: list[str], keys: np.ndarray, lengths: np.ndarray) -> int:
        """Embed the texts of ``keys`` not cached yet (by anyone); returns the count this actor embedded."""
        from pipeline.embed.embed import embed_missing

        self.store.refresh()
        miss = np.flatnonzero(self.store.missing(keys))
        return embed_missing(self.store, self.backend, [texts[i] for i in miss], keys[miss], lengths=lengths[miss])


def chunks(lengths: np.ndarray, max_length: int, unit: int, actors: int) -> list[np.ndarray]:
    """Positions of each chunk: the texts longest first, cut into consecutive runs of a multiple of ``unit``
    (the backend's chunk size) so that about 8 chunks go to each actor (at most :data:`MAX_CHUNK` texts)."""
    order = length_order(lengths, max_length)
    unit = max(1, int(unit))
    size = -(-len(order) // max(1, 8 * actors))
    size = max(unit, min(MAX_CHUNK, -(-size // unit) * unit))
    return [order[i : i + size] for i in range(0, len(order), size)]


def actor_options(ray, workers: int, gpus_per_worker: int, gpu: bool) -> list[tuple[dict, int]]:
    """(Ray options, torch threads) of each actor (see the module docstring)."""
    if gpu:
        n = workers if workers > 1 else int(ray.cluster_resources().get("GPU", 0) // gpus_per_worker)
        return [({"num_cpus": 1, "num_gpus": gpus_per_worker}, 1)] * max(1, n)
    if workers > 1:
        return [({"num_cpus": 1, "scheduling_strategy": "SPREAD"}, 1)] * workers
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    out = []
    for node in ray.nodes():
        cpus = int(node.get("Resources", {}).get("CPU", 0))
        if node.get("Alive") and cpus >= 1:
            pin = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            out.append(({"num_cpus": cpus, "scheduling_strategy": pin}, cpus))
    if not out:
        raise MicroError("the Ray cluster has no alive node with a CPU for --ray")
    return out


def wait_started(ray, refs: list, grace: float = 30.0) -> list:
    """The refs of :meth:`EmbedActor.where` that answered: all of them, or those answered ``grace`` seconds after
    the first one did (an actor that cannot be placed, e.g. on a node that is gone, is left out), or within
    :data:`START_TIMEOUT` seconds."""
    t0, first, ready = time.monotonic(), None, []
    while len(ready) < len(refs):
        now = time.monotonic()
        if now - t0 > START_TIMEOUT or (first is not None and now - first > grace):
            break
        done, _ = ray.wait([r for r in refs if r not in ready], num_returns=1, timeout=1.0)
        ready += done
        if ready and first is None:
            first = time.monotonic()
    return ready


def _node(where: tuple[str, int] | None, ips: dict[str, str]) -> str:
    return f"node {ips.get(where[0], '?')} (id {where[0][:12]})" if where else "a node that never started its actor"


def _cause(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, MicroError):
        return " ".join(str(cause).split())
    return f"{type(cause).__name__}: {' '.join(str(cause).split())}"[:300]


def embed_on_ray(
    ray, jobs: list, opts: list[tuple[dict, int]], texts, keys, lengths, max_length: int, unit: int, progress, log
) -> list[int]:
    """Run the chunks on one actor per ``opts`` entry (``jobs[i]`` its job); returns the texts each embedded.
    Raises a one-line :class:`MicroError` when a chunk fails in its backend or no actor is left."""
    actor_cls = ray.remote(max_restarts=0, max_task_retries=0)(EmbedActor)
    actors = [actor_cls.options(**o).remote(job, threads) for job, (o, threads) in zip(jobs, opts)]
    starting = {a.where.remote(): i for i, a in enumerate(actors)}
    where: dict[int, tuple] = {}
    lost: list[str] = []
    ready = wait_started(ray, list(starting))
    for ref, i in starting.items():
        try:
            where[i] = ray.get(ref, timeout=0) if ref in ready else None
        except ray.exceptions.RayActorError as exc:
            cause = getattr(exc, "cause", None) or getattr(exc, "error_msg", "")
            if isinstance(getattr(exc, "cause", None), MicroError) or "MicroError" in str(cause):
                raise MicroError(f"embedding actor {i} of {len(actors)} failed: {_cause(exc)}") from None
            where[i] = None
        if where[i] is None:
            lost.append(f"actor {i} ({'did not start' if ref not in ready else 'died while starting'})")
            ray.kill(actors[i])
    ips = {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in ray.nodes()}
    idle = [i for i in range(len(actors)) if where.get(i)]
    queue = chunks(lengths, max_length, unit, len(actors))[::-1]  # pop() takes the longest first
    busy: dict = {}  # ref -> (actor index, chunk)
    saved = [0] * len(actors)
    try:
        while queue or busy:
            while queue and idle:
                i, c = idle.pop(0), queue.pop()
                busy[actors[i].embed.remote([texts[j] for j in c], keys[c], lengths[c])] = (i, c)
            if not busy:
                names = "; ".join(lost)
                left = sum(len(c) for c in queue)
                raise MicroError(
                    f"every Ray embedding actor is lost ({names}); {left} texts are left missing: "
                    "rerun the same command to embed them"
                )
            done, _ = ray.wait(list(busy), num_returns=1, timeout=WAKE_S)
            for ref in done:
                i, c = busy.pop(ref)
                try:
                    n = int(ray.get(ref))
                except ray.exceptions.RayActorError:
                    lost.append(f"actor {i} on {_node(where.get(i), ips)}")
                    if log:
                        log(
                            f"warning: Ray embedding actor {i} on {_node(where.get(i), ips)} was lost with {len(c)} "
                            "texts in flight: they go to the surviving actors"
                        )
                    queue.append(c)
                    continue
                except Exception as exc:  # noqa: BLE001 - the backend failed on this chunk: one line
                    raise MicroError(
                        f"embedding actor {i} of {len(actors)} on {_node(where.get(i), ips)} failed: {_cause(exc)}"
                    ) from None
                saved[i] += n
                idle.append(i)
                if progress and len(c):
                    progress(len(c))
    finally:
        for a in actors:
            ray.kill(a)
    if log:
        parts = [f"actor {i} on {_node(where[i], ips)}: {n}" for i, n in enumerate(saved) if where.get(i)]
        log(f"Ray: {len(parts)} embedding actor(s), texts embedded: " + "; ".join(parts))
    return saved


def run(
    ray,
    jobs_for: Callable[[bool, int], list],
    workers: int,
    gpus_per_worker: int,
    gpu: bool,
    backend,
    texts,
    keys,
    lengths,
    progress,
    log,
) -> list[int]:
    """Plan the actors on the joined cluster and embed (``jobs_for(gpu, n)``: the job of each of ``n`` actors)."""
    opts = actor_options(ray, workers, gpus_per_worker, gpu)
    lengths = np.asarray(backend.token_lengths(texts) if lengths is None else lengths)
    jobs = jobs_for(gpu, len(opts))
    return embed_on_ray(ray, jobs, opts, texts, keys, lengths, backend.max_length, backend.chunk_size, progress, log)
