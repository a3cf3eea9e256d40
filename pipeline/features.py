"""Load a run's cached features as numpy arrays (no model, no per-row Python work)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cache.store import EmbeddingStore
from pipeline.errors import MicroError
from pipeline.schema import read_pairs


@dataclass
class Features:
    """Features of one run, row-aligned with ``pairs``.

    chosen, rejected, prompt, context: (N, d) arrays; ``context`` equals ``prompt`` where a pair has no
    context (``has_context`` False). ``split`` and ``group`` are (N,) object arrays (group None when absent).
    """

    pairs: pa.Table
    chosen: np.ndarray
    rejected: np.ndarray
    prompt: np.ndarray
    context: np.ndarray
    has_context: np.ndarray
    split: np.ndarray
    group: np.ndarray
    run: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.split)

    @property
    def delta(self) -> np.ndarray:
        """(N, d) chosen − rejected."""
        return self.chosen - self.rejected

    @property
    def fingerprint_id(self) -> str:
        return self.run.get("fingerprint_id", "")

    def subset(self, mask: np.ndarray) -> "Features":
        """Rows where ``mask`` (bool (N,) or int indices) holds."""
        idx = np.flatnonzero(mask) if np.asarray(mask).dtype == bool else np.asarray(mask)
        return replace(self, pairs=self.pairs.take(pa.array(idx)), chosen=self.chosen[idx],
                       rejected=self.rejected[idx], prompt=self.prompt[idx], context=self.context[idx],
                       has_context=self.has_context[idx], split=self.split[idx], group=self.group[idx])

    def split_rows(self, name: str) -> "Features":
        """The 'train' or 'test' rows."""
        return self.subset(self.split == name)


def _keys(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(N,) |S16 keys and (N,) validity of a fixed_size_binary(16) column."""
    arr = col.combine_chunks()
    keys = np.frombuffer(arr.buffers()[1], dtype="S16", count=len(arr) + arr.offset)[arr.offset:]
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    return keys, valid


def read_run(run_dir: str | Path) -> dict:
    """run.json of a run folder written by ``micro embed``."""
    path = Path(run_dir) / "run.json"
    if not path.exists():
        raise MicroError(f"{run_dir}: not a run folder (no run.json); create it with `micro embed PAIRS --out {run_dir}`")
    return json.loads(path.read_text())


def open_run_store(run: dict) -> EmbeddingStore:
    """The cache store a run was embedded into."""
    cache = Path(run["cache_dir"])
    return EmbeddingStore(cache.parent, run["fingerprint"], run["fingerprint_id"], run["cache_dtype"])


def load_features(run_dir: str | Path, dtype=np.float32) -> Features:
    """Load all features of a run folder as ``dtype`` arrays."""
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    pairs = read_pairs(run_dir / "pairs.parquet")
    keys = pq.read_table(run_dir / "keys.parquet")
    if keys.column("pair_id").to_pylist() != pairs.column("pair_id").to_pylist():
        raise MicroError(f"{run_dir}: keys.parquet and pairs.parquet disagree; rerun micro embed")
    store = open_run_store(run)
    arrays = {}
    for role in ("chosen", "rejected", "prompt", "context"):
        k, valid = _keys(keys.column(role))
        want = k[valid]
        miss = store.missing(want)
        if miss.any():
            raise MicroError(f"{run_dir}: {int(miss.sum())} {role} vectors are missing from the cache {store.dir} "
                             f"(deleted or damaged); rerun `micro embed {run['source_pairs']} --out {run_dir}`")
        if role == "context":
            out = arrays["prompt"].copy()
            if valid.any():
                out[valid] = store.lookup(want, dtype)
            arrays[role], has_ctx = out, valid
        else:
            arrays[role] = store.lookup(want, dtype)
    group = np.array(pairs.column("group").to_pylist(), dtype=object)
    split = np.array(pairs.column("split").to_pylist(), dtype=object)
    return Features(pairs=pairs, has_context=has_ctx, split=split, group=group, run=run, **arrays)
