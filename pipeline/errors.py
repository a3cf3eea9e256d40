"""User-facing errors: one line, no traceback (``cli.main`` prints ``error: ...`` and exits with code 2).

Every subclass is a :class:`MicroError`; the subclass says what kind of problem it is, for callers that want to
tell them apart (the CLI treats them all the same way).
"""

from __future__ import annotations

import errno
import os


class MicroError(Exception):
    """A problem with the user's input or environment, reported as one clear line."""


class OptionError(MicroError):
    """A command-line option (or estimator parameter) value that cannot work: checked before any work starts."""


class InputError(MicroError):
    """An input file that cannot be used: missing, unreadable, damaged, or with a bad row/field."""


class OutputError(MicroError):
    """An output path that cannot be written: read-only, a folder where a file is expected, disk full, ..."""


class CacheError(MicroError):
    """The embedding cache cannot be used for what was asked (e.g. writing into a read-only cache)."""


class ModelLoadError(MicroError):
    """A model folder that cannot be loaded (missing files, garbage or truncated weights)."""


class Interrupted(Exception):
    """Ctrl-C, with what was saved (the CLI prints the message and exits with code 130)."""


def no_space(exc: BaseException, folder: str | os.PathLike | None = None) -> bool:
    """True for a full disk, also where a library reports it as its own error type (safetensors, polars: some
    polars errors do not say why, so a write error with under 1 MiB left on ``folder``'s disk counts too)."""
    if isinstance(exc, OSError):
        return exc.errno == errno.ENOSPC
    text = str(exc)
    if "No space left on device" in text or "os error 28" in text or "StorageFull" in text:
        return True
    try:
        st = os.statvfs(folder) if folder is not None else None
    except OSError:
        return False
    return st is not None and st.f_bavail * st.f_frsize < 1 << 20


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of ``str(exc)`` (shortened), or the exception's type name when it has no message."""
    text = str(exc).strip().splitlines()
    line = text[0].strip() if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


def os_error_line(exc: OSError, what: str | os.PathLike | None = None) -> str:
    """'PATH: reason' for an OSError (PermissionError, IsADirectoryError, ENOSPC, ...)."""
    path = exc.filename if exc.filename is not None else what
    reason = exc.strerror or first_line(exc)
    return f"{path}: {reason}" if path is not None else reason
