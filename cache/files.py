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
