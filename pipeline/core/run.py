"""Load a run's cached features as numpy arrays (no model, no per-row Python work)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cache.store import DTYPES, EmbeddingStore
from pipeline.errors import InputError, MicroError, first_line
from pipeline.data.schema import read_pairs

ROLES = ("chosen", "rejected", "prompt", "context")
RUN_FIELDS = {"fingerprint": dict, "fingerprint_id": str, "cache_dir": str, "cache_dtype": str}


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

    @cached_property
    def delta(self) -> np.ndarray:
        """(N, d) chosen − rejected, computed once in float32 row chunks and kept in the features' dtype."""
        out = np.empty_like(self.chosen)
        step = max(1, (1 << 24) // max(1, self.chosen.shape[1]))
        for s in range(0, self.n, step):
            out[s:s + step] = (self.chosen[s:s + step].astype(np.float32)
                               - self.rejected[s:s + step].astype(np.float32))
        return out

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


def _rerun(run_dir) -> str:
    return f"rerun `micro embed PAIRS --out {run_dir}` to rebuild it"


def read_run(run_dir: str | Path) -> dict:
    """run.json of a run folder written by ``micro embed``; InputError naming the file if it is damaged."""
    path = Path(run_dir) / "run.json"
    if Path(run_dir).is_file():
        raise InputError(f"{run_dir}: is a file, not a run folder (create one with `micro embed PAIRS --out DIR`)")
    if not path.exists():
        raise MicroError(f"{run_dir}: not a run folder (no run.json); create it with `micro embed PAIRS --out {run_dir}`")
    try:
        run = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: damaged run.json ({first_line(exc)}); {_rerun(run_dir)}") from None
    if not isinstance(run, dict):
        raise InputError(f"{path}: damaged run.json (not a JSON object); {_rerun(run_dir)}")
    for key, kind in RUN_FIELDS.items():
        if not isinstance(run.get(key), kind):
            what = "missing" if key not in run else f"not a {kind.__name__}"
            raise InputError(f"{path}: field '{key}' is {what}; {_rerun(run_dir)}")
    if run["cache_dtype"] not in DTYPES:
        raise InputError(f"{path}: field 'cache_dtype' is {run['cache_dtype']!r}, expected one of {', '.join(DTYPES)}")
    return run


def read_keys(run_dir: str | Path) -> pa.Table:
    """keys.parquet of a run folder: pair_id + a 16-byte key column per role; InputError if damaged."""
    path = Path(run_dir) / "keys.parquet"
    if not path.is_file():
        raise InputError(f"{path}: missing; {_rerun(run_dir)}")
    try:
        keys = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({first_line(exc)}); {_rerun(run_dir)}") from None
    for col in ("pair_id", *ROLES):
        if col not in keys.column_names:
            raise InputError(f"{path}: column '{col}' is missing; {_rerun(run_dir)}")
        if col != "pair_id" and keys.schema.field(col).type != pa.binary(16):
            raise InputError(f"{path}: column '{col}' is {keys.schema.field(col).type}, expected 16-byte keys; "
                             f"{_rerun(run_dir)}")
    return keys


def open_run_store(run: dict) -> EmbeddingStore:
    """The cache store a run was embedded into."""
    cache = Path(run["cache_dir"])
    return EmbeddingStore(cache.parent, run["fingerprint"], run["fingerprint_id"], run["cache_dtype"])


def load_features(run_dir: str | Path, dtype=np.float32) -> Features:
    """Load all features of a run folder as ``dtype`` arrays (None: the cache's dtype, e.g. float16)."""
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    pairs = read_pairs(run_dir / "pairs.parquet")
    keys = read_keys(run_dir)
    if keys.column("pair_id").to_pylist() != pairs.column("pair_id").to_pylist():
        raise InputError(f"{run_dir}: keys.parquet and pairs.parquet disagree (different pair ids); {_rerun(run_dir)}")
    store = open_run_store(run)
    arrays = {}
    for role in ROLES:
        k, valid = _keys(keys.column(role))
        if role != "context" and not valid.all():
            raise InputError(f"{run_dir}/keys.parquet: column '{role}' has null keys; {_rerun(run_dir)}")
        want = k[valid]
        miss = store.missing(want)
        if miss.any():
            raise MicroError(f"{run_dir}: {int(miss.sum())} {role} vectors are missing from the cache {store.dir} "
                             f"(deleted or damaged); rerun `micro embed {run.get('source_pairs', 'PAIRS')} --out {run_dir}`")
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
