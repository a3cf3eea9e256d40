"""`micro data prepare`: generic shapes and formats, bad rows, strict mode, determinism, CLI, user data."""

from __future__ import annotations

import csv
import gzip
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data.prepare import build_pairs, load_user_pairs, prepare
from pipeline.data.schema import PAIR_SCHEMA, read_pairs
from pipeline.data.split import prompts_in_both
from pipeline.errors import MicroError

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "pipeline/sample/dsp_sample.json"
MICRO = Path(sys.executable).parent / "micro"


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def pairs(path: Path, **opts) -> list[dict]:
    return build_pairs("generic", [path], **opts)[0].to_pylist()


def triple(row: dict) -> tuple:
    return row["prompt"], row["chosen"], row["rejected"]


U = [{"role": "user", "content": "q"}]


# --- generic shapes -------------------------------------------------------------------------------


def test_generic_strings(tmp_path):
    rows = pairs(jsonl(tmp_path / "a.jsonl", [{"prompt": "q", "chosen": "good", "rejected": "bad"}]))
    assert [triple(r) for r in rows] == [(U, "good", "bad")]
    assert rows[0]["group"] is None and rows[0]["context"] is None


def test_generic_message_lists(tmp_path):
    row = {
        "prompt": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "q"}],
        "chosen": [{"role": "assistant", "content": "good"}],
        "rejected": [{"role": "assistant", "content": "bad"}],
    }
    (r,) = pairs(jsonl(tmp_path / "a.jsonl", [row]))
    assert triple(r) == (row["prompt"], "good", "bad")


def test_generic_full_transcripts(tmp_path):
    conv = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]
    rows = [
        {"chosen": "\n\nHuman: q\n\nAssistant: good", "rejected": "\n\nHuman: q\n\nAssistant: bad"},
        {
            "chosen": conv + [{"role": "assistant", "content": "good"}],
            "rejected": conv + [{"role": "assistant", "content": "bad"}],
        },
    ]
    out = pairs(jsonl(tmp_path / "a.jsonl", rows))
    assert [triple(r) for r in out] == [(U, "good", "bad"), (conv, "good", "bad")]


def test_generic_two_responses_and_label(tmp_path):
    rows = [
        {"q": "q", "r1": "one", "r2": "two", "lab": 1},
        {"q": "q", "r1": "one", "r2": "two", "lab": 2},
        {"q": "q", "r1": "one", "r2": "two", "lab": 0},
        {"q": "q", "r1": "one", "r2": "two", "lab": 7},
    ]
    path = jsonl(tmp_path / "a.jsonl", rows)
    table, log, _ = build_pairs(
        "generic",
        [path],
        prompt_col="q",
        a_col="r1",
        b_col="r2",
        label_col="lab",
        label_a="1",
        label_b="2",
        label_tie="0",
    )
    assert [(r["chosen"], r["rejected"]) for r in table.to_pylist()] == [("one", "two"), ("two", "one")]
    assert log.dropped == {"tie": 1}
    assert log.skipped == [(f"{path}:4", "unknown label: field 'lab' is 7 (expected '1', '2' or '0')")]
    with pytest.raises(MicroError, match="needs all of"):
        build_pairs("generic", [path], a_col="r1", b_col="r2")


def test_generic_group_context_split_columns(tmp_path):
    rows = [
        {
            "prompt": f"q{i}",
            "chosen": "c",
            "rejected": "r",
            "user": f"u{i % 2}",
            "why": "short answers",
            "part": "validation" if i < 2 else "train",
        }
        for i in range(4)
    ]
    path = jsonl(tmp_path / "a.jsonl", rows)
    out = pairs(path, group_col="user", context_col="why", split_col="part", test_size=1.0)
    assert [r["group"] for r in out] == ["u0", "u1", "u0", "u1"]
    assert {r["context"] for r in out} == {"short answers"}
    assert [r["split"] for r in out] == ["test", "test", "train", "train"]  # kept, not hashed
    with pytest.raises(MicroError, match="unknown column 'nope'"):
        pairs(path, group_col="nope")


def test_generic_formats_agree(tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(5)]
    jl = jsonl(tmp_path / "d.jsonl", rows)
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as f:
        f.write(jl.read_text())
    (tmp_path / "d.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    with open(tmp_path / "d.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["prompt", "chosen", "rejected"])
        w.writeheader()
        w.writerows(rows)
    want = [triple(r) for r in pairs(jl)]
    assert len(want) == 5
    for name in ("d.jsonl.gz", "d.json", "d.parquet", "d.csv"):
        assert [triple(r) for r in pairs(tmp_path / name)] == want, name
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(MicroError, match="unsupported file type"):
        pairs(tmp_path / "d.txt")


# --- bad rows, strict mode ------------------------------------------------------------------------

BAD_ROWS = [
    {"prompt": "q1", "chosen": "good", "rejected": "bad"},
    '{"prompt": "q2", "chosen": ',
    {"prompt": "q3", "chosen": "good"},
    {"prompt": "q4", "chosen": "  ", "rejected": "bad"},
    {"prompt": "q5", "chosen": "same", "rejected": "same"},
    {"prompt": "q6", "chosen": "good", "rejected": "bad"},
]


def bad_file(tmp_path: Path) -> Path:
    path = jsonl(tmp_path / "bad.jsonl", BAD_ROWS)
    with open(path, "ab") as f:
        f.write(b'{"prompt": "q7", "chosen": "caf\xe9", "rejected": "bad"}\n')
    return path


def test_bad_rows_are_skipped_with_location_and_reason(tmp_path):
    path = bad_file(tmp_path)
    table, log, n = build_pairs("generic", [path])
    assert table.num_rows == 2 and n == 5
    assert [(loc, reason.split(":")[0]) for loc, reason in log.skipped] == [
        (f"{path}:2", "unparsable JSON"),
        (f"{path}:3", "missing field"),
        (f"{path}:4", "empty response"),
        (f"{path}:5", "chosen == rejected"),
        (f"{path}:7", "non-UTF-8 bytes"),
    ]
    assert "'rejected'" in log.skipped[1][1] and "'chosen'" in log.skipped[2][1]


def test_strict_raises_on_first_bad_row(tmp_path):
    path = bad_file(tmp_path)
    with pytest.raises(MicroError, match=rf"^{path}:2: unparsable JSON"):
        build_pairs("generic", [path], strict=True)
    good = jsonl(tmp_path / "b.jsonl", [BAD_ROWS[0], BAD_ROWS[2]])
    with pytest.raises(MicroError, match=rf"^{good}:2: missing field: 'rejected'$"):
        build_pairs("generic", [good], strict=True)


def test_user_errors_are_micro_errors(tmp_path):
    path = jsonl(tmp_path / "a.jsonl", [BAD_ROWS[0]])
    with pytest.raises(MicroError, match="unknown recipe 'nope'"):
        build_pairs("nope", [path])
    with pytest.raises(MicroError, match="no such file"):
        build_pairs("generic", [tmp_path / "missing.jsonl"])
    with pytest.raises(MicroError, match="does not take option"):
        build_pairs("dsp", [path], prompt_col="prompt")
    with pytest.raises(MicroError, match="test-size"):
        build_pairs("generic", [path], test_size=1.5)
    with pytest.raises(MicroError, match="no pairs produced"):
        build_pairs("generic", [jsonl(tmp_path / "e.jsonl", [BAD_ROWS[4]])])
    (tmp_path / "broken.json").write_text("[{]")
    with pytest.raises(MicroError, match="unparsable JSON"):
        build_pairs("generic", [tmp_path / "broken.json"])


# --- determinism, ids, split, writing -------------------------------------------------------------


def test_prepare_writes_deterministic_grouped_split(tmp_path, capsys):
    t1, log = prepare("dsp", [SAMPLE], tmp_path / "p1.parquet", seed=0)
    t2, _ = prepare("dsp", [SAMPLE], tmp_path / "p2.parquet", seed=0, verbose=False)
    t3, _ = prepare("dsp", [SAMPLE], tmp_path / "p3.parquet", seed=1, verbose=False)
    assert t1.equals(t2)
    assert read_pairs(tmp_path / "p1.parquet").equals(t1)
    assert t1.schema.equals(PAIR_SCHEMA)
    assert t1.column("pair_id").equals(t3.column("pair_id"))
    assert t1.column("split").to_pylist() != t3.column("split").to_pylist()
    for t in (t1, t3):
        assert prompts_in_both(t.column("prompt").to_pylist(), t.column("split").to_pylist()) == 0
    assert t1.num_rows == 1882 and log.reasons() == {"chosen == rejected": 34, "empty response": 4}
    err = capsys.readouterr().err
    for text in ("rows read: 120", "pairs written: 1,882", "chosen == rejected 34", "academy", "split: train"):
        assert text in err


def test_pair_ids_stable_across_working_directory(tmp_path, monkeypatch):
    path = jsonl(tmp_path / "a.jsonl", [{"prompt": "q", "chosen": "c", "rejected": "r"}])
    ids = build_pairs("generic", [path])[0].column("pair_id").to_pylist()
    monkeypatch.chdir(tmp_path)
    again = build_pairs("generic", ["a.jsonl"])[0]
    assert again.column("pair_id").to_pylist() == ids and ids[0].startswith("generic:")
    assert again.column("source").to_pylist() == [f"generic:{tmp_path.name}/a.jsonl"]
    table, log, _ = build_pairs("generic", [path, path])  # the same file twice: duplicates are counted
    assert table.num_rows == 1 and log.reasons() == {"duplicate pair": 1}


# --- load_user_pairs ------------------------------------------------------------------------------


def test_load_user_pairs_raw_and_prepared(tmp_path):
    rows = [{"Instruction": "q", "preferred": "c", "dispreferred": "r", "criterion": "be brief", "user": "ann"}]
    table = load_user_pairs(jsonl(tmp_path / "u.jsonl", rows))
    (r,) = table.to_pylist()
    assert (triple(r), r["context"], r["group"], r["split"]) == ((U, "c", "r"), "be brief", "ann", "train")
    prepare("dsp", [SAMPLE], tmp_path / "p.parquet", verbose=False)
    assert load_user_pairs(tmp_path / "p.parquet").num_rows == 1882
    with pytest.raises(MicroError):
        load_user_pairs(tmp_path / "none.jsonl")


# --- CLI ------------------------------------------------------------------------------------------


def micro(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(MICRO), "data", "prepare", *args], cwd=cwd, capture_output=True, text=True)


def test_cli_success_and_one_line_errors(tmp_path):
    out = tmp_path / "p.parquet"
    ok = micro("dsp", str(SAMPLE), "-o", str(out), "--seed", "3", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert read_pairs(out).num_rows == 1882 and "pairs written: 1,882" in ok.stderr
    (tmp_path / "bad.json").write_text("{not json")
    bad = micro("generic", "bad.json", "-o", "x.parquet", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: bad.json: unparsable JSON")
    assert bad.stderr.count("\n") == 1 and not (tmp_path / "x.parquet").exists()
    strict = micro("generic", str(bad_file(tmp_path)), "-o", "y.parquet", "--strict", cwd=tmp_path)
    assert strict.returncode == 2 and strict.stderr.count("\n") == 1
    assert strict.stderr.startswith("error: ") and "bad.jsonl:2: unparsable JSON: Expecting value" in strict.stderr
    col = micro("generic", "bad.jsonl", "-o", "y.parquet", "--group-col", "nope", cwd=tmp_path)
    assert col.returncode == 2 and "unknown column 'nope'" in col.stderr


# --- columns, ids and labels decided over the whole file (issue 8) -----------------------------------------------


def test_generic_columns_are_the_union_over_the_file(tmp_path):
    """A first row without the optional group/context does not drop them for every other row."""
    path = jsonl(
        tmp_path / "u.jsonl",
        [
            {"prompt": "q0", "chosen": "c", "rejected": "r"},
            {"prompt": "q1", "chosen": "c", "rejected": "r", "group": "g1", "context": "be brief"},
        ],
    )
    got = pairs(path)
    assert [(r["group"], r["context"]) for r in got] == [(None, None), ("g1", "be brief")]
    assert [r["group"] for r in pairs(path, group_col="group")] == [None, "g1"]  # a column of a later row exists


def test_generic_row_missing_a_required_field_is_skipped_not_the_file(tmp_path):
    path = jsonl(
        tmp_path / "u.jsonl", [{"prompt": "q0", "chosen": "c"}, {"prompt": "q1", "chosen": "c", "rejected": "r"}]
    )
    table, log, n = build_pairs("generic", [path])
    assert n == 2 and table.column("prompt").to_pylist() == [[{"role": "user", "content": "q1"}]]
    assert log.skipped == [(f"{path}:1", "missing field: 'rejected'")]


def test_user_data_columns_detected_over_the_file(tmp_path):
    path = jsonl(
        tmp_path / "u.jsonl",
        [
            {"question": "q0", "preferred": "c", "dispreferred": "r"},
            {"question": "q1", "preferred": "c", "dispreferred": "r", "persona": "p", "user": "ann"},
        ],
    )
    rows = load_user_pairs(path).to_pylist()
    assert [(r["context"], r["group"]) for r in rows] == [(None, None), ("p", "ann")]


def test_pair_ids_differ_for_files_with_the_same_parent_and_name(tmp_path):
    """A/data/train.jsonl and B/data/train.jsonl: the second file's pairs are not 'duplicates' of the first's."""
    row = {"prompt": "q", "chosen": "c", "rejected": "r"}
    a = jsonl((tmp_path / "A" / "data").mkdir(parents=True) or tmp_path / "A/data/train.jsonl", [row])
    b = jsonl((tmp_path / "B" / "data").mkdir(parents=True) or tmp_path / "B/data/train.jsonl", [row])
    table, log, _ = build_pairs("generic", [a, b])
    assert table.num_rows == 2 and not log.skipped and len(set(table.column("pair_id").to_pylist())) == 2
    assert set(table.column("source").to_pylist()) == {"generic:A/data/train.jsonl", "generic:B/data/train.jsonl"}


@pytest.mark.parametrize("value, kind", [(["a", "b"], "list"), ({"k": 1}, "dict")])
def test_list_or_dict_group_is_skipped_not_stored_as_a_repr(tmp_path, value, kind):
    path = jsonl(
        tmp_path / "u.jsonl",
        [
            {"prompt": "q0", "chosen": "c", "rejected": "r", "group": value},
            {"prompt": "q1", "chosen": "c", "rejected": "r", "group": 7},
        ],
    )
    table, log, _ = build_pairs("generic", [path])
    assert table.column("group").to_pylist() == ["7"]
    assert log.skipped == [(f"{path}:1", f"not text: field 'group' is a {kind}, expected a string or number")]


def test_parquet_float_labels_match_integer_label_options(tmp_path):
    path = tmp_path / "l.parquet"
    pq.write_table(
        pa.table({"prompt": ["q0", "q1", "q2"], "a": ["x", "x", "x"], "b": ["y", "y", "y"], "label": [1.0, 2.0, 0.0]}),
        path,
    )
    table, log, _ = build_pairs(
        "generic", [path], a_col="a", b_col="b", label_col="label", label_a="1", label_b="2", label_tie="0"
    )
    assert [(r["chosen"], r["rejected"]) for r in table.to_pylist()] == [("x", "y"), ("y", "x")]
    assert log.dropped == {"tie": 1} and not log.skipped


def test_identical_label_values_are_refused(tmp_path):
    path = jsonl(tmp_path / "u.jsonl", [{"prompt": "q", "a": "x", "b": "y", "label": 1}])
    with pytest.raises(MicroError, match="--label-a and --label-b are both '1'"):
        build_pairs("generic", [path], a_col="a", b_col="b", label_col="label", label_a="1", label_b="1")


def test_prepare_writes_parquet_only(tmp_path):
    path = jsonl(tmp_path / "u.jsonl", [{"prompt": "q", "chosen": "c", "rejected": "r"}])
    with pytest.raises(MicroError, match=r"x\.jsonl: the pair table is written as Parquet"):
        prepare("generic", [path], tmp_path / "x.jsonl", verbose=False)
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("chosen", " ", "row 1: field 'chosen' is empty"),
        ("rejected", "", "row 1: field 'rejected' is empty"),
        ("prompt", [], "row 1: field 'prompt' has no messages"),
        ("prompt", [{"role": "user", "content": None}], "row 1: field 'prompt' has a message without text"),
        ("rejected", "c1", "row 1: chosen == rejected"),
    ],
)
def test_hand_made_pair_table_is_checked_like_prepared_ones(tmp_path, field, value, message):
    rows = [
        {
            "pair_id": f"p{i}",
            "prompt": [{"role": "user", "content": f"q{i}"}],
            "chosen": f"c{i}",
            "rejected": f"r{i}",
            "group": None,
            "context": None,
            "split": "train",
            "source": "hand",
        }
        for i in range(3)
    ]
    rows[1][field] = value
    pq.write_table(pa.Table.from_pylist(rows, schema=PAIR_SCHEMA), tmp_path / "t.parquet")
    with pytest.raises(MicroError, match=message):
        read_pairs(tmp_path / "t.parquet")
