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

from pipeline.errors import MicroError
from pipeline.recipes.base import Record
from pipeline.schema import RowLog

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv",
           ".tsv": "tsv"}


def file_format(path: Path) -> str:
    """'jsonl' | 'json' | 'parquet' | 'csv' | 'tsv' from the extension (a trailing .gz is allowed)."""
    name = path.name.lower().removesuffix(".gz")
    fmt = FORMATS.get(Path(name).suffix)
    if fmt is None or (fmt == "parquet" and path.name.lower().endswith(".gz")):
        raise MicroError(f"{path}: unsupported file type; expected one of "
                         f"{', '.join(FORMATS)} (text formats may be .gz)")
    return fmt


def stable_name(path: Path) -> str:
    """'parent/name': identifies a file in pair ids independently of the working directory."""
    path = Path(path).resolve()
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


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


def read_records(path: str | Path, log: RowLog) -> Iterator[Record]:
    """Yield the rows of ``path`` as Records; MicroError if it is missing or of an unknown type."""
    path = Path(path)
    if not path.is_file():
        raise MicroError(f"{path}: no such file")
    fmt, name = file_format(path), stable_name(path)
    if fmt == "jsonl":
        return _jsonl(path, log, name)
    if fmt == "json":
        return _json(path, log, name)
    if fmt == "parquet":
        return _parquet(path, log, name)
    return _csv(path, log, name, "," if fmt == "csv" else "\t")


def columns(path: str | Path) -> list[str]:
    """Column names of a file (the keys of its first row), without logging anything."""
    for rec in read_records(path, RowLog()):
        return list(rec.data)
    return []
