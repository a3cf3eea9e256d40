"""The embedding cache on an object store (S3, GCS, any fsspec filesystem): no lock, no rename, no temp file.

Layout under ``URL/<fingerprint_id>-<f16|f32>/``::

    shards/part-<uuid>.parquet   the same shard files as the local cache, each written once: built in memory and
                                 stored with one create-only PUT (S3 ``If-None-Match: *``)
    manifests/<uuid>.json        append-only, create-only fragments; one names one shard (file, rows, bytes, sha256,
                                 dim, dtype) and what it supersedes (a compaction), or only supersedes (a quarantine)
    quarantine/                  damaged shards moved aside (copy + delete), never read

Readers take the union of the fragments minus what any fragment supersedes. A shard becomes visible only when its
fragment is written (after the shard PUT), so a kill loses at most the shard in flight (an orphan shard without a
fragment is never read). Two writers never overwrite each other: a lost create-only race on a shard name gets a new
name, two shards holding the same key are both valid (lookups serve one). Shards are checked against their
fragment's size and sha256 and their Parquet page checksums; a damaged one is moved to ``quarantine/`` and its keys
count as missing (embedded again). A store the credentials cannot write serves reads (``read_only``).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
import warnings
from typing import Iterator, Sequence

import numpy as np

from cache.keys import KeyIndex, key_prefix_u64
from cache.remote import filesystem, join, move, put_create
from cache.shards import check_vectors, read_shard, shard_bytes
from cache.store import DTYPES, CacheDamaged
from pipeline.errors import CacheError

BATCH = 8  # shards fetched concurrently per request batch while streaming
MINE_BYTES = 1 << 28  # vectors of the shards appended by this object kept in memory for compact() (no re-download)


def _name(path: str) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


class ObjectStore:
    """The cache of one embedder (fingerprint) in one storage dtype on an object store; the interface of
    :class:`cache.store.EmbeddingStore` (``missing``, ``lookup``, ``take``, ``append``, ``compact``, ``refresh``)."""

    def __init__(
        self, root: str, fingerprint: dict, fingerprint_id: str, dtype: str = "float32", fs=None, read_only=False
    ):
        if dtype not in DTYPES:
            raise CacheError(f"cache dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.fingerprint, self.fingerprint_id, self.dtype = fingerprint, fingerprint_id, dtype
        self.np_dtype, self.pa_dtype, tag = DTYPES[dtype]
        self.root = root.rstrip("/")
        self.dir = join(self.root, f"{fingerprint_id}-{tag}")
        if fs is None:
            fs, base = filesystem(self.root)
        else:
            base = self.root.split("://", 1)[-1]
        self.fs, self.base = fs, join(base, f"{fingerprint_id}-{tag}")
        self.damaged: list[tuple[str, str]] = []
        self._read_only: bool | None = True if read_only else None  # None: probed when first needed
        self._index: KeyIndex | None = None
        self._added: list[tuple[np.ndarray, np.ndarray]] = []
        self._mine: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # appended here (up to MINE_BYTES)
        self.manifest = self._recover()

    # --- the object store ---------------------------------------------------------------------------------------
    def _path(self, *parts: str) -> str:
        return join(self.base, *parts)

    def _ls(self, folder: str, detail: bool = False):
        try:
            return self.fs.ls(self._path(folder), detail=detail, refresh=True)
        except FileNotFoundError:
            return []
        except PermissionError as exc:
            raise CacheError(f"{self.dir}: cannot list {folder}/ ({exc}); check the credentials") from None

    @property
    def read_only(self) -> bool:
        """True when the credentials cannot write here (probed once, with a create-only PUT and a delete)."""
        if self._read_only is None:
            probe = self._path(f".probe-{uuid.uuid4().hex}")
            try:
                self.fs.pipe_file(probe, b"", mode="create")
                self.fs.rm_file(probe)
                self._read_only = False
            except PermissionError:
                self._read_only = True
            except FileNotFoundError:
                raise CacheError(f"{self.dir}: no such bucket (create it first)") from None
            except OSError as exc:
                raise CacheError(f"{self.dir}: cannot write the cache ({str(exc).splitlines()[0]})") from None
        return self._read_only

    def require_writable(self, n: int) -> None:
        """CacheError (one line, before any text is embedded) if ``n`` > 0 new vectors cannot be stored here."""
        if n and self.read_only:
            raise CacheError(
                f"the embedding cache {self.dir} is read-only (the credentials cannot write it): {n} texts are not "
                "cached yet and cannot be stored; pass --cache-dir with a writable bucket or prefix"
            )

    def _put_fragment(self, doc: dict) -> None:
        doc = {"version": 1, "fingerprint_id": self.fingerprint_id, "dtype": self.dtype, "created": time.time(), **doc}
        while not put_create(self.fs, self._path("manifests", f"{uuid.uuid4().hex}.json"), json.dumps(doc).encode()):
            pass  # a uuid taken already: another name

    def _put_shard(self, data: bytes) -> str:
        """Store ``data`` as a new shard (create-only); returns its file name."""
        digest = hashlib.sha256(data).hexdigest()
        for _ in range(8):
            name = f"part-{uuid.uuid4().hex}.parquet"
            if put_create(self.fs, self._path("shards", name), data):
                return name
            if hashlib.sha256(self.fs.cat_file(self._path("shards", name))).hexdigest() == digest:
                return name  # the same bytes are there already (a retried PUT)
        raise CacheError(f"{self.dir}: could not find a free shard name")  # pragma: no cover

    # --- manifest fragments -------------------------------------------------------------------------------------
    def _fragments(self) -> list[dict]:
        paths = sorted(p for p in self._ls("manifests") if str(p).endswith(".json"))
        if not paths:
            return []
        blobs = self.fs.cat(paths, on_error="return")
        out = []
        for p in paths:
            blob = blobs.get(p)
            try:
                doc = json.loads(blob)
                if not isinstance(doc, dict) or not isinstance(doc.get("supersedes", []), list):
                    raise ValueError("not a fragment object")
            except (TypeError, ValueError) as exc:
                self.damaged.append((f"manifests/{_name(p)}", f"unreadable fragment ({exc}); ignored"))
                continue
            out.append(doc)
        out.sort(key=lambda d: (d.get("created", 0), d.get("file") or ""))
        return out

    def _recover(self, retry: bool = True) -> dict:
        frags = self._fragments()
        gone = {name for f in frags for name in f.get("supersedes", [])}
        on_store = {_name(e["name"]): int(e.get("size") or 0) for e in self._ls("shards", detail=True)}
        shards, dim, seen = [], None, set()
        for f in frags:
            name = f.get("file")
            if not name or name in gone or name in seen:
                continue
            if name not in on_store:
                if retry:  # a compaction may have replaced it between our two listings: look again once
                    return self._recover(retry=False)
                self.damaged.append((name, "named by a manifest fragment but missing"))
                continue
            if on_store[name] != f["bytes"]:
                self._quarantine(name, f"size {on_store[name]} != {f['bytes']} bytes in its fragment")
                continue
            seen.add(name)
            dim = dim or f.get("dim")
            shards.append({"file": name, "rows": int(f["rows"]), "bytes": int(f["bytes"]), "sha256": f["sha256"]})
        return {"dim": dim, "rows": sum(s["rows"] for s in shards), "shards": shards}

    def _quarantine(self, name: str, reason: str) -> None:
        """Move a damaged shard under quarantine/ and write a fragment superseding it (read-only: left, ignored)."""
        if self.read_only:
            self.damaged.append((name, f"{reason}; ignored (read-only cache: not moved)"))
        else:
            src = self._path("shards", name)
            if self.fs.exists(src):
                move(self.fs, src, self._path("quarantine", name))
            self._put_fragment({"file": None, "supersedes": [name], "reason": reason})
            self.damaged.append((name, f"{reason}; moved to quarantine/"))
        warnings.warn(
            f"cache shard {self.dir}/shards/{name} is damaged ({reason}); its vectors will be embedded again",
            CacheDamaged,
            stacklevel=3,
        )
        self.manifest = getattr(self, "manifest", None) or {"dim": None, "rows": 0, "shards": []}
        self.manifest["shards"] = [s for s in self.manifest["shards"] if s["file"] != name]
        self.manifest["rows"] = sum(s["rows"] for s in self.manifest["shards"])

    # --- reading ------------------------------------------------------------------------------------------------
    @property
    def dim(self) -> int | None:
        return self.manifest["dim"]

    @property
    def rows(self) -> int:
        return int(self.manifest["rows"])

    def _stream(self, entries: Sequence[dict]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(keys, vectors) of each shard of ``entries``, fetched ``BATCH`` at a time, verified (size, sha256, page
        checksums); damaged shards are quarantined and skipped, missing ones reported and skipped."""
        entries = list(entries)
        for start in range(0, len(entries), BATCH):
            batch = entries[start : start + BATCH]
            blobs = self.fs.cat([self._path("shards", s["file"]) for s in batch], on_error="return")
            for s in batch:
                blob = blobs.get(self._path("shards", s["file"]))
                if isinstance(blob, FileNotFoundError) or blob is None:
                    self.damaged.append((s["file"], "missing when read"))
                    continue
                if isinstance(blob, Exception):
                    raise CacheError(f"{self.dir}: cannot read shard {s['file']} ({blob})")
                if len(blob) != s["bytes"] or hashlib.sha256(blob).hexdigest() != s["sha256"]:
                    self._quarantine(s["file"], "size or sha256 differs from its fragment")
                    continue
                try:
                    yield read_shard(blob, self.dtype)
                except Exception as exc:  # noqa: BLE001 - checksum or decode failure means damaged
                    self._quarantine(s["file"], f"unreadable data: {exc}")

    def stored_rows(self) -> int | None:
        """Rows named by the fragments now (other writers' shards included), None if they cannot be listed."""
        try:
            frags = self._fragments()
        except (OSError, CacheError):
            return None
        gone = {name for f in frags for name in f.get("supersedes", [])}
        files = {f["file"]: int(f.get("rows", 0)) for f in frags if f.get("file") and f["file"] not in gone}
        return sum(files.values())

    def refresh(self) -> None:
        """Re-read the fragments (e.g. after other writers stored shards) and drop the in-memory key index."""
        self.manifest = self._recover()
        self._index, self._added = None, []

    def index(self) -> KeyIndex:
        """The in-memory index of every stored key and vector (built on first use from every shard)."""
        if self._index is None:
            parts = list(self._stream(self.manifest["shards"]))
            self._index, self._added = KeyIndex.concat(parts, self.dim or 0, self.np_dtype), []
        elif self._added:
            added, self._added = self._added, []
            self._index = self._index.extended(added)
        return self._index

    def missing(self, keys: np.ndarray) -> np.ndarray:
        """(n,) bool: which keys are not in the cache."""
        return self.index().find(keys) < 0

    def lookup(self, keys: np.ndarray, dtype=None) -> np.ndarray:
        """(n, dim) vectors for ``keys`` (all must be present), as ``dtype`` (default: stored dtype)."""
        out, found = self.take(keys, dtype)
        if not found.all():
            raise KeyError(f"{int((~found).sum())} of {len(keys)} keys are not in the cache {self.dir}")
        return out

    def take(self, keys: np.ndarray, dtype=None) -> tuple[np.ndarray, np.ndarray]:
        """((n, dim) vectors as ``dtype`` (absent: unspecified); (n,) bool found) for ``keys``, streamed shard by
        shard (at most ``BATCH`` shards in memory; stops once every key is found): no copy of the whole cache."""
        dtype = np.dtype(dtype or self.np_dtype)
        if self._index is not None and len(self.index().keys):  # built already (e.g. by missing()): use it
            idx = self.index()
            rows = idx.find(keys)
            return idx.vecs[np.maximum(rows, 0)].astype(dtype, copy=False), rows >= 0
        keys = np.asarray(keys)
        _, first, inv = np.unique(key_prefix_u64(keys), return_index=True, return_inverse=True)  # int sort: fast
        uniq = keys[first]
        want = KeyIndex(uniq, np.empty((len(uniq), 0)))
        out = np.zeros((len(uniq), self.dim or 0), dtype)
        got = np.zeros(len(uniq), bool)
        for attempt in range(2):
            for k, v in self._stream(self.manifest["shards"]):
                rows = want.find(k)
                hit = rows >= 0
                if hit.all():  # no copy of the mask: the usual case (a run's shard holds only wanted keys)
                    out[rows], got[rows] = v, True
                else:
                    out[rows[hit]], got[rows[hit]] = v[hit], True
                if got.all():
                    break
            if got.all() or attempt or not self.damaged:
                break
            self.refresh()  # a shard vanished (a concurrent compaction): read the new fragments once more
        return out[inv.ravel()], got[inv.ravel()]

    # --- writing ------------------------------------------------------------------------------------------------
    def append(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Store one new shard (one create-only PUT) and then its manifest fragment."""
        vectors = check_vectors(keys, vectors, self.dim, self.dir)
        if len(keys) == 0:
            return
        self.require_writable(len(keys))
        entry = self._store(np.asarray(keys), vectors, supersedes=[])
        self.manifest["dim"] = int(vectors.shape[1])
        self.manifest["shards"].append(entry)
        self.manifest["rows"] += entry["rows"]
        if sum(v.nbytes for _, v in self._mine.values()) + vectors.nbytes <= MINE_BYTES:
            self._mine[entry["file"]] = (np.asarray(keys), np.asarray(vectors, dtype=self.np_dtype))
        if self._index is not None:
            self._added.append((np.asarray(keys), np.asarray(vectors, dtype=self.np_dtype)))

    def _store(self, keys: np.ndarray, vectors: np.ndarray, supersedes: list[str]) -> dict:
        data = shard_bytes(keys, vectors, self.dtype)
        try:
            name = self._put_shard(data)
            entry = {"file": name, "rows": len(keys), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            self._put_fragment({**entry, "dim": int(vectors.shape[1]), "supersedes": supersedes})
        except FileNotFoundError:
            raise CacheError(f"{self.dir}: no such bucket (create it first)") from None
        except OSError as exc:  # network, permissions revoked mid-run, ...: what was stored before stays valid
            raise CacheError(
                f"{self.dir}: cannot store a shard ({str(exc).splitlines()[0] if str(exc) else exc!r})"
            ) from None
        return entry

    def compact(self, min_shards: int = 2, only: Sequence[str] | None = None) -> int:
        """Merge shards (all, or the files in ``only``) into one deduplicated shard plus a fragment superseding
        them; the old shards are deleted afterwards. Returns the number of shards merged."""
        if self.read_only:
            return 0
        old = [s for s in self.manifest["shards"] if only is None or s["file"] in set(only)]
        if len(old) < min_shards:
            return 0
        kept = [s for s in old if s["file"] in self._mine]  # vectors still in memory: not downloaded again
        parts = [self._mine.pop(s["file"]) for s in kept] + list(self._stream([s for s in old if s not in kept]))
        if not parts:
            return 0
        keys = np.concatenate([k for k, _ in parts])
        vecs = np.concatenate([v for _, v in parts])
        _, first = np.unique(keys, return_index=True)
        first.sort()
        names = [s["file"] for s in old]
        entry = self._store(keys[first], vecs[first], supersedes=names)
        self.fs.rm([self._path("shards", n) for n in names])
        self.manifest["shards"] = [s for s in self.manifest["shards"] if s["file"] not in set(names)] + [entry]
        self.manifest["rows"] = sum(s["rows"] for s in self.manifest["shards"])
        self._index, self._added = None, []
        return len(names)
