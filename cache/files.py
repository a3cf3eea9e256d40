"""File-system helpers of the embedding cache: writer locks on shard files, writability probes, manifest check."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
from pathlib import Path
from typing import Iterator

from pipeline.errors import CacheError


@contextlib.contextmanager
def held(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on the file at ``path`` (created if absent) while a shard is being written and
    registered, so that another process's recovery neither deletes its temp file nor adopts it as an orphan."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # removed by a recovery between our open and our lock: take the new file
    try:
        yield
    finally:
        os.close(fd)


def idle(path: Path, remove: bool = False) -> bool:
    """True if no live writer holds ``path`` (see ``held``); with ``remove``, unlink it while checking."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    try:
        if remove:
            path.unlink(missing_ok=True)
    finally:
        os.close(fd)
    return True


_READ_ONLY_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)


def writable_folder(folder: Path, root: Path) -> bool:
    """Create ``folder`` (and parents) and probe it and its parent with a temp file: False where the file system
    refuses (permissions, read-only mount, immutable folder), CacheError when something else is in the way."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for where in (folder.parent, folder):
            fd, probe = tempfile.mkstemp(prefix=".probe-", dir=where)
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        if exc.errno in _READ_ONLY_ERRNOS:
            return False
        raise CacheError(
            f"cannot use {root} as the embedding cache: {exc.strerror or exc}"
            + (" (a file is in the way)" if exc.errno in (errno.EEXIST, errno.ENOTDIR) else "")
        ) from None
    return True


def check_manifest(m) -> None:
    """TypeError/KeyError/ValueError unless ``m`` has the manifest's structure."""
    if not isinstance(m, dict) or not isinstance(m["shards"], list):
        raise TypeError("not a manifest object with a 'shards' list")
    if m["dim"] is not None and (not isinstance(m["dim"], int) or m["dim"] < 1):
        raise ValueError(f"bad 'dim' {m['dim']!r}")
    for s in m["shards"]:
        if not (
            isinstance(s, dict)
            and isinstance(s["file"], str)
            and isinstance(s["rows"], int)
            and isinstance(s["bytes"], int)
        ):
            raise ValueError(f"bad shard entry {s!r}")


def vector_width(f, dtype: str) -> int | str:
    """Vector width of a shard's ``vec`` field (a pyarrow Field) for storage ``dtype`` ('float16' | 'float32'),
    or why it is not a vector of that dtype."""
    import numpy as np
    import pyarrow as pa

    t = f.type
    if pa.types.is_fixed_size_binary(t):  # raw vector bytes per row: no list levels, reads at memcpy speed
        tag = (f.metadata or {}).get(b"dtype")
        item = np.dtype(dtype).itemsize
        if tag != dtype.encode() or t.byte_width % item:
            return f"unexpected vector type {t} (dtype {tag})"
        return t.byte_width // item
    if pa.types.is_fixed_size_list(t) and t.value_type == pa.from_numpy_dtype(np.dtype(dtype)):  # the earlier layout
        return t.list_size
    return f"unexpected vector type {t}"


def check_shard(path: Path, dim: int | None, dtype: str) -> tuple[int, int] | str:
    """(rows, bytes) of a readable shard with the right schema (width ``dim`` when known), or why it is unusable."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(path)
        schema = meta.schema.to_arrow_schema()
    except Exception as exc:  # noqa: BLE001 - any read failure means damaged
        return f"unreadable footer: {exc}"
    if schema.names != ["key", "vec"]:
        return f"unexpected columns {schema.names}"
    width = vector_width(schema.field("vec"), dtype)
    if isinstance(width, str):
        return width
    if dim is not None and width != dim:
        return f"vector width {width} != {dim}"
    return meta.num_rows, path.stat().st_size
