"""Stage 0: embed every unique text of a pair table once into the content-addressed cache.

For each pair, four model inputs are rendered by the backend (see ``pipeline.embed.backends.base``):
prompt+chosen and prompt+rejected (response features), the prompt alone (gate feature; chat models: with the
generation prompt) and, where a context exists, context+prompt (Stage-2 router feature). Unique inputs missing
from the cache are embedded in length-sorted chunks, one atomic shard per chunk, so an interrupted run resumes.

A run folder records what was embedded::

    RUN_DIR/pairs.parquet  the pairs kept (canonical pair table)
    RUN_DIR/keys.parquet   pair_id + cache keys of chosen / rejected / prompt / context (null if no context)
    RUN_DIR/run.json       fingerprint, cache location, dtype, dim, counts
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cache.atomic import atomic_paths
from cache.store import EmbeddingStore, text_keys
from cache.stores import open_store as open_cache
from cache.writer import ShardWriter
from pipeline.core.run import ROLES
from pipeline.data.schema import read_pairs, validate_pairs
from pipeline.embed.backends.base import fingerprint_id, with_context
from pipeline.embed.stream import length_order, stream_vectors
from pipeline.errors import MicroError

DEFAULT_CACHE = Path("~/.cache/micro/embeddings")


@dataclass
class EmbedSummary:
    """Counts printed at the end of ``micro embed`` (and stored in run.json)."""

    pairs: int = 0
    pairs_kept: int = 0
    unique_texts: int = 0
    cache_hits: int = 0
    embedded: int = 0
    truncated: int = 0
    skipped_texts: int = 0
    skipped_pairs: int = 0
    seconds: float = 0.0
    embed_seconds: float = 0.0  # of ``seconds``: embedding the missing texts (model passes and shard writes)
    tokens_embedded: int = 0  # tokens of the newly embedded texts, after truncation
    texts_per_second: float = 0.0
    damaged_shards: list = field(default_factory=list)


def render_inputs(pairs: pa.Table, backend) -> dict[str, list]:
    """Exact model inputs per role: lists of length N (``context`` entries are None where no context)."""
    prompts = pairs.column("prompt").to_pylist()
    chosen = pairs.column("chosen").to_pylist()
    rejected = pairs.column("rejected").to_pylist()
    contexts = pairs.column("context").to_pylist()
    out: dict[str, list] = {r: [] for r in ROLES}
    prompt_cache: dict[tuple, str] = {}
    for msgs, c, r, ctx in zip(prompts, chosen, rejected, contexts):
        out["chosen"].append(backend.render_response(msgs, c))
        out["rejected"].append(backend.render_response(msgs, r))
        key = tuple((m["role"], m["content"]) for m in msgs)
        if key not in prompt_cache:
            prompt_cache[key] = backend.render_prompt(msgs)
        out["prompt"].append(prompt_cache[key])
        out["context"].append(backend.render_prompt(with_context(msgs, ctx)) if ctx else None)
    return out


def open_store(cache_dir: str | Path | None, backend, dtype: str, read_only: bool = False) -> EmbeddingStore:
    """The cache of this backend's fingerprint under ``cache_dir`` (a folder, or an object-store URL);
    ``read_only``: opened for reading alone (nothing on disk is touched)."""
    fp = backend.fingerprint()
    return open_cache(cache_dir or DEFAULT_CACHE, fp, fingerprint_id(fp), dtype, read_only=read_only)


def embed_missing(
    store: EmbeddingStore,
    backend,
    texts: list[str],
    keys: np.ndarray,
    progress: Callable[[int], None] | None = None,
    *,
    lengths: np.ndarray | None = None,
    log: Callable[[str], None] | None = None,
) -> int:
    """Embed ``texts`` (unique, not yet cached) longest first (token counts ``lengths``, counted here if not
    given) into ``store``, one shard per ``backend.chunk_size`` texts or more, written in the background (see
    :mod:`pipeline.embed.stream`); returns the number stored."""
    if not texts:
        return 0
    store.require_writable(len(texts))
    if lengths is None:
        lengths = backend.token_lengths(texts)
    order = length_order(lengths, backend.max_length)
    chunk = max(1, int(backend.chunk_size))
    with ShardWriter(store, progress) as writer:
        stream = stream_vectors(backend, texts, order, log)
        with contextlib.closing(stream):
            sel, vecs, n = [], [], 0
            for pos, v in stream:
                if v.shape[0] != len(pos):
                    raise MicroError(f"backend {backend.name} returned {v.shape[0]} vectors for {len(pos)} inputs")
                sel.append(pos)
                vecs.append(v)
                n += len(pos)
                if n >= chunk:
                    idx = np.concatenate(sel)
                    writer.put(keys[idx], np.concatenate(vecs))
                    sel, vecs, n = [], [], 0
            if n:
                idx = np.concatenate(sel)
                writer.put(keys[idx], np.concatenate(vecs))
    return writer.written


def embed_texts(store: EmbeddingStore, backend, texts: list[str], dtype=np.float32) -> tuple[np.ndarray, int]:
    """(n, d) vectors of exact model inputs ``texts`` (cached ones reused, missing ones embedded and stored)
    and the number newly embedded."""
    keys = text_keys(store.fingerprint_id, texts)
    uniq, first = np.unique(keys, return_index=True)
    miss = store.missing(uniq)
    todo = first[miss]
    n_new = embed_missing(store, backend, [texts[i] for i in todo], keys[todo])
    return store.lookup(keys, dtype), n_new


def embed_pairs(
    pairs_path: str | Path,
    out: str | Path,
    backend,
    *,
    cache_dir: str | Path | None = None,
    dtype: str = "float32",
    overlong: str = "truncate",
    progress_factory: Callable[[int], Callable[[int], None]] | None = None,
    log: Callable[[str], None] = print,
    embed_fn: Callable[..., int] | None = None,
    table: pa.Table | None = None,
) -> EmbedSummary:
    """Embed a pair table into the cache and write RUN_DIR (see module docstring).

    ``table``: the pair table of ``pairs_path`` if the caller has read it already (:func:`read_pairs`), else it is read
    here. ``embed_fn`` replaces :func:`embed_missing` (same signature, ``lengths`` and ``log`` by keyword), e.g. a
    :class:`pipeline.embed.workers.ParallelEmbedder` that hands the missing texts to N worker processes."""
    if overlong not in ("truncate", "skip"):
        raise MicroError(f"--overlong must be 'truncate' or 'skip', got {overlong!r}")
    t0 = time.perf_counter()
    pairs = read_pairs(pairs_path) if table is None else table
    if pairs.num_rows == 0:
        raise MicroError(f"{pairs_path}: the pair table is empty")
    summary = EmbedSummary(pairs=pairs.num_rows)
    store = open_store(cache_dir, backend, dtype)
    inputs = render_inputs(pairs, backend)
    fid = store.fingerprint_id

    uniq = sorted({t for r in ROLES for t in inputs[r] if t is not None})
    ukeys = text_keys(fid, uniq)
    summary.unique_texts = len(uniq)
    miss = store.missing(ukeys)
    summary.damaged_shards = [f"{f}: {r}" for f, r in store.damaged]  # after missing(): it reads (and checks) shards
    summary.cache_hits = int((~miss).sum())
    todo = [uniq[i] for i in np.flatnonzero(miss)]
    todo_keys = ukeys[miss]

    too_long: set[str] = set()
    # every unique text, cached or not, is counted: the counts describe the whole run, not just this process
    all_lengths = backend.token_lengths(uniq) if uniq else np.zeros(0, np.int64)
    over_all = all_lengths > backend.max_length
    lengths = all_lengths[miss]
    if overlong == "skip" and uniq:
        # a vector cached by a truncating run must not be used either
        too_long = {uniq[i] for i in np.flatnonzero(over_all)}
        keep = ~over_all[miss]
        todo = [t for t, k in zip(todo, keep) if k]
        todo_keys = todo_keys[keep]
        lengths = lengths[keep]
        summary.skipped_texts = len(too_long)
    else:
        summary.truncated = int(over_all.sum())
    summary.tokens_embedded = int(np.minimum(lengths, backend.max_length).sum())
    store.require_writable(len(todo))  # a read-only cache serves reads; writing into one fails before any work
    progress = progress_factory(len(todo)) if progress_factory else None
    run_shards = {s["file"] for s in store.manifest["shards"]}
    t_embed = time.perf_counter()
    summary.embedded = (embed_fn or embed_missing)(store, backend, todo, todo_keys, progress, lengths=lengths, log=log)
    summary.embed_seconds = time.perf_counter() - t_embed
    summary.texts_per_second = summary.embedded / summary.embed_seconds if summary.embedded else 0.0
    new_shards = [s["file"] for s in store.manifest["shards"] if s["file"] not in run_shards]
    if len(new_shards) > 1:
        store.compact(only=new_shards)  # merge this run's chunk shards; never rewrite the whole cache

    keep = np.ones(pairs.num_rows, dtype=bool)
    if too_long:
        for r in ROLES:
            keep &= np.array([t not in too_long for t in inputs[r]])
    summary.skipped_pairs = int((~keep).sum())
    summary.pairs_kept = int(keep.sum())
    if summary.pairs_kept == 0:
        raise MicroError(
            f"{pairs_path}: every pair has a text longer than max_length "
            f"{backend.max_length}; use --overlong truncate or a larger --max-length"
        )
    kept = pairs.filter(pa.array(keep))
    key_cols = {}
    row_of = {t: i for i, t in enumerate(uniq)}  # the keys were computed once per unique text above
    for r in ROLES:
        texts = [t for t, k in zip(inputs[r], keep) if k]
        present = np.array([t is not None for t in texts])
        ks = ukeys[np.fromiter((row_of.get(t, 0) for t in texts), dtype=np.int64, count=len(texts))]
        arr = pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(ks), [None, pa.py_buffer(ks.tobytes())])
        key_cols[r] = arr if present.all() else pc.if_else(pa.array(present), arr, pa.nulls(len(ks), pa.binary(16)))
    out = Path(out)
    summary.seconds = time.perf_counter() - t0
    run = {
        "fingerprint": store.fingerprint,
        "fingerprint_id": fid,
        "cache_dir": str(store.dir),
        "cache_dtype": dtype,
        "dim": store.dim,
        "backend": backend.name,
        "model_path": str(getattr(backend, "model_path", "")),
        "max_length": backend.max_length,
        "overlong": overlong,
        "source_pairs": str(Path(pairs_path).resolve()),
        "summary": asdict(summary),
    }
    with atomic_paths(out / "pairs.parquet", out / "keys.parquet", out / "run.json") as (t_pairs, t_keys, t_run):
        pq.write_table(validate_pairs(kept, str(out / "pairs.parquet")), t_pairs)  # renamed together, after all
        pq.write_table(pa.table({"pair_id": kept.column("pair_id"), **key_cols}), t_keys)
        t_run.write_text(json.dumps(run, indent=2, sort_keys=True, default=str) + "\n")
    return summary
