"""The canonical pair table: one row per preference pair, stored as Parquet.

Columns (see README "Pair table"):
    pair_id  str, unique
    prompt   list<struct<role: str, content: str>>  the conversation before the final assistant turn
    chosen   str  the preferred final assistant turn
    rejected str  the other final assistant turn
    group    str | null  evaluation subpopulation (attribute / objective / user / domain)
    context  str | null  user-stated criterion the router may read
    split    str  "train" or "test"
    source   str  where the pair came from (recipe and file)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cache.atomic import atomic_path
from pipeline.errors import MicroError

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
PAIR_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("prompt", pa.list_(MESSAGE)),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("group", pa.string()),
        ("context", pa.string()),
        ("split", pa.string()),
        ("source", pa.string()),
    ]
)
REQUIRED = ("pair_id", "prompt", "chosen", "rejected", "split", "source")
SPLITS = ("train", "test")


def pairs_to_table(rows: Iterable[dict]) -> pa.Table:
    """Build a pair table from dicts with the schema's keys (missing nullable keys become null)."""
    rows = list(rows)
    cols = {name: [r.get(name) for r in rows] for name in PAIR_SCHEMA.names}
    return pa.table(cols, schema=PAIR_SCHEMA)


def validate_pairs(table: pa.Table, where: str = "pair table") -> pa.Table:
    """Check columns, types, nulls, unique ids and split values; return the table cast to PAIR_SCHEMA."""
    missing = [n for n in PAIR_SCHEMA.names if n not in table.column_names]
    if missing:
        raise MicroError(f"{where}: missing column(s) {', '.join(missing)}; expected {', '.join(PAIR_SCHEMA.names)}")
    table = table.select(PAIR_SCHEMA.names)
    try:
        table = table.cast(PAIR_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise MicroError(f"{where}: columns do not match the pair schema: {exc}") from None
    for name in REQUIRED:
        nulls = table.column(name).null_count
        if nulls:
            row = pc.index(pc.is_null(table.column(name)), True).as_py()
            raise MicroError(f"{where}: row {row}: field '{name}' is null ({nulls} null rows)")
    ids = table.column("pair_id")
    if pc.count_distinct(ids).as_py() != len(ids):
        raise MicroError(f"{where}: field 'pair_id' is not unique")
    bad = pc.invert(pc.is_in(table.column("split"), pa.array(SPLITS)))
    if pc.any(bad).as_py():
        row = pc.index(bad, True).as_py()
        raise MicroError(
            f"{where}: row {row}: field 'split' must be 'train' or 'test', got {table.column('split')[row]}"
        )
    _check_texts(table, where)
    return table


def _first(mask, where: str, message: str) -> None:
    """MicroError naming the first row where ``mask`` (a boolean array, nulls = False) holds."""
    mask = pc.fill_null(mask, False)
    if pc.any(mask).as_py():
        raise MicroError(f"{where}: row {pc.index(mask, True).as_py()}: {message} ({pc.sum(mask).as_py()} rows)")


def _check_texts(table: pa.Table, where: str) -> None:
    """The checks ``data prepare`` applies to each pair, for hand-made tables: non-empty responses that differ,
    a non-empty prompt of messages with a role and text."""
    for name in ("chosen", "rejected"):
        _first(pc.equal(pc.utf8_trim_whitespace(table.column(name)), ""), where, f"field '{name}' is empty")
    _first(pc.equal(table.column("chosen"), table.column("rejected")), where, "chosen == rejected")
    prompt = table.column("prompt")
    _first(pc.equal(pc.list_value_length(prompt), 0), where, "field 'prompt' has no messages")
    lengths = pc.fill_null(pc.list_value_length(prompt), 0).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(prompt)
    if len(flat) == 0:
        return
    import numpy as np

    owner = np.repeat(np.arange(len(lengths)), lengths)
    for field_name in ("role", "content"):
        values = pc.struct_field(flat, field_name) if flat.null_count == 0 else None
        bad = pc.is_null(flat) if values is None else pc.is_null(values)
        if field_name == "role" and values is not None:
            bad = pc.or_(bad, pc.equal(pc.utf8_trim_whitespace(values), ""))
        bad = pc.fill_null(bad, True).to_numpy(zero_copy_only=False)
        if bad.any():
            row = int(owner[np.flatnonzero(bad)[0]])
            what = "a message without a role" if field_name == "role" else "a message without text"
            raise MicroError(f"{where}: row {row}: field 'prompt' has {what}")


def write_pairs(table: pa.Table, path: str | Path) -> Path:
    """Validate and write the pair table atomically; returns the path."""
    table = validate_pairs(table, str(path))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def read_pairs(path: str | Path) -> pa.Table:
    """Read and validate a pair table written by ``micro data prepare``."""
    path = Path(path)
    if not path.exists():
        raise MicroError(f"{path}: no such file")
    if path.is_dir():
        raise MicroError(f"{path}: is a folder, expected a pair table (.parquet from `micro data prepare`)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        hint = "" if path.suffix == ".parquet" else "; turn raw data into one with `micro data prepare`"
        raise MicroError(f"{path}: not a readable Parquet pair table ({str(exc).splitlines()[0]}){hint}") from None
    return validate_pairs(table, str(path))


def is_pair_table(path: str | Path) -> bool:
    """True if ``path`` is a Parquet file with the pair table's columns."""
    path = Path(path)
    if path.suffix != ".parquet" or not path.exists():
        return False
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowInvalid, OSError):
        return False
    return all(n in names for n in PAIR_SCHEMA.names)


@dataclass
class RowLog:
    """Collects skipped rows with file:line and reason; ``strict`` raises on the first one."""

    strict: bool = False
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (location, reason)
    dropped: dict[str, int] = field(default_factory=dict)  # expected drops, e.g. "tie"

    def skip(self, location: str, reason: str) -> None:
        """Record a bad row at ``location`` (e.g. 'file.jsonl:12')."""
        if self.strict:
            raise MicroError(f"{location}: {reason}")
        self.skipped.append((location, reason))

    def drop(self, reason: str, n: int = 1) -> None:
        """Count rows dropped by design (ties, equal ratings): not errors, but always reported."""
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def reasons(self) -> dict[str, int]:
        """Skipped-row counts by reason."""
        out: dict[str, int] = {}
        for _, reason in self.skipped:
            key = reason.split(":")[0]
            out[key] = out.get(key, 0) + 1
        return out

    def report(self, stream=sys.stderr, show: int = 10) -> None:
        """Print the first ``show`` skipped rows and the counts."""
        for loc, reason in self.skipped[:show]:
            print(f"skipped {loc}: {reason}", file=stream)
        if len(self.skipped) > show:
            print(f"... and {len(self.skipped) - show} more skipped rows", file=stream)


#: the group name of pairs without a group (another name when the data has a real group of this name)
UNGROUPED = "all"


def group_labels(values) -> np.ndarray:
    """(N,) str group names of ``values`` (None: no group): pairs without a group are 'all', or, when a real
    group is named 'all' too, the first free name 'all (ungrouped)', 'all (ungrouped 2)', ... with a warning:
    never merged silently with a real group."""
    import warnings

    values = list(values)
    real = {str(v) for v in values if v is not None}
    name, i = UNGROUPED, 1
    if None in values and UNGROUPED in real:
        while name in real or name == UNGROUPED:
            i, name = i + 1, f"{UNGROUPED} (ungrouped{'' if i == 1 else f' {i}'})"
        warnings.warn(f"pairs without a group are named '{name}' (the data has a real group named 'all')")
    return np.array([name if v is None else str(v) for v in values], dtype=object).astype(str)
