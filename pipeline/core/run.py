"""A run: the cached features of one run folder as numpy arrays, row-aligned with its pair table.

:class:`Run` is the one representation every stage uses (fit, route, eval, sweep, leave-group-out, profiles):
the response difference Δ = φ(x, a_w) − φ(x, a_l), the gate's two possible inputs (prompt, context+prompt), the
split, the groups, the prompt ids, gate-input resolution and per-group scoring. :meth:`Run.load` reads a run folder
written by ``micro embed`` (no model, no per-row Python work); :meth:`Run.from_arrays` wraps arrays (synthetic data,
benchmarks); :meth:`Run.shared` / :meth:`Run.from_shared` carry a run to worker processes without copies.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cache.store import DTYPES, EmbeddingStore
from cache.stores import open_store, parent
from pipeline.data.schema import group_labels, read_pairs
from pipeline.errors import InputError, MicroError, first_line

#: the cache-key columns of keys.parquet, one per model input of a pair
ROLES = ("chosen", "rejected", "prompt", "context")
RUN_FIELDS = {"fingerprint": dict, "fingerprint_id": str, "cache_dir": str, "cache_dtype": str}
#: split codes of :attr:`Run.split` (-1: any other split name)
SPLITS = {"train": 0, "test": 1}
ARRAYS = ("delta", "prompt", "context", "has_context", "split", "group", "prompt_id")


def per_group_accuracy(values: np.ndarray, groups: np.ndarray, names, threshold: float = 0.5) -> np.ndarray:
    """Accuracy (value > ``threshold``) per group: (G,) for (N,) probabilities, (K, G) for (N, K) columns (head
    logits with ``threshold=0``); NaN for a group without rows. ``groups`` (N,) holds entries of ``names``."""
    right = np.asarray(values) > threshold
    out = np.full(right.shape[1:] + (len(names),), np.nan)
    for j, g in enumerate(names):
        m = groups == g
        if m.any():
            out[..., j] = right[m].mean(axis=0)
    return out


@dataclass(eq=False)
class Run:
    """Features of one run, row-aligned with ``pairs`` (N pairs).

    delta (N, d) chosen − rejected; prompt (N, p) the gate's prompt input; context (N, p) context+prompt, the
    prompt row where a pair has no context (``has_context`` False); split (N,) int8 codes (:data:`SPLITS`, -1
    other); group (N,) int32 codes into ``group_names`` (sorted; a pair without a group is in 'all'); prompt_id
    (N,) int64, pairs of one prompt share an id; ``info`` the run.json of a run folder; ``chosen`` / ``rejected``
    (N, d) the response features themselves (a run folder's; None for runs made of arrays or shared with workers).
    """

    delta: np.ndarray
    prompt: np.ndarray
    context: np.ndarray
    has_context: np.ndarray
    split: np.ndarray
    group: np.ndarray
    prompt_id: np.ndarray
    group_names: list
    pairs: pa.Table | None = None
    info: dict = field(default_factory=dict)
    chosen: np.ndarray | None = None
    rejected: np.ndarray | None = None
    keys_digest: str = ""  # hash of a run folder's cache keys (the texts' identity); "" for runs of arrays

    @property
    def n(self) -> int:
        return len(self.split)

    @property
    def fingerprint_id(self) -> str:
        return self.info.get("fingerprint_id", "")

    @property
    def groups(self) -> np.ndarray:
        """(N,) object array of each pair's group name."""
        return np.array(self.group_names, dtype=object)[self.group] if self.n else np.empty(0, dtype=object)

    def mask(self, split: str) -> np.ndarray:
        """(N,) bool: the pairs of split ``split`` ('train' or 'test')."""
        return self.split == SPLITS[split]

    def take(self, rows: np.ndarray) -> "Run":
        """The rows ``rows`` (bool (N,) mask or int indices) as a Run with the same group names."""
        idx = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows)
        arrays = {a: getattr(self, a)[idx] for a in ARRAYS}
        arrays.update({a: getattr(self, a)[idx] for a in ("chosen", "rejected") if getattr(self, a) is not None})
        pairs = None if self.pairs is None else self.pairs.take(pa.array(idx, type=pa.int64()))
        return Run(**arrays, group_names=self.group_names, pairs=pairs, info=self.info)

    def part(self, split: str) -> "Run":
        """The 'train' or 'test' pairs."""
        return self.take(self.mask(split))

    def present_groups(self) -> list:
        """The names of the groups that have pairs here (sorted)."""
        return [self.group_names[j] for j in np.unique(self.group)]

    def group_accuracy(self, p: np.ndarray) -> np.ndarray:
        """(G,) accuracy (p > 0.5) of (N,) probabilities per group of ``group_names``, NaN where a group is absent."""
        return per_group_accuracy(p, self.group, range(len(self.group_names)))

    # --- what the gate reads ------------------------------------------------------------------------------------
    def resolve_gate_input(self, value: str | None, option: str = "--gate-input") -> tuple[str, str | None]:
        """(choice, note): 'auto' (or None) → 'context' when every train pair has a context, else 'prompt'."""
        if value not in (None, "auto"):
            if value not in ("prompt", "context"):
                raise MicroError(f"{option} must be 'prompt', 'context' or 'auto', got {value!r}")
            if value == "context" and not self.has_context.any():
                raise MicroError(f"{option} context: this run has no contexts (the pair table's 'context' is empty)")
            return value, None
        if self.has_context.any() and self.has_context[self.mask("train")].all():
            return "context", (
                "gate reads context+prompt (every train pair has a context; --gate-input prompt to change)"
            )
        return "prompt", "gate reads the prompt alone (not every pair has a context)"

    def gate_features(self, kind: str) -> np.ndarray | None:
        """(N, p) what a gate reading ``kind`` sees: 'prompt', 'context' (context+prompt) or 'none' (None)."""
        if kind == "none":
            return None
        if kind not in ("prompt", "context"):
            raise MicroError(f"--gate-input must be 'prompt' or 'context', got {kind!r}")
        return self.context if kind == "context" else self.prompt

    # --- identity and transport ---------------------------------------------------------------------------------
    @property
    def data_id(self) -> str:
        """Hash of everything a trial reads: the embedder, the features (a run folder's cache keys, else the
        arrays themselves), the split, groups, prompt ids and contexts: sweep trials on other data never count
        as done (texts or labels changed under the same pair ids included)."""
        fid = self.fingerprint_id or "arrays"
        h = hashlib.sha256(f"{fid}|{self.delta.shape}|{self.prompt.shape}|{self.group_names}".encode())
        for a in (self.split, self.group, self.prompt_id, self.has_context):
            h.update(np.ascontiguousarray(a).tobytes())
        if self.keys_digest:
            h.update(self.keys_digest.encode())
        else:
            for a in (self.delta, self.prompt, self.context):
                h.update(np.ascontiguousarray(a).tobytes())
        return f"{fid}:{h.hexdigest()[:12]}"

    def shared(self) -> tuple[dict, dict]:
        """(arrays, meta) for :mod:`pipeline.core.parallel` (arrays memory-mapped or put in Ray's store once)."""
        return (
            {a: getattr(self, a) for a in ARRAYS},
            {"group_names": list(self.group_names), "info": {"fingerprint_id": self.fingerprint_id}},
        )

    @classmethod
    def from_shared(cls, arrays: dict, meta: dict) -> "Run":
        return cls(**{a: arrays[a] for a in ARRAYS}, group_names=meta["group_names"], info=meta["info"])

    @classmethod
    def from_arrays(
        cls,
        delta,
        prompt,
        split,
        group=None,
        context=None,
        prompt_id=None,
        fingerprint_id: str = "arrays",
        unique_texts: int | None = None,
    ) -> "Run":
        """A run from arrays: ``split`` 'train'/'test' names or codes, ``group`` labels (None: one group 'all'),
        ``context`` (None: the prompt), ``prompt_id`` labels (None: every pair its own prompt)."""
        n = len(delta)
        split = np.asarray(split)
        codes = (
            np.where(split == "train", 0, np.where(split == "test", 1, -1)) if split.dtype.kind in "OUS" else split
        ).astype(np.int8)
        labels = group_labels(group if group is not None else [None] * n)
        names, gcodes = np.unique(labels, return_inverse=True)
        pid = np.arange(n) if prompt_id is None else np.unique(np.asarray(prompt_id), return_inverse=True)[1]
        delta, prompt = np.ascontiguousarray(delta), np.ascontiguousarray(prompt)
        return cls(
            delta=delta,
            prompt=prompt,
            context=prompt if context is None else np.ascontiguousarray(context),
            has_context=np.full(n, context is not None),
            split=codes,
            group=gcodes.astype(np.int32),
            prompt_id=pid.astype(np.int64),
            group_names=[str(x) for x in names],
            info={"fingerprint_id": fingerprint_id, "summary": {"unique_texts": unique_texts}},
        )

    @classmethod
    def load(cls, run_dir: str | Path, dtype=np.float32) -> "Run":
        """All features of a run folder as ``dtype`` arrays (None: the cache's dtype, e.g. float16)."""
        return load_run(run_dir, dtype)


# --- the run folder -------------------------------------------------------------------------------------------------
def _rerun(run_dir) -> str:
    return f"rerun `micro embed PAIRS --out {run_dir}` to rebuild it"


def read_folder_json(folder: str | Path, name: str, *, is_file: str, missing: str, repair: str, hint: str = "") -> dict:
    """The JSON object ``folder/name`` (run.json, model.json); one-line errors: ``folder`` is a file (``is_file``),
    the file is absent (``missing``, MicroError), unreadable (``repair`` appended) or not an object (``hint``)."""
    folder = Path(folder)
    path = folder / name
    if folder.is_file():
        raise InputError(f"{folder}: is a file, {is_file}")
    if not path.exists():
        raise MicroError(f"{folder}: {missing}")
    try:
        doc = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: damaged {name} ({first_line(exc)}); {repair}") from None
    if not isinstance(doc, dict):
        raise InputError(f"{path}: damaged {name} (not a JSON object)" + (f"; {hint}" if hint else ""))
    return doc


def check_fields(doc: dict, fields: dict, path: Path, hint: str = "") -> None:
    """InputError naming the first of ``fields`` ({name: type}) that ``doc`` lacks or has with another type."""
    for key, kind in fields.items():
        if not isinstance(doc.get(key), kind):
            what = "missing" if key not in doc else f"not a {kind.__name__}"
            raise InputError(f"{path}: field '{key}' is {what}" + (f"; {hint}" if hint else ""))


def read_run(run_dir: str | Path) -> dict:
    """run.json of a run folder written by ``micro embed``; InputError naming the file if it is damaged."""
    path = Path(run_dir) / "run.json"
    run = read_folder_json(
        run_dir,
        "run.json",
        is_file="not a run folder (create one with `micro embed PAIRS --out DIR`)",
        missing=f"not a run folder (no run.json); create it with `micro embed PAIRS --out {run_dir}`",
        repair=_rerun(run_dir),
        hint=_rerun(run_dir),
    )
    check_fields(run, RUN_FIELDS, path, _rerun(run_dir))
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
            raise InputError(
                f"{path}: column '{col}' is {keys.schema.field(col).type}, expected 16-byte keys; {_rerun(run_dir)}"
            )
    return keys


def key_column(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(N,) |S16 keys and (N,) validity of a fixed_size_binary(16) column."""
    arr = col.combine_chunks()
    keys = np.frombuffer(arr.buffers()[1], dtype="S16", count=len(arr) + arr.offset)[arr.offset :]
    return keys, arr.is_valid().to_numpy(zero_copy_only=False)


def open_run_store(run: dict) -> EmbeddingStore:
    """The cache store a run was embedded into."""
    return open_store(parent(run["cache_dir"]), run["fingerprint"], run["fingerprint_id"], run["cache_dtype"])


def load_run(run_dir: str | Path, dtype=np.float32) -> Run:
    """:meth:`Run.load`: Δ is computed in float32 row chunks and kept as ``dtype``."""
    run_dir = Path(run_dir)
    info = read_run(run_dir)
    pairs = read_pairs(run_dir / "pairs.parquet")
    keys = read_keys(run_dir)
    if keys.column("pair_id").to_pylist() != pairs.column("pair_id").to_pylist():
        raise InputError(f"{run_dir}: keys.parquet and pairs.parquet disagree (different pair ids); {_rerun(run_dir)}")
    store = open_run_store(info)
    cols = {role: key_column(keys.column(role)) for role in ROLES}
    digest = hashlib.sha256()  # the texts' identity (a sweep trial's identity covers the features it reads)
    for role in ROLES:
        k, valid = cols[role]
        digest.update(np.ascontiguousarray(k[valid]).tobytes() + valid.tobytes())
        if role != "context" and not valid.all():
            raise InputError(f"{run_dir}/keys.parquet: column '{role}' has null keys; {_rerun(run_dir)}")
    wanted = [cols[r][0][cols[r][1]] for r in ROLES]
    # one pass over the cache for every role (an object store streams its shards once)
    vecs, found = store.take(np.concatenate(wanted), dtype)
    arrays, has_ctx, start = {}, None, 0
    for role, want in zip(ROLES, wanted):
        got, ok = vecs[start : start + len(want)], found[start : start + len(want)]
        start += len(want)
        if not ok.all():
            raise MicroError(
                f"{run_dir}: {int((~ok).sum())} {role} vectors are missing from the cache {store.dir} "
                f"(deleted or damaged); rerun `micro embed {info.get('source_pairs', 'PAIRS')} "
                f"--out {run_dir}`"
            )
        if role == "context":
            has_ctx = cols[role][1]
            if has_ctx.any():
                arrays[role] = arrays["prompt"].copy()
                arrays[role][has_ctx] = got
            else:
                arrays[role] = arrays["prompt"]
        else:
            arrays[role] = got
    chosen, rejected = arrays.pop("chosen"), arrays.pop("rejected")
    delta = np.empty_like(chosen)
    step = max(1, (1 << 24) // max(1, chosen.shape[1]))
    for s in range(0, len(delta), step):
        delta[s : s + step] = chosen[s : s + step].astype(np.float32) - rejected[s : s + step].astype(np.float32)
    names, gcodes = np.unique(group_labels(pairs.column("group").to_pylist()), return_inverse=True)
    split = np.array(pairs.column("split").to_pylist(), dtype=object)
    codes = np.where(split == "train", 0, np.where(split == "test", 1, -1)).astype(np.int8)
    pid = np.unique(key_column(keys.column("prompt"))[0], return_inverse=True)[1]
    return Run(
        delta=delta,
        prompt=arrays["prompt"],
        context=arrays["context"],
        has_context=has_ctx,
        split=codes,
        group=gcodes.astype(np.int32).ravel(),
        prompt_id=pid.astype(np.int64).ravel(),
        group_names=[str(x) for x in names],
        pairs=pairs,
        info=info,
        chosen=chosen,
        rejected=rejected,
        keys_digest=digest.hexdigest(),
    )
