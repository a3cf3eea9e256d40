"""Read raw input files (JSONL, JSON, Parquet, CSV/TSV; .gz allowed for text formats) as Records.

Unreadable rows (bad JSON line, non-UTF-8 bytes, a row that is not an object) are skipped through the
RowLog with 'path:line' (JSONL, CSV), 'path:[index]' (JSON list) or 'path:row N' (Parquet).
An unreadable file is a MicroError.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from pathlib import Path
from typing import Any, Iterator

from pipeline.data.recipes.base import Record
from pipeline.data.schema import RowLog
from pipeline.errors import MicroError

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".tsv": "tsv"}


def file_format(path: Path) -> str:
    """'jsonl' | 'json' | 'parquet' | 'csv' | 'tsv' from the extension (a trailing .gz is allowed)."""
    name = path.name.lower().removesuffix(".gz")
    fmt = FORMATS.get(Path(name).suffix)
    if fmt is None or (fmt == "parquet" and path.name.lower().endswith(".gz")):
        raise MicroError(
            f"{path}: unsupported file type; expected one of {', '.join(FORMATS)} (text formats may be .gz)"
        )
    return fmt


def stable_name(path: Path, depth: int = 2) -> str:
    """'parent/name' (the last ``depth`` path parts): identifies a file in pair ids independently of the
    working directory."""
    parts = Path(path).resolve().parts[1:]
    return "/".join(parts[-depth:]) if parts else Path(path).name


def stable_names(paths) -> list[str]:
    """:func:`stable_name` of each input, with more parent folders for distinct inputs whose 'parent/name'
    collide (A/data/train.jsonl and B/data/train.jsonl), so that every distinct file gets distinct pair ids
    (the same file given twice keeps one name: its pairs are duplicates)."""
    resolved = [Path(p).resolve() for p in paths]
    depth = dict.fromkeys(resolved, 2)
    while True:
        names = {r: stable_name(r, d) for r, d in depth.items()}
        taken: dict[str, int] = {}
        for n in names.values():
            taken[n] = taken.get(n, 0) + 1
        clash = [r for r, n in names.items() if taken[n] > 1]
        if not clash:
            return [names[r] for r in resolved]
        for r in clash:
            depth[r] += 1


def has_bad_text(value: Any) -> bool:
    """True if a string anywhere in ``value`` holds undecodable bytes (lone surrogates)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(has_bad_text(k) or has_bad_text(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_bad_text(v) for v in value)
    return False


def _read_bytes(path: Path) -> bytes:
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise MicroError(f"{path}: cannot read file ({exc})") from None


def _jsonl(path: Path, log: RowLog, name: str) -> Iterator[Record]:
    for lineno, raw in enumerate(_read_bytes(path).split(b"\n"), 1):
        if not raw.strip():
            continue
        loc = f"{path}:{lineno}"
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            log.skip(loc, f"non-UTF-8 bytes: byte {exc.start}")
            continue
        except ValueError as exc:
            log.skip(loc, f"unparsable JSON: {exc}")
            continue
        if not isinstance(obj, dict):
            log.skip(loc, f"not a JSON object: got {type(obj).__name__}")
            continue
        yield Record(loc, name, lineno - 1, obj)


def _json_items(path: Path) -> list | None:
    """The list of items of a JSON file (a list, or an object holding exactly one list); None if JSONL."""
    text = _read_bytes(path).decode("utf-8", errors="surrogateescape")
    try:
        obj = json.loads(text)
    except ValueError as exc:
        if "Extra data" in str(exc):
            return None  # JSON Lines in a .json file
        raise MicroError(f"{path}: unparsable JSON ({exc})") from None
    if isinstance(obj, dict):
        lists = [v for v in obj.values() if isinstance(v, list)]
        obj = lists[0] if len(lists) == 1 else obj
    if not isinstance(obj, list):
        raise MicroError(f"{path}: expected a JSON list of rows (or JSON Lines)")
    return obj


def _json(path: Path, log: RowLog, name: str) -> Iterator[Record]:
    items = _json_items(path)
    if items is None:
        yield from _jsonl(path, log, name)
        return
    for i, obj in enumerate(items):
        loc = f"{path}:[{i}]"
        if not isinstance(obj, dict):
            log.skip(loc, f"not a JSON object: got {type(obj).__name__}")
        elif has_bad_text(obj):
            log.skip(loc, "non-UTF-8 bytes")
        else:
            yield Record(loc, name, i, obj)


def _csv(path: Path, log: RowLog, name: str, delimiter: str) -> Iterator[Record]:
    text = _read_bytes(path).decode("utf-8-sig", errors="surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        for i, row in enumerate(reader):
            loc = f"{path}:{reader.line_num}"
            row = {k: (None if v == "" else v) for k, v in row.items() if k is not None}
            if has_bad_text(row):
                log.skip(loc, "non-UTF-8 bytes")
                continue
            yield Record(loc, name, i, row)
    except csv.Error as exc:
        raise MicroError(f"{path}:{reader.line_num}: unparsable CSV ({exc})") from None


def _parquet(path: Path, log: RowLog, name: str) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise MicroError(f"{path}: not a readable Parquet file ({exc})") from None
    i = 0
    for batch in pf.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            yield Record(f"{path}:row {i}", name, i, row)
            i += 1


def read_records(path: str | Path, log: RowLog, name: str | None = None) -> Iterator[Record]:
    """Yield the rows of ``path`` as Records (``name``: the file's name in pair ids, default
    :func:`stable_name`); MicroError if it is missing or of an unknown type."""
    path = Path(path)
    if not path.is_file():
        raise MicroError(f"{path}: no such file")
    fmt, name = file_format(path), name or stable_name(path)
    if fmt == "jsonl":
        return _jsonl(path, log, name)
    if fmt == "json":
        return _json(path, log, name)
    if fmt == "parquet":
        return _parquet(path, log, name)
    return _csv(path, log, name, "," if fmt == "csv" else "\t")


def columns(path: str | Path) -> list[str]:
    """Column names of a file (every key of any row, in order of first appearance), without logging anything."""
    return list(dict.fromkeys(k for rec in read_records(path, RowLog()) for k in rec.data))
