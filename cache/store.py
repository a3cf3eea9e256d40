"""Content-addressed Parquet embedding cache.

Layout, one folder per embedder (fingerprint) and storage dtype::

    ROOT/<fingerprint_id>-<f16|f32>/
        manifest.json         fingerprint, dim, dtype, rows, shards [{file, rows, bytes}]
        shards/part-*.parquet key: fixed_size_binary(16), vec: the raw vector bytes (see cache/shards.py)
        quarantine/           damaged shards moved aside (reported, never read)

Keys are sha256(fingerprint_id + NUL + exact model input)[:16]. Shards are append-only, written atomically (temp
file + rename, page checksums on); the manifest is rewritten atomically under a file lock after each shard, so a
kill loses at most the shard in flight. On open, shards missing from the manifest (a kill between the shard rename
and the manifest write) are verified and adopted, leftover temp files removed, shards whose size or checksums do
not match moved to ``quarantine/`` and reported (their keys count as missing); a damaged manifest is rebuilt.

A cache the process cannot write (permissions, read-only mount) is opened read-only: it serves every read without
a lock or manifest write (damage is reported and ignored in memory, never repaired); storing new vectors in it is a
one-line :class:`CacheError` raised before anything is embedded (``require_writable``). Object stores: objstore.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cache.atomic import atomic_path, write_json_atomic
from cache.files import check_manifest, held, idle, writable_folder
from cache.keys import KEY_BYTES, KeyIndex, key_prefix_u64, text_keys  # noqa: F401 (re-exported)
from cache.shards import check_shard, check_vectors, read_shard, vector_width, write_shard
from pipeline.errors import CacheError

DTYPES = {"float16": (np.float16, pa.float16(), "f16"), "float32": (np.float32, pa.float32(), "f32")}


class CacheDamaged(UserWarning):
    """A shard failed verification and was moved to quarantine (or a damaged manifest was rebuilt)."""


class EmbeddingStore:
    """The cache of one embedder (fingerprint) in one storage dtype.

    ``lookup(keys)`` returns vectors, ``missing(keys)`` says which keys still need embedding,
    ``append(keys, vectors)`` stores a new shard atomically, ``compact()`` merges shards.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        fingerprint: dict,
        fingerprint_id: str,
        dtype: str = "float32",
        read_only: bool = False,
    ):
        if dtype not in DTYPES:
            raise CacheError(f"cache dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.fingerprint = fingerprint
        self.fingerprint_id = fingerprint_id
        self.dtype = dtype
        self.np_dtype, self.pa_dtype, tag = DTYPES[dtype]
        self.root = Path(root).expanduser().resolve()
        self.dir = self.root / f"{fingerprint_id}-{tag}"
        self.shard_dir = self.dir / "shards"
        self.damaged: list[tuple[str, str]] = []  # (file, reason) found on open
        # read_only: opened for reading alone (scoring): no folder made, no probe, nothing on disk touched
        self.read_only = read_only or not writable_folder(self.shard_dir, Path(root).expanduser())
        self._index: KeyIndex | None = None
        self._added: list[tuple[np.ndarray, np.ndarray]] = []  # appended since the index was built: merged on use
        self._lock_depth = 0
        with self._lock():
            self.manifest = self._recover()

    def require_writable(self, n: int) -> None:
        """CacheError (one line, before any text is embedded) if ``n`` > 0 new vectors cannot be stored here."""
        if n and self.read_only:
            raise CacheError(
                f"the embedding cache {self.dir} is read-only: {n} texts are not cached yet and cannot "
                "be stored; pass --cache-dir with a writable folder (or embed them where the cache "
                "is writable)"
            )

    # --- manifest and recovery ------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Exclusive inter-process lock on the manifest (re-entrant); read-only: shared, on an existing lock file."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        try:
            fd = os.open(self.dir / ".lock", os.O_RDONLY if self.read_only else os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:
            fd = None  # read-only cache without a lock file: nobody can be writing it
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_SH if self.read_only else fcntl.LOCK_EX)
            self._lock_depth = 1
            yield
        finally:
            self._lock_depth = 0
            if fd is not None:
                os.close(fd)  # closing releases the lock

    def _empty_manifest(self) -> dict:
        return {
            "version": 1,
            "fingerprint": self.fingerprint,
            "fingerprint_id": self.fingerprint_id,
            "dtype": self.dtype,
            "dim": None,
            "rows": 0,
            "shards": [],
        }

    def _load_manifest(self) -> tuple[dict, str | None]:
        """(manifest, None), or (an empty manifest, what is wrong) when manifest.json is damaged; absent: empty."""
        path = self.dir / "manifest.json"
        try:
            text = path.read_text()
        except FileNotFoundError:
            return self._empty_manifest(), None
        except (OSError, UnicodeDecodeError) as exc:
            return self._empty_manifest(), f"unreadable ({exc})"
        try:
            manifest = json.loads(text)
            check_manifest(manifest)
        except (ValueError, TypeError, KeyError) as exc:
            return self._empty_manifest(), f"invalid ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        return manifest, None

    def _read_manifest(self) -> dict:
        """The current manifest (call under the lock); a damaged one is rebuilt from the shards on disk."""
        manifest, problem = self._load_manifest()
        return self._recover() if problem else manifest

    def _write_manifest(self, manifest: dict) -> None:
        manifest["rows"] = int(sum(s["rows"] for s in manifest["shards"]))
        self.manifest = manifest
        if not self.read_only:
            write_json_atomic(self.dir / "manifest.json", manifest)

    def _quarantine(self, name: str, reason: str) -> None:
        qdir = self.dir / "quarantine"
        if self.read_only:  # left in place, never read
            self.damaged.append((name, f"{reason}; ignored (read-only cache: not moved)"))
            warnings.warn(
                f"cache shard {self.shard_dir / name} is damaged ({reason}); ignored (the cache is read-only)",
                CacheDamaged,
                stacklevel=3,
            )
            return
        qdir.mkdir(exist_ok=True)
        src = self.shard_dir / name
        if src.exists():
            os.replace(src, qdir / name)
        self.damaged.append((name, f"{reason}; moved to quarantine/"))
        warnings.warn(
            f"cache shard {self.shard_dir / name} is damaged ({reason}); moved to {qdir}, "
            "its vectors will be embedded again",
            CacheDamaged,
            stacklevel=3,
        )

    def _recover(self) -> dict:
        manifest, problem = self._load_manifest()
        if not self.read_only:
            for tmp in self.dir.rglob(".*.tmp"):
                idle(tmp, remove=True)  # leftovers of dead writers; a live writer's temp file is locked
        on_disk = {p.name for p in self.shard_dir.glob("part-*.parquet")}
        kept = []
        for s in manifest["shards"]:
            if s["file"] not in on_disk:
                self.damaged.append((s["file"], "listed in manifest but missing"))
                warnings.warn(
                    f"cache shard {s['file']} listed in {self.dir}/manifest.json is missing; "
                    "its vectors will be embedded again",
                    CacheDamaged,
                    stacklevel=2,
                )
                continue
            size = (self.shard_dir / s["file"]).stat().st_size
            if size != s["bytes"]:
                self._quarantine(s["file"], f"size {size} != {s['bytes']} bytes in manifest")
                continue
            kept.append(s)
        listed = {s["file"] for s in kept}
        for name in sorted(on_disk - listed - {d[0] for d in self.damaged}):
            if not idle(self.shard_dir / name) and not self.read_only:
                continue  # renamed by a live writer that is about to list it in the manifest
            got = check_shard(self.shard_dir / name, manifest["dim"], self.dtype)
            if isinstance(got, str):
                self._quarantine(name, got)
                continue
            rows, nbytes = got
            kept.append({"file": name, "rows": rows, "bytes": nbytes})
            if manifest["dim"] is None:
                field = pq.read_metadata(self.shard_dir / name).schema.to_arrow_schema().field("vec")
                manifest["dim"] = vector_width(field, self.dtype)
        if problem:
            how = "left as is: read-only cache" if self.read_only else "rewritten"
            self.damaged.append(("manifest.json", f"{problem}; rebuilt from the {len(kept)} shard(s) on disk ({how})"))
            warnings.warn(
                f"{self.dir / 'manifest.json'} is {problem}; rebuilt from the {len(kept)} shard(s) on disk",
                CacheDamaged,
                stacklevel=2,
            )
        if problem or kept != manifest["shards"] or not (self.dir / "manifest.json").exists():
            manifest["shards"] = kept
            self._write_manifest(manifest)
        return manifest

    # --- reading --------------------------------------------------------------------------------
    @property
    def dim(self) -> int | None:
        return self.manifest["dim"]

    @property
    def rows(self) -> int:
        return int(self.manifest["rows"])

    def _read_shard(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            return read_shard(self.shard_dir / name, self.dtype)
        except Exception as exc:  # noqa: BLE001 - checksum or decode failure means damaged
            with self._lock():
                self._quarantine(name, f"unreadable data: {exc}")
                manifest = self._read_manifest()
                manifest["shards"] = [s for s in manifest["shards"] if s["file"] != name]
                self._write_manifest(manifest)
            return None

    def stored_rows(self) -> int | None:
        """Rows in manifest.json now (other processes' shards included; no lock), None if it is damaged."""
        manifest, problem = self._load_manifest()
        return None if problem else int(manifest.get("rows", 0))

    def refresh(self) -> None:
        """Re-read the manifest (e.g. after other processes stored shards) and drop the in-memory key index."""
        with self._lock():
            self.manifest = self._read_manifest()
            self._index, self._added = None, []

    def index(self) -> KeyIndex:
        """The in-memory index of every stored key and vector (built on first use: reads and verifies the shards)."""
        if self._index is None:
            with self._lock():  # the current shard list (another process may have compacted since we opened)
                self.manifest = self._read_manifest()
                if self.read_only:  # damage found on open stays listed on disk: never read it
                    bad = {name for name, _ in self.damaged}
                    self.manifest["shards"] = [s for s in self.manifest["shards"] if s["file"] not in bad]
                parts = [p for p in (self._read_shard(s["file"]) for s in list(self.manifest["shards"])) if p]
            self._index, self._added = KeyIndex.concat(parts, self.dim or 0, self.np_dtype), []
        elif self._added:  # one merge for every shard appended since (not one copy of the whole cache per shard)
            added, self._added = self._added, []
            self._index = self._index.extended(added)
        return self._index

    def missing(self, keys: np.ndarray) -> np.ndarray:
        """(n,) bool: which keys are not in the cache."""
        return self.index().find(keys) < 0

    def lookup(self, keys: np.ndarray, dtype=None) -> np.ndarray:
        """(n, dim) vectors for ``keys`` (all must be present), as ``dtype`` (default: stored dtype)."""
        idx = self.index()
        rows = idx.find(keys)
        if (rows < 0).any():
            raise KeyError(f"{int((rows < 0).sum())} of {len(keys)} keys are not in the cache {self.dir}")
        out = idx.vecs[rows]
        return out if dtype is None or out.dtype == dtype else out.astype(dtype)

    def take(self, keys: np.ndarray, dtype=None) -> tuple[np.ndarray, np.ndarray]:
        """((n, dim) vectors as ``dtype``, rows of absent keys unspecified; (n,) bool found) for ``keys``."""
        idx, rows = self.index(), self.index().find(keys)
        out = idx.vecs[np.maximum(rows, 0)] if len(idx.keys) else np.zeros((len(keys), self.dim or 0), self.np_dtype)
        return (out if dtype is None or out.dtype == dtype else out.astype(dtype)), rows >= 0

    # --- writing --------------------------------------------------------------------------------
    def _write_shard(self, keys: np.ndarray, vectors: np.ndarray, hold: contextlib.ExitStack | None = None) -> dict:
        name = f"part-{uuid.uuid4().hex}.parquet"
        with atomic_path(self.shard_dir / name) as tmp:
            if hold is not None:
                hold.enter_context(held(tmp))  # kept (on the renamed file) until ``hold`` closes
            write_shard(tmp, keys, vectors, self.dtype)
        return {"file": name, "rows": len(keys), "bytes": (self.shard_dir / name).stat().st_size}

    def append(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Store one new shard (atomic) and record it in the manifest."""
        vectors = check_vectors(keys, vectors, self.dim, self.dir)
        if len(keys) == 0:
            return
        self.require_writable(len(keys))
        with contextlib.ExitStack() as hold:
            entry = self._write_shard(keys, vectors, hold)
            with self._lock():
                manifest = self._read_manifest()
                manifest["dim"] = int(vectors.shape[1])
                if entry["file"] not in {s["file"] for s in manifest["shards"]}:
                    manifest["shards"].append(entry)
                self._write_manifest(manifest)
        if self._index is not None:
            self._added.append((np.asarray(keys), np.asarray(vectors, dtype=self.np_dtype)))

    def compact(self, min_shards: int = 2, only: Sequence[str] | None = None) -> int:
        """Merge shards into one (deduplicated): all of them, or just the files named in ``only`` (e.g. the
        shards of one run, so that a run does not rewrite a large cache); returns the number of shards merged."""
        if self.read_only:
            return 0
        with self._lock():
            manifest = self._read_manifest()
            old = [s["file"] for s in manifest["shards"] if only is None or s["file"] in set(only)]
            if len(old) < min_shards:
                return 0
            self._index, self._added = None, []
            self.manifest = manifest
            parts = [p for p in (self._read_shard(name) for name in old) if p]  # damaged ones: quarantined
            if not parts:
                return 0
            keys = np.concatenate([k for k, _ in parts])
            vecs = np.concatenate([v for _, v in parts])
            _, first = np.unique(keys, return_index=True)
            first.sort()
            entry = self._write_shard(keys[first], vecs[first])
            manifest = self._read_manifest()
            manifest["shards"] = [s for s in manifest["shards"] if s["file"] not in old] + [entry]
            self._write_manifest(manifest)
            for name in old:
                (self.shard_dir / name).unlink(missing_ok=True)
            self._index, self._added = None, []
        return len(old)
