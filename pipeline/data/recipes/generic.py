"""The ``generic`` recipe: any JSONL / JSON / Parquet / CSV file of preference pairs, with column mapping.

Shapes (per row):
  * {prompt, chosen, rejected}: each a string or a message list; chosen/rejected may be full transcripts,
    in which case their final assistant turn is taken;
  * {chosen, rejected} full transcripts (HH 'Human:/Assistant:' strings or message lists) without a
    prompt: the shared turns become the prompt, the final assistant turns the responses;
  * two responses + label (--a-col, --b-col, --label-col): label == label_a -> a preferred,
    label_b -> b preferred, label_tie -> dropped and counted as 'tie'.
Columns named 'group', 'context' and 'split' are used when present unless mapped explicitly. The columns of a
file are the union over all its rows (a first row without 'group' does not drop the groups of the others); a row
missing a required field is skipped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

from pipeline.data.recipes.base import BadRow, Record, make_pair, need
from pipeline.data.recipes.messages import resolve
from pipeline.data.schema import RowLog
from pipeline.data.split import normalize_split
from pipeline.errors import MicroError, OptionError


@dataclass(frozen=True)
class Mapping:
    """Which input column feeds which pair field (None: not used)."""

    prompt: str | None = "prompt"
    chosen: str | None = "chosen"
    rejected: str | None = "rejected"
    group: str | None = None
    context: str | None = None
    split: str | None = None
    a: str | None = None
    b: str | None = None
    label: str | None = None
    label_a: str = "a"
    label_b: str = "b"
    label_tie: str = "tie"

    @property
    def two_responses(self) -> bool:
        return self.label is not None


def label_text(value) -> str:
    """A label value as comparable text: case-insensitive, numbers by value (Parquet 1.0 == option '1')."""
    if isinstance(value, bool):
        return str(value).lower()
    text = str(value).strip().lower()
    try:
        num = float(text)
    except ValueError:
        return text
    return str(int(num)) if num.is_integer() else repr(num)


def column_union(rows) -> list[str]:
    """Every key of any row, in order of first appearance."""
    return list(dict.fromkeys(k for r in rows for k in r))


def build_mapping(cols, explicit: dict, where: str) -> Mapping:
    """Check explicitly named columns exist in the file (``cols``: the union of its rows' keys); fill in
    defaults present in the file."""
    cols = set(cols)
    for opt, col in explicit.items():
        if col is not None and opt.endswith("_col") and col not in cols:
            raise MicroError(
                f"{where}: unknown column '{col}' for --{opt.replace('_', '-')}; columns are: {', '.join(sorted(cols))}"
            )
    three = [explicit.get(k) for k in ("a_col", "b_col", "label_col")]
    if any(three) and not all(three):
        raise MicroError(f"{where}: the two-responses shape needs all of --a-col, --b-col and --label-col")
    if not any(three) and any(explicit.get(k) is not None for k in ("label_a", "label_b", "label_tie")):
        raise OptionError(
            "--label-a/--label-b/--label-tie apply to the two-responses shape (--a-col, --b-col, --label-col)"
        )
    if three[0] is not None and three[0] == three[1]:
        raise OptionError(f"--a-col and --b-col are both {three[0]!r}: the two responses need two columns")
    labels = {
        k: label_text(explicit[k] if explicit.get(k) is not None else d)
        for k, d in (("label_a", "a"), ("label_b", "b"), ("label_tie", "tie"))
    }
    for i, (k1, v1) in enumerate(labels.items()):
        for k2, v2 in list(labels.items())[i + 1 :]:
            if v1 == v2:
                raise OptionError(
                    f"--{k1.replace('_', '-')} and --{k2.replace('_', '-')} are both {v1!r}: "
                    "each label value must mean one thing"
                )

    def pick(opt: str, default: str | None) -> str | None:
        col = explicit.get(opt)
        return col if col is not None else (default if default in cols else None)

    if not any(three):
        for opt in ("chosen_col", "rejected_col"):
            if pick(opt, opt[:-4]) is None:
                raise MicroError(
                    f"{where}: no '{opt[:-4]}' column; map one with --{opt.replace('_', '-')} "
                    f"or use --a-col/--b-col/--label-col; columns are: {', '.join(sorted(cols))}"
                )
    return Mapping(
        prompt=pick("prompt_col", "prompt"),
        chosen=pick("chosen_col", "chosen"),
        rejected=pick("rejected_col", "rejected"),
        group=pick("group_col", "group"),
        context=pick("context_col", "context"),
        split=pick("split_col", "split"),
        a=three[0],
        b=three[1],
        label=three[2],
        **{k: str(explicit[k]) for k in ("label_a", "label_b", "label_tie") if explicit.get(k) is not None},
    )


def _optional_text(data: dict, col: str | None) -> str | None:
    value = data.get(col) if col else None
    if value is None:
        return None
    if isinstance(value, (list, dict, tuple)):
        raise BadRow(f"not text: field '{col}' is a {type(value).__name__}, expected a string or number")
    text = str(value).strip()
    return text or None


def _label_side(value, m: Mapping) -> str:
    """'a' | 'b' | 'tie' for a label value (compared as lower-case strings)."""
    label = label_text(value)
    for side, want in (("a", m.label_a), ("b", m.label_b), ("tie", m.label_tie)):
        if label == label_text(want):
            return side
    raise BadRow(
        f"unknown label: field '{m.label}' is {value!r} (expected {m.label_a!r}, {m.label_b!r} or {m.label_tie!r})"
    )


def generic_row(rec: Record, log: RowLog, m: Mapping) -> list[dict]:
    """The pair of one row under mapping ``m`` (empty if the row is a tie)."""
    d = rec.data
    if m.two_responses:
        side = _label_side(need(d, m.label), m)
        if side == "tie":
            need(d, m.a), need(d, m.b)
            log.drop("tie")
            return []
        (win, lose) = (m.a, m.b) if side == "a" else (m.b, m.a)
        names = (win, lose)
    else:
        names = (m.chosen or "chosen", m.rejected or "rejected")
    prompt = d.get(m.prompt) if m.prompt else None
    prompt, chosen, rejected = resolve(prompt, need(d, names[0]), need(d, names[1]), names)
    try:
        split = normalize_split(d.get(m.split)) if m.split else None
    except ValueError as exc:
        raise BadRow(f"bad split: field '{m.split}' {exc}") from None
    return [
        make_pair(
            rec,
            prompt,
            chosen,
            rejected,
            group=_optional_text(d, m.group),
            context=_optional_text(d, m.context),
            split=split,
        )
    ]


def generic(
    records: Iterable[Record],
    log: RowLog,
    *,
    prompt_col: str | None = None,
    chosen_col: str | None = None,
    rejected_col: str | None = None,
    group_col: str | None = None,
    context_col: str | None = None,
    split_col: str | None = None,
    a_col: str | None = None,
    b_col: str | None = None,
    label_col: str | None = None,
    label_a: str | None = None,
    label_b: str | None = None,
    label_tie: str | None = None,
) -> Iterator[dict]:
    """Pairs from a generic preference file (see the module docstring for the accepted shapes)."""
    explicit = {k: v for k, v in locals().items() if k not in ("records", "log")}
    start = len(log.skipped)
    records = list(records)  # the columns are the union over the file: read it all first
    if not records:
        return
    mapping = build_mapping(column_union(r.data for r in records), explicit, records[0].loc.rsplit(":", 1)[0])
    for rec in records:
        try:
            yield from generic_row(rec, log, mapping)
        except BadRow as exc:
            log.skip(rec.loc, str(exc))
    log.skipped[start:] = sorted(log.skipped[start:], key=_row_number)  # reader and row skips in file order


def _row_number(skip: tuple[str, str]) -> int:
    """The row/line number in a skip location 'path:12', 'path:[3]' or 'path:row 7' (for sorting)."""
    digits = "".join(ch for ch in skip[0].rsplit(":", 1)[-1] if ch.isdigit())
    return int(digits) if digits else -1
