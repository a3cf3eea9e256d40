"""``micro data prepare``: run a recipe over input files, check and split the pairs, write the pair table.

    table, log = prepare("dsp", ["domain_specific_preference.test.json"], "pairs.parquet")

Every bad row is skipped through a RowLog with its location and reason (``strict=True`` raises on the
first one); expected drops (ties, equal ratings) are counted; a summary goes to stderr.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa

from pipeline.data.recipes import RECIPES
from pipeline.data.recipes.base import Record
from pipeline.data.recipes.readers import columns, has_bad_text, read_records, stable_names
from pipeline.data.schema import RowLog, is_pair_table, pairs_to_table, read_pairs, validate_pairs, write_pairs
from pipeline.data.split import assign_split
from pipeline.errors import MicroError, OutputError

USER_COLUMNS = {  # load_user_pairs: option -> column names tried, in order (case-insensitive)
    "prompt_col": ("prompt", "instruction", "query", "question", "input"),
    "chosen_col": ("chosen", "preferred", "response_chosen"),
    "rejected_col": ("rejected", "dispreferred", "response_rejected"),
    "context_col": ("context", "criterion", "criteria", "user_context", "persona", "profile"),
    "group_col": ("group", "user", "user_id", "annotator", "domain", "attribute", "objective"),
    "split_col": ("split",),
}


def get_recipe(name: str, options: dict):
    """The recipe function; MicroError for an unknown recipe or an option it does not take."""
    fn = RECIPES.get(name)
    if fn is None:
        raise MicroError(f"unknown recipe '{name}'; choose one of: {', '.join(RECIPES)}")
    params = inspect.signature(fn).parameters
    allowed = sorted(k for k, p in params.items() if p.kind == p.KEYWORD_ONLY)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise MicroError(
            f"recipe '{name}' does not take option(s) {', '.join(unknown)}; it takes: {', '.join(allowed) or 'none'}"
        )
    return fn


def check_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Input paths, each an existing file; MicroError otherwise."""
    paths = [Path(p) for p in inputs]
    if not paths:
        raise MicroError("no input files given")
    for p in paths:
        if not p.is_file():
            raise MicroError(f"{p}: no such file" + (" (it is a folder)" if p.is_dir() else ""))
    return paths


def pair_id(recipe: str, key: tuple) -> str:
    """Deterministic id from the recipe and (file, row index, group, ...): stable across reruns."""
    digest = hashlib.sha1("\x1f".join(map(str, key)).encode("utf-8", errors="surrogatepass")).hexdigest()
    return f"{recipe}:{digest[:12]}"


def _with_note(reason: str, note: str | None) -> str:
    return f"{reason} ({note})" if note else reason


def pair_problem(p: dict) -> str | None:
    """Why a pair cannot be kept (the skip reason), or None if it is fine."""
    if not p["prompt"]:
        return "missing field: 'prompt'"
    if has_bad_text([p["prompt"], p["chosen"], p["rejected"], p["context"], p["group"]]):
        return "non-UTF-8 bytes"
    for name in ("chosen", "rejected"):
        if not p[name].strip():
            return _with_note(f"empty response: field '{name}'", p["note"])
    if p["chosen"] == p["rejected"]:
        return f"chosen == rejected: {p['note'] or 'identical texts'}"
    return None


class _Counted:
    """Iterate records while counting them."""

    def __init__(self, records: Iterator[Record]):
        self.records, self.n = records, 0

    def __iter__(self) -> Iterator[Record]:
        for rec in self.records:
            self.n += 1
            yield rec


def collect_pairs(recipe: str, inputs: Iterable[str | Path], log: RowLog, **options) -> tuple[list[dict], int]:
    """Run the recipe over every input; return (checked pair rows without split, rows read)."""
    options = {k: v for k, v in options.items() if v is not None}
    fn = get_recipe(recipe, options)
    rows, seen, n_read = [], set(), 0
    paths = check_inputs(inputs)
    for path, name in zip(paths, stable_names(paths)):
        records = _Counted(read_records(path, log, name))
        for p in fn(records, log, **options):
            problem = pair_problem(p)
            pid = pair_id(recipe, p["key"])
            if problem is None and pid in seen:
                problem = "duplicate pair: same file, row and group as an earlier pair"
            if problem is not None:
                log.skip(p["loc"], problem)
                continue
            seen.add(pid)
            rows.append(
                {
                    "pair_id": pid,
                    "prompt": p["prompt"],
                    "chosen": p["chosen"],
                    "rejected": p["rejected"],
                    "group": p["group"],
                    "context": p["context"],
                    "split": p["split"],
                    "source": f"{recipe}:{p['key'][0]}",
                    "train_drop": p["train_drop"],
                }
            )
        n_read += records.n
    return rows, n_read


def split_pairs(rows: list[dict], log: RowLog, test_size: float, seed: int) -> list[dict]:
    """Fill missing splits by prompt hash; drop train pairs flagged ``train_drop`` (counted)."""
    if not 0.0 <= test_size <= 1.0:
        raise MicroError(f"--test-size must be between 0 and 1, got {test_size}")
    out = []
    for row in rows:
        row = dict(row)
        if row["split"] is None:
            row["split"] = assign_split(row["prompt"], test_size, seed)
        reason = row.pop("train_drop")
        if reason and row["split"] == "train":
            log.drop(f"{reason} (train)")
            continue
        out.append(row)
    return out


def build_pairs(
    recipe: str, inputs: Iterable[str | Path], *, test_size: float = 0.2, seed: int = 0, strict: bool = False, **options
) -> tuple[pa.Table, RowLog, int]:
    """(pair table, log, rows read) without writing anything."""
    log = RowLog(strict=strict)
    rows, n_read = collect_pairs(recipe, inputs, log, **options)
    rows = split_pairs(rows, log, test_size, seed)
    if not rows:
        log.report()
        raise MicroError(
            f"{recipe}: no pairs produced from {n_read} rows read "
            f"({len(log.skipped)} skipped, {sum(log.dropped.values())} dropped)"
        )
    return pairs_to_table(rows), log, n_read


def _counts(items: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(items.items(), key=lambda kv: (-kv[1], kv[0])))


def summarize(table: pa.Table, log: RowLog, rows_read: int, out: str | Path | None = None) -> str:
    """A human-readable summary: rows read, pairs written, skipped/dropped by reason, per group and split."""
    groups = table.column("group").to_pylist()
    splits = table.column("split").to_pylist()
    per = Counter(zip(groups, splits, strict=True))
    skipped, dropped = log.reasons(), log.dropped
    lines = [
        f"rows read: {rows_read:,}",
        f"pairs written: {table.num_rows:,}" + (f" -> {out}" if out else ""),
        f"skipped: {sum(skipped.values()):,}" + (f" ({_counts(skipped)})" if skipped else ""),
        f"dropped: {sum(dropped.values()):,}" + (f" ({_counts(dropped)})" if dropped else ""),
        f"split: train {splits.count('train'):,}, test {splits.count('test'):,}",
        f"{'group':<24}{'train':>9}{'test':>9}{'total':>9}",
    ]
    for g in sorted(set(groups), key=lambda x: (x is None, x or "")):
        tr, te = per[(g, "train")], per[(g, "test")]
        lines.append(f"{(g if g is not None else '(none)'):<24}{tr:>9,}{te:>9,}{tr + te:>9,}")
    return "\n".join(lines)


def prepare(
    recipe: str,
    inputs: list[str | Path],
    out: str | Path,
    *,
    test_size: float = 0.2,
    seed: int = 0,
    strict: bool = False,
    verbose: bool = True,
    **recipe_options,
) -> tuple[pa.Table, RowLog]:
    """Build the pair table with ``recipe`` from ``inputs``, write it to ``out``; return (table, log)."""
    if Path(out).suffix.lower() != ".parquet":
        raise OutputError(f"--out {out}: the pair table is written as Parquet; give a file name ending in .parquet")
    table, log, n_read = build_pairs(recipe, inputs, test_size=test_size, seed=seed, strict=strict, **recipe_options)
    write_pairs(table, out)
    if verbose:
        log.report()
        print(summarize(table, log, n_read, out), file=sys.stderr)
    return table, log


def detect_columns(path: str | Path, given: dict) -> dict:
    """Column options for a raw user file: explicit ones kept, the rest guessed from column names."""
    if any(given.get(k) for k in ("a_col", "b_col", "label_col")):
        return given
    lower = {c.lower(): c for c in columns(path)}
    opts = dict(given)
    for opt, names in USER_COLUMNS.items():
        if opts.get(opt) is None:
            found = next((lower[n] for n in names if n in lower), None)
            if found is not None:
                opts[opt] = found
    return opts


def load_user_pairs(
    path: str | Path, *, test_size: float = 0.0, seed: int = 0, strict: bool = False, **opts
) -> pa.Table:
    """A pair table from a prepared Parquet pair table or any raw file ``generic`` reads.

    Raw files get their prompt / chosen / rejected / context / group columns detected by name (or
    mapped with the ``generic`` options); all pairs are 'train' unless ``test_size`` > 0 or the file has
    a split column.  Skipped rows are reported on stderr.
    """
    if is_pair_table(path):
        return read_pairs(path)
    if not Path(path).is_file():
        raise MicroError(f"{path}: no such file")
    if Path(path).stat().st_size == 0:
        raise MicroError(f"{path}: the user data file is empty")
    options = detect_columns(path, {k: v for k, v in opts.items() if v is not None})
    table, log, _ = build_pairs("generic", [path], test_size=test_size, seed=seed, strict=strict, **options)
    if log.skipped:
        log.report()
        print(f"{path}: {table.num_rows:,} pairs loaded, {len(log.skipped):,} rows skipped", file=sys.stderr)
    return validate_pairs(table, str(path))


def parse_option(text: str) -> tuple[str, object]:
    """'KEY=VALUE' (``--opt``) -> (key, bool | int | float | str)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise MicroError(f"--opt expects KEY=VALUE, got {text!r}")
    low = raw.strip().lower()
    if low in ("true", "false"):
        return key.strip().replace("-", "_"), low == "true"
    for cast in (int, float):
        try:
            return key.strip().replace("-", "_"), cast(raw)
        except ValueError:
            pass
    return key.strip().replace("-", "_"), raw


def prepare_command(
    recipe: str,
    inputs: list[Path],
    out: Path,
    *,
    test_size: float,
    seed: int,
    strict: bool,
    opt: list[str],
    **columns: str | None,
) -> None:
    """``micro data prepare``: the options checked (``columns``: the generic recipe's column options, None where
    not given; ``opt``: KEY=VALUE recipe options), then :func:`prepare`."""
    from pipeline import checks as C

    C.number(test_size, "--test-size", low=0, high=1)
    C.integer(seed, "--seed", minimum=0)
    C.out_file(out, "--out", suffixes=(".parquet",))
    options = {k: v for k, v in columns.items() if v is not None}
    options.update(parse_option(o) for o in opt)
    get_recipe(recipe, options)
    check_inputs(inputs)
    prepare(recipe, inputs, out, test_size=test_size, seed=seed, strict=strict, **options)
