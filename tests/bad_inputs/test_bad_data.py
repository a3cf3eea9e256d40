"""Bad-input corpus, part 2: bad data files (raw preference data, pair tables, user data, scoring input,
profiles). Each error names the file and, where one row is at fault, the row or line and the field."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from _corpus import Case, cases, check, corpus_template, ws  # noqa: F401 (fixtures)

from conftest import make_pair_rows

GOOD = {"prompt": "q", "chosen": "good", "rejected": "bad", "group": "g0"}
STRICT = "data prepare generic {ws}/bad.jsonl -o {pairs} --strict"  # -o: an existing table that must survive
LOOSE = "data prepare generic {ws}/bad.jsonl -o {pairs}"


def raw(*rows, name: str = "bad.jsonl"):
    """Setup: a JSONL file of ``rows`` (dicts, or str lines written as they are)."""

    def setup(ws):
        ws.write(name, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))

    return setup


def text(name: str, content: str | bytes):
    return lambda ws: ws.write(name, content)


def table(mutate, name: str = "bad.parquet", schema=None):
    """Setup: a hand-made pair table (written without validation) from make_pair_rows() changed by ``mutate``."""
    from pipeline.data.schema import PAIR_SCHEMA

    def setup(ws):
        rows = make_pair_rows()
        mutate(rows)
        t = pa.Table.from_pylist(rows, schema=schema or PAIR_SCHEMA) if rows else PAIR_SCHEMA.empty_table()
        pq.write_table(t, ws.path(name))

    return setup


def set_(i, key, value):
    def mutate(rows):
        rows[i][key] = value

    return mutate


def drop_split(rows):
    for r in rows:
        r.pop("split")


PREPARED = [
    Case("prepare-empty-file", LOOSE, r"generic: no pairs produced from 0 rows read", raw()),
    Case("prepare-all-unparsable", LOOSE, r"no pairs produced from 0 rows read \(2 skipped", raw("{not json", "{x")),
    Case("prepare-no-chosen-column", LOOSE, r"bad\.jsonl: no 'chosen' column", raw({"prompt": "q", "answer": "a"})),
    Case(
        "prepare-strict-missing-field",
        STRICT,
        r"bad\.jsonl:2: missing field: 'rejected'",
        raw(GOOD, {"prompt": "q2", "chosen": "c"}),
    ),
    Case(
        "prepare-strict-empty-response",
        STRICT,
        r"bad\.jsonl:2: empty response: field 'chosen'",
        raw(GOOD, {"prompt": "q2", "chosen": " ", "rejected": "r"}),
    ),
    Case(
        "prepare-strict-non-utf8",
        STRICT,
        r"bad\.jsonl:2: non-UTF-8 bytes",
        text("bad.jsonl", json.dumps(GOOD).encode() + b'\n{"prompt": "q\xff", "chosen": "c", "rejected": "r"}\n'),
    ),
    Case(
        "prepare-strict-list-group",
        STRICT,
        r"bad\.jsonl:2: not text: field 'group' is a list",
        raw(GOOD, {**GOOD, "prompt": "q2", "group": ["a", "b"]}),
    ),
    Case(
        "prepare-strict-dict-context",
        STRICT,
        r"bad\.jsonl:2: not text: field 'context' is a dict",
        raw(GOOD, {**GOOD, "prompt": "q2", "context": {"persona": "x"}}),
    ),
    Case(
        "prepare-strict-same-texts",
        STRICT,
        r"bad\.jsonl:2: chosen == rejected",
        raw(GOOD, {"prompt": "q2", "chosen": "same", "rejected": "same"}),
    ),
    Case(
        "prepare-strict-unknown-label",
        STRICT + " --a-col a --b-col b --label-col label",
        r"bad\.jsonl:2: unknown label: field 'label' is 'c'",
        raw({"prompt": "q", "a": "x", "b": "y", "label": "a"}, {"prompt": "q2", "a": "x", "b": "y", "label": "c"}),
    ),
    Case(
        "prepare-strict-bad-split",
        STRICT,
        r"bad\.jsonl:2: bad split: field 'split'",
        raw(GOOD, {**GOOD, "prompt": "q2", "split": "later"}),
    ),
    Case("prepare-strict-not-object", STRICT, r"bad\.jsonl:2: not a JSON object: got list", raw(GOOD, "[1, 2]")),
    Case(
        "prepare-strict-unparsable-line",
        STRICT,
        r"bad\.jsonl:3: unparsable JSON",
        raw(GOOD, {**GOOD, "prompt": "q2"}, '{"prompt": '),
    ),
    Case(
        "prepare-unsupported-type",
        "data prepare generic {ws}/bad.txt -o {pairs}",
        r"bad\.txt: unsupported file type",
        text("bad.txt", "prompt,chosen,rejected\n"),
    ),
    Case(
        "prepare-corrupt-gzip",
        "data prepare generic {ws}/bad.jsonl.gz -o {pairs}",
        r"bad\.jsonl\.gz: cannot read file",
        text("bad.jsonl.gz", b"\x1f\x8b\x08\x00garbage"),
    ),
    Case(
        "prepare-json-not-a-list",
        "data prepare generic {ws}/bad.json -o {pairs}",
        r"bad\.json: expected a JSON list",
        text("bad.json", '{"a": 1, "b": 2}'),
    ),
    Case(
        "prepare-json-unparsable",
        "data prepare generic {ws}/bad.json -o {pairs}",
        r"bad\.json: unparsable JSON",
        text("bad.json", '[{"prompt": "q", '),
    ),
    Case(
        "prepare-parquet-garbage",
        "data prepare generic {ws}/bad.parquet -o {pairs}",
        r"bad\.parquet: not a readable Parquet file",
        text("bad.parquet", b"PAR1 not really"),
    ),
    Case(
        "prepare-csv-no-chosen",
        "data prepare generic {ws}/bad.csv -o {pairs}",
        r"bad\.csv: no 'chosen' column",
        text("bad.csv", "prompt,answer\nq,a\n"),
    ),
    Case(
        "prepare-only-ties",
        LOOSE + " --a-col a --b-col b --label-col label",
        r"no pairs produced .* 2 dropped",
        raw({"prompt": "q", "a": "x", "b": "y", "label": "tie"}, {"prompt": "q2", "a": "x", "b": "z", "label": "TIE"}),
    ),
    Case("prepare-dsp-on-generic-data", "data prepare dsp {raw} -o {pairs}", r"dsp: no pairs produced from 2 rows"),
    Case("prepare-hh-on-generic-data", "data prepare hh-rlhf {raw} -o {pairs}", r"hh-rlhf: no pairs produced"),
]

PAIR_TABLES = [
    Case(
        "table-missing-split-column",
        "embed {ws}/bad.parquet --out {ws}/nr",
        r"bad\.parquet: missing column\(s\) split",
        table(
            drop_split,
            schema=pa.schema(
                [f for f in __import__("pipeline.data.schema").data.schema.PAIR_SCHEMA if f.name != "split"]
            ),
        ),
    ),
    Case(
        "table-null-chosen",
        "embed {ws}/bad.parquet --out {ws}/nr",
        r"bad\.parquet: row 1: field 'chosen' is null",
        table(set_(1, "chosen", None)),
    ),
    Case(
        "table-duplicate-id",
        "embed {ws}/bad.parquet --out {ws}/nr",
        r"field 'pair_id' is not unique",
        table(set_(2, "pair_id", "p0-0")),
    ),
    Case(
        "table-bad-split",
        "embed {ws}/bad.parquet --out {ws}/nr",
        r"row 0: field 'split' must be 'train' or 'test'",
        table(set_(0, "split", "dev")),
    ),
    Case(
        "table-empty-chosen",
        "embed {ws}/bad.parquet --out {ws}/nr",
        r"row 3: field 'chosen' is empty",
        table(set_(3, "chosen", "   ")),
    ),
    Case(
        "table-empty-rejected",
        "embed {ws}/bad.parquet --out {ws}/nr",
        r"row 2: field 'rejected' is empty",
        table(set_(2, "rejected", "")),
    ),
    Case(
        "table-chosen-equals-rejected",
        "embed {ws}/bad.parquet --out {ws}/nr",
        r"row 4: chosen == rejected",
        table(set_(4, "rejected", "good answer 2")),
    ),
    Case(
        "table-empty-prompt",
        "embed {ws}/bad.parquet --out {ws}/nr",
        r"row 1: field 'prompt' has no messages",
        table(set_(1, "prompt", [])),
    ),
    Case(
        "table-message-without-text",
        "embed {ws}/bad.parquet --out {ws}/nr",
        r"row 5: field 'prompt' has a message without text",
        table(set_(5, "prompt", [{"role": "user", "content": None}])),
    ),
    Case(
        "table-message-without-role",
        "embed {ws}/bad.parquet --out {ws}/nr",
        r"row 0: field 'prompt' has a message without a role",
        table(set_(0, "prompt", [{"role": "", "content": "q"}])),
    ),
    Case(
        "table-prompt-as-text",
        "embed {ws}/bad.parquet --out {ws}/nr",
        r"columns do not match the pair schema",
        lambda ws: pq.write_table(
            pa.table(
                {c: ["x"] for c in ("pair_id", "prompt", "chosen", "rejected", "group", "context", "split", "source")}
            ),
            ws.path("bad.parquet"),
        ),
    ),
    Case(
        "table-no-rows",
        "embed {ws}/bad.parquet --out {ws}/nr",
        r"bad\.parquet: the pair table is empty",
        table(lambda rows: rows.clear()),
        backend=True,
    ),
    Case(
        "table-truncated",
        "embed {ws}/bad.parquet --out {ws}/nr",
        r"bad\.parquet: not a readable Parquet pair table",
        lambda ws: ws.write("bad.parquet", ws.path("pairs.parquet").read_bytes()[:300]),
    ),
    Case(
        "table-user-data-empty-response",
        "route {bundle} --user-data {ws}/bad.parquet --out {ws}/ro",
        r"bad\.parquet: row 3: field 'chosen' is empty",
        table(set_(3, "chosen", "")),
    ),
]

USER_DATA = [
    Case(
        "user-data-empty-file",
        "route {bundle} --user-data {ws}/u.jsonl",
        r"u\.jsonl: the user data file is empty",
        text("u.jsonl", ""),
    ),
    Case(
        "user-data-no-pairs",
        "route {bundle} --user-data {ws}/u.jsonl",
        r"generic: no pairs produced from 0 rows",
        raw("{oops", name="u.jsonl"),
    ),
    Case(
        "user-data-no-chosen",
        "route {bundle} --user-data {ws}/u.jsonl",
        r"u\.jsonl: no 'chosen' column",
        raw({"question": "q", "answer": "a"}, name="u.jsonl"),
    ),
    Case(
        "user-data-unsupported",
        "route {bundle} --user-data {ws}/u.xml",
        r"u\.xml: unsupported file type",
        text("u.xml", "<pairs/>"),
    ),
    Case(
        "user-unknown",
        "route {bundle} --user-data {user} --online --user zed --out {ws}/p",
        r"user\.jsonl: user 'zed' not found in the 'group' column; users present: g0, g1, g2",
    ),
    Case(
        "user-data-no-heldout",
        "route {bundle} --user-data {ws}/u.jsonl --out {ws}/ro",
        r"u\.jsonl: no held-out pairs \(split == 'test'\)",
        raw({**GOOD, "split": "train"}, {**GOOD, "prompt": "q2", "split": "train"}, name="u.jsonl"),
        backend=True,
    ),
    Case(
        "user-online-no-stream",
        "route {bundle} --user-data {ws}/u.jsonl --online --user g0 --out {ws}/p",
        r"user 'g0' has no pairs to learn from",
        raw({**GOOD, "split": "test"}, name="u.jsonl"),
        backend=True,
    ),
]

SCORING = [
    Case(
        "score-input-no-response",
        "score {bundle} --input {ws}/in.jsonl -o {ws}/r.parquet",
        r"in\.jsonl: missing column 'response'",
        raw({"prompt": "q", "answer": "a"}, name="in.jsonl"),
    ),
    Case(
        "score-input-empty-response",
        "score {bundle} --input {ws}/in.jsonl -o {ws}/r.parquet",
        r"in\.jsonl: row 1: empty 'prompt' or 'response'",
        raw({"prompt": "q", "response": "a"}, {"prompt": "q", "response": " "}, name="in.jsonl"),
    ),
    Case(
        "score-input-unsupported",
        "score {bundle} --input {ws}/in.txt -o {ws}/r.parquet",
        r"in\.txt: unsupported file type",
        text("in.txt", "prompt response"),
    ),
    Case(
        "score-input-broken-parquet",
        "score {bundle} --input {ws}/in.parquet -o {ws}/r.parquet",
        r"in\.parquet: cannot be read",
        text("in.parquet", b"PAR1xx"),
    ),
    Case(
        "score-input-unparsable",
        "score {bundle} --input {ws}/in.jsonl -o {ws}/r.parquet",
        r"in\.jsonl: cannot be read",
        text("in.jsonl", '{"prompt": "q", "response": \n'),
    ),
    Case(
        "score-context-gate-without-context",
        "score {cbundle} --input {rows} -o {ws}/r.parquet",
        r"cbundle: the gate reads the user's context .* pass --context TEXT",
    ),
    Case(
        "score-profile-not-json",
        "score {bundle} --input {rows} -o {ws}/r.parquet --user {profile}",
        r"g1\.json: not a JSON profile",
        lambda ws: ws.truncate("profiles/g1.json", 20),
    ),
    Case(
        "score-profile-wrong-format",
        "score {bundle} --input {rows} -o {ws}/r.parquet --user {profile}",
        r"g1\.json: field 'format' is 'x'",
        lambda ws: ws.edit_json("profiles/g1.json", lambda d: d.update(format="x")),
    ),
    Case(
        "score-profile-other-model",
        "score {bundle} --input {rows} -o {ws}/r.parquet --user {profile}",
        r"g1\.json: profile of an unknown model",
        lambda ws: ws.edit_json("profiles/g1.json", lambda d: d.update(n_heads=7)),
    ),
]


def adapted(tensors: dict | bytes | bool | None = None, **fields):
    """Setup: profiles/g1.json turned into an adapted profile (``micro route --adapt``) of the 3-head bundle, with
    ``fields`` changed (None: removed) and ``tensors`` written to profiles/g1.safetensors (a dict of arrays, or
    bytes as they are; True: named in the profile but absent)."""

    def setup(ws):
        from safetensors.numpy import save_file

        def edit(d):
            d.update(kind="adapted", rule="logit", gate_input="none", gate_multiplier=0.0, head_weights=[1 / 3] * 3)
            d.update(context=None, tensors=None if tensors is None else "g1.safetensors")
            for k, v in fields.items():
                d.pop(k) if v is None else d.update({k: v})

        ws.edit_json("profiles/g1.json", edit)
        if isinstance(tensors, dict):
            save_file(tensors, str(ws.path("profiles/g1.safetensors")))
        elif isinstance(tensors, bytes):
            ws.write("profiles/g1.safetensors", tensors)

    return setup


def v1(fn):
    """Setup: profiles/g1.json made a version-1 Hedge profile (no kind, version, bundle_id), then edited by ``fn``."""

    def edit(d):
        for k in ("kind", "version", "bundle_id", "head_weights", "gate_multiplier", "gate_input", "rule"):
            d.pop(k, None)
        fn(d)

    return lambda ws: ws.edit_json("profiles/g1.json", edit)


SU = "score {bundle} --input {rows} -o {ws}/r.parquet --user {profile}"
PROFILES = [
    Case(
        "profile-not-an-object",
        SU,
        r"g1\.json: not a JSON profile \(not a JSON object\)",
        text("profiles/g1.json", "[]"),
    ),
    Case(
        "profile-hedge-missing",
        SU,
        r"g1\.json: damaged field 'profile' \(KeyError",
        v1(lambda d: d.pop("profile")),
    ),
    Case(
        "profile-hedge-wrong-kind",
        SU,
        r"g1\.json: damaged field 'profile' .*not a Hedge profile",
        v1(lambda d: d["profile"].update(kind="router")),
    ),
    Case(
        "profile-hedge-too-few-weights",
        SU,
        r"g1\.json: field 'profile' has 2 head weights, the model has 3 heads",
        v1(lambda d: d["profile"].update(log_weights=[0.0, 0.0], prior=None)),
    ),
    Case(
        "adapted-no-head-weights",
        SU,
        r"g1\.json: field 'head_weights' must be a list of 3 numbers",
        adapted(head_weights=None),
    ),
    Case("adapted-head-weights-short", SU, r"g1\.json: field 'head_weights' must be", adapted(head_weights=[0.5, 0.5])),
    Case("adapted-head-weights-text", SU, r"g1\.json: field 'head_weights' must be", adapted(head_weights=["a", 1, 2])),
    Case(
        "adapted-no-multiplier",
        SU,
        r"g1\.json: field 'gate_multiplier' must be a number",
        adapted(gate_multiplier=None),
    ),
    Case(
        "adapted-tensors-missing", SU, r"g1\.safetensors: the profile's tensors cannot be read", adapted(tensors=True)
    ),
    Case("adapted-tensors-empty", SU, r"g1\.safetensors: the profile's tensors cannot be read", adapted(tensors=b"")),
    Case(
        "adapted-tensors-damaged",
        SU,
        r"g1\.safetensors: the profile's tensors cannot be read",
        adapted(tensors=b"garbage!"),
    ),
    Case(
        "adapted-gate-without-tensors",
        SU,
        r"g1\.json: the profile mixes with a gate but its tensors have none",
        adapted(gate_multiplier=1.0, gate_input="context", tensors={"v": np.ones(15, np.float32)}),
    ),
    Case(
        "profile-v1-hedge-nan",
        SU,
        r"g1\.json: damaged field 'profile'|g1\.json: field 'profile' has NaN",
        v1(lambda d: d["profile"].update(log_weights=[float("nan")] * 3, prior=None)),
    ),
    Case(
        "profile-weights-nan",
        SU,
        r"g1\.json: field 'head_weights' must be a list of 3 numbers",
        lambda ws: ws.edit_json("profiles/g1.json", lambda d: d.update(head_weights=[float("nan"), 0.5, 0.5])),
    ),
    Case(
        "profile-version-future",
        SU,
        r"g1\.json: field 'version' is 99; this micro reads versions 1 to 2",
        lambda ws: ws.edit_json("profiles/g1.json", lambda d: d.update(version=99)),
    ),
    Case(
        "profile-kind-unknown",
        SU,
        r"g1\.json: field 'kind' is 'magic', expected one of gate, routed, weights, adapted",
        lambda ws: ws.edit_json("profiles/g1.json", lambda d: d.update(kind="magic")),
    ),
    Case(
        "profile-other-bundle-id",
        SU,
        r"g1\.json: field 'bundle_id' is 0000000000000000, but .*bundle is bundle \w+ \(the profile was made for "
        "another bundle",
        lambda ws: ws.edit_json("profiles/g1.json", lambda d: d.update(bundle_id="0" * 16)),
    ),
    Case(
        "profile-of-another-bundle-same-k",
        "score {cbundle} --input {rows} -o {ws}/r.parquet --user {profile}",
        r"g1\.json: field 'bundle_id' is \w+, but .*cbundle is bundle \w+ \(the profile was made for another bundle",
    ),
    Case(
        "adapted-v-nan",
        SU,
        r"g1\.safetensors: tensor 'v' has 1 NaN or infinite values",
        adapted(tensors={"v": np.r_[np.ones(14), np.nan].astype(np.float32)}),
    ),
    Case(
        "adapted-gate-inf",
        SU,
        r"g1\.safetensors: tensor 'gate.coef' has 2 NaN or infinite values",
        adapted(
            gate_multiplier=1.0,
            gate_input="prompt",
            tensors={
                "gate.coef": np.r_[np.full(2, np.inf), np.ones(43)].reshape(3, 15).astype(np.float32),
                "gate.intercept": np.zeros(3, np.float32),
            },
        ),
    ),
    Case(
        "adapted-context-not-text",
        SU,
        r"g1\.json: field 'context' must be a string or null, got int",
        adapted(context=5),
    ),
    Case(
        "adapted-v-wrong-width",
        SU,
        r"g1\.safetensors: tensor 'v' has shape \[3\], expected \[15\]",
        adapted(tensors={"v": np.ones(3, np.float32)}),
    ),
]


@cases(*PREPARED, *PAIR_TABLES, *USER_DATA, *SCORING, *PROFILES)
def test_bad_data(case, ws, monkeypatch, capsys):
    check(case, ws, monkeypatch, capsys)


def test_gzip_helper_roundtrip(tmp_path):
    """The corrupt-gzip case really is corrupt (a valid gzip of the same name would be read)."""
    p = tmp_path / "ok.jsonl.gz"
    p.write_bytes(gzip.compress(json.dumps(GOOD).encode()))
    from pipeline.data.prepare import build_pairs

    assert build_pairs("generic", [p])[0].num_rows == 1
