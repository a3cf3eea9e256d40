"""User-facing errors: one line, no traceback (``cli.main`` prints ``error: ...`` and exits with code 2).

Every subclass is a :class:`MicroError`; the subclass says what kind of problem it is, for callers that want to
tell them apart (the CLI treats them all the same way).
"""

from __future__ import annotations

import errno
import os
import re


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


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # every C0/C1 control but tab and newline
_CONTROL_ALL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: object, lines: bool = True) -> str:
    """``str(text)`` with control characters (ESC, BEL, CR, backspace, C1, ...) written as visible escapes
    (``\\x1b``), so that data never drives the terminal; ``lines=False`` escapes tabs and newlines too."""
    return (_CONTROL if lines else _CONTROL_ALL).sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def shown(value: object, style: str = ""):
    """A data-derived string (group, user, file name, pair id, ...) as a rich ``Text`` for tables and
    ``console.print``: printed literally (never parsed as markup), control characters escaped (:func:`printable`,
    one line)."""
    from rich.text import Text

    return Text(printable(value, lines=False), style=style)
