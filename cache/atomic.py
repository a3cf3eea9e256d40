"""Atomic file writes: write to a temp file in the same folder, fsync, then rename.

The file gets the mode an ordinary ``open(path, "w")`` would give it (0666 minus the umask), not the 0600 of a
temp file, so a shared cache or output folder stays readable by the other users (and Ray nodes) it is meant for.
A failure to write (read-only folder, a folder in the way, disk full) is an :class:`OutputError` naming ``path``;
the earlier file at ``path``, if any, is left untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Iterator

from pipeline.errors import OutputError, first_line, no_space

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask (read without changing it where /proc allows; else set and restored under a lock)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of a newly written regular file under the current umask."""
    return 0o666 & ~current_umask()


def _mkdir(folder: Path, target: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{target}: cannot create folder {folder}: a file of that name is in the way") from None
    except OSError as exc:
        raise OutputError(f"{target}: cannot create folder {folder}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def atomic_paths(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """Yield one temp path beside each of ``paths``; on success all are fsynced and only then renamed onto their
    targets (a group of files that belong together, e.g. a bundle's tensors and JSON: a failure while writing
    any of them leaves every target untouched).

    On error the temp files are removed and the targets are left untouched.
    """
    paths = [Path(p) for p in paths]
    temps: list[Path] = []
    try:
        for path in paths:
            if path.is_dir():
                raise OutputError(f"{path}: is a folder, cannot write a file there")
            _mkdir(path.parent, path)
            try:
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            except OSError as exc:
                raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
            os.close(fd)
            temps.append(Path(tmp))
        yield temps
        current = None
        try:
            for current, tmp in zip(paths, temps):
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
                os.chmod(tmp, file_mode())
            for current, tmp in zip(paths, temps):
                os.replace(tmp, current)
        except OSError as exc:
            raise OutputError(f"cannot write {current}: {exc.strerror or first_line(exc)}") from None
    except OSError as exc:  # raised while the caller wrote a temp file (disk full, ...)
        if isinstance(exc, FileNotFoundError) and exc.filename not in (None, *map(str, temps)):
            raise  # a missing *input* while producing the output: not an output problem
        target = next((p for p, t in zip(paths, temps) if str(t) == str(exc.filename)), paths[0])
        raise OutputError(f"cannot write {target}: {exc.strerror or first_line(exc)}") from None
    except Exception as exc:  # a writer library's own error type for a full disk (safetensors, polars)
        if isinstance(exc, OutputError) or not no_space(exc, paths[0].parent):
            raise
        target = paths[0] if len(paths) == 1 else paths[0].parent
        raise OutputError(f"cannot write {target}: No space left on device") from None
    finally:
        for tmp in temps:
            if tmp.exists():
                tmp.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it is fsynced and renamed onto ``path``.

    On error the temp file is removed and ``path`` is left untouched.
    """
    with atomic_paths(path) as (tmp,):
        yield tmp


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as pretty JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
