"""Checks of option values and output paths, run by the CLI before any model is loaded or text embedded.

Each check returns the (normalised) value or raises :class:`OptionError` / :class:`OutputError` naming the option.
"""

from __future__ import annotations

import math
import os
import tempfile
from numbers import Integral
from pathlib import Path
from typing import Iterable

from pipeline.errors import OptionError, OutputError


def integer(value, option: str, minimum: int = 1, maximum: int | None = None, optional: bool = False):
    """``value`` as an int in [minimum, maximum] (None allowed when ``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise OptionError(f"{option} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise OptionError(f"{option} must be {bound}, got {value}")
    return int(value)


def number(
    value,
    option: str,
    *,
    low: float | None = None,
    low_open: bool = False,
    high: float | None = None,
    high_open: bool = False,
    optional: bool = False,
):
    """``value`` as a finite float within the bounds (open bounds exclude the end)."""
    if value is None and optional:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise OptionError(f"{option} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise OptionError(f"{option} must be a finite number, got {value!r}")
    bad_low = low is not None and (v <= low if low_open else v < low)
    bad_high = high is not None and (v >= high if high_open else v > high)
    if bad_low or bad_high:
        parts = []
        if low is not None:
            parts.append(f"{'>' if low_open else '>='} {low:g}")
        if high is not None:
            parts.append(f"{'<' if high_open else '<='} {high:g}")
        raise OptionError(f"{option} must be {' and '.join(parts)}, got {value!r}")
    return v


def auto_number(value, option: str, cast=float, none: bool = False):
    """'auto', a finite number >= 0 (``cast=int``: an integer >= 1), or with ``none`` also 'none' / 'full' (None)."""
    t = str(value).strip().lower()
    if t == "auto":
        return "auto"
    if none and t in ("none", "full"):
        return None
    try:
        v = cast(t)
    except ValueError:
        v = None
    if v is None or not math.isfinite(v) or v < (1 if cast is int else 0):
        kind = "an integer >= 1" if cast is int else "a finite number >= 0"
        raise OptionError(f"{option} must be auto{', none' if none else ''} or {kind}, got {value!r}")
    return v


def choice(value, option: str, choices: Iterable[str], optional: bool = False):
    """``value`` if it is one of ``choices``."""
    choices = tuple(choices)
    if value is None and optional:
        return None
    if value not in choices:
        raise OptionError(f"{option} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _existing_ancestor(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe_writable(folder: Path, option: str, target: Path) -> None:
    """Create and remove a temp file in ``folder``: the one test that also holds for root and read-only mounts."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".micro-probe-", dir=folder)
    except OSError as exc:
        raise OutputError(f"{option} {target}: cannot write in {folder} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(tmp)


def out_dir(path, option: str = "--out") -> Path:
    """An output folder: absent (its nearest existing parent must be a writable folder) or a writable folder."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path}: is a file, not a folder")
    anc = _existing_ancestor(path)
    if not anc.is_dir():
        raise OutputError(f"{option} {path}: {anc} is a file, not a folder")
    _probe_writable(anc, option, path)
    return path


def out_file(path, option: str = "--out", suffixes: Iterable[str] | None = None) -> Path:
    """An output file: not a folder, in a writable folder (created if absent), with one of ``suffixes``."""
    path = Path(path).expanduser()
    if suffixes is not None:
        suffixes = tuple(suffixes)
        if path.suffix.lower() not in suffixes:
            raise OutputError(
                f"{option} {path}: the output is written as {'/'.join(s.lstrip('.') for s in suffixes)}"
                f"; give a file name ending in {' or '.join(suffixes)}"
            )
    if path.is_dir():
        raise OutputError(f"{option} {path}: is a folder, not a file")
    anc = _existing_ancestor(path.parent)
    if not anc.is_dir():
        raise OutputError(f"{option} {path}: {anc} is a file, not a folder")
    _probe_writable(anc, option, path)
    return path


def cache_dir(path, option: str = "--cache-dir"):
    """A cache root: a folder or absent (read-only is fine: a read-only cache serves reads)."""
    if path is None:
        return None
    from cache.remote import filesystem, is_remote, local_path

    if is_remote(path):
        filesystem(str(path))  # its driver is installed and credentials exist (the bucket is checked when opened)
        return str(path)
    path = local_path(path)
    anc = _existing_ancestor(path)
    if not anc.is_dir():
        raise OptionError(f"{option} {path}: {anc} is a file, not a folder")
    return path


def existing_file(path, option: str):
    """An input file that exists (and is not a folder)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise OptionError(f"{option} {path}: is a folder, expected a file")
    if not path.is_file():
        raise OptionError(f"{option} {path}: no such file")
    return path
