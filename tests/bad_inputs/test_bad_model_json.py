"""Bad-input corpus, part 6: every field of model.json a bundle is used with (numbers, types, required blocks),
fits on pairs whose features are all identical, and `route` users that cannot be adapted (found before the
routed bundle is written). Each error names the file and the field (exit 2)."""

from __future__ import annotations

import json

from _corpus import Case, cases, check, corpus_template, ws  # noqa: F401 (fixtures)

from _stage2 import AttrBackend, make_run, synthetic_rows, write_jsonl

SCORE = "score {bundle} --input {rows} -o {ws}/r.parquet"
EVAL = "eval {bundle} {run} --seeds 1"
ROUTE = "route {bundle} --user-data {user_table} --out {ws}/ro --seeds 1"
MJ = r"bundle/model\.json: field "


def fitted(**kw):
    return lambda ws: ws.edit_json("bundle/model.json", lambda d: d["fitted"].update(kw))


def top(**kw):
    return lambda ws: ws.edit_json("bundle/model.json", lambda d: d.update(kw))


def embedder(**kw):
    return lambda ws: ws.edit_json("bundle/model.json", lambda d: d["embedder"].update(kw))


def drop(key):
    return lambda ws: ws.edit_json("bundle/model.json", lambda d: d.pop(key) and None)


MODEL_JSON = [
    Case(
        "bundle-temperature-negative",
        SCORE,
        MJ + r"'fitted\.temperature_' is -1\.0, expected a finite number > 0",
        fitted(temperature_=-1.0),
    ),
    Case(
        "bundle-temperature-zero",
        EVAL,
        MJ + r"'fitted\.temperature_' is 0, expected a finite number > 0",
        fitted(temperature_=0),
    ),
    Case("bundle-temperature-nan", ROUTE, MJ + r"'fitted\.temperature_' is NaN", fitted(temperature_=float("nan"))),
    Case("bundle-temperature-text", SCORE, MJ + r"'fitted\.temperature_' is \"1\"", fitted(temperature_="1")),
    Case(
        "bundle-n-features-text",
        SCORE,
        MJ + r"'fitted\.n_features_in_' is \"abc\", expected an integer >= 1",
        fitted(n_features_in_="abc"),
    ),
    Case("bundle-n-features-float", EVAL, MJ + r"'fitted\.n_features_in_' is 15\.5", fitted(n_features_in_=15.5)),
    Case("bundle-n-features-bool", SCORE, MJ + r"'fitted\.n_features_in_' is true", fitted(n_features_in_=True)),
    Case(
        "bundle-n-features-missing",
        SCORE,
        MJ + r"'fitted\.n_features_in_' is missing",
        lambda ws: ws.edit_json("bundle/model.json", lambda d: d["fitted"].pop("n_features_in_") and None),
    ),
    Case(
        "bundle-prompt-features-negative",
        ROUTE,
        MJ + r"'fitted\.n_prompt_features_in_' is -3",
        fitted(n_prompt_features_in_=-3),
    ),
    Case(
        "bundle-weights-negative",
        SCORE,
        MJ + r"'fitted\.mixture_weights_' is \[",
        fitted(mixture_weights_=[1.5, -0.25, -0.25]),
    ),
    Case("bundle-l2-inf", EVAL, MJ + r"'fitted\.l2_' is Infinity", fitted(l2_=float("inf"))),
    Case("bundle-no-embedder", ROUTE, MJ + r"'embedder' is missing", drop("embedder")),
    Case("bundle-embedder-not-object", SCORE, MJ + r"'embedder' is not a dict", top(embedder="minilm")),
    Case(
        "bundle-embedder-no-backend",
        ROUTE,
        MJ + r"'embedder\.backend' is missing",
        lambda ws: ws.edit_json("bundle/model.json", lambda d: d["embedder"].pop("backend") and None),
    ),
    Case(
        "bundle-embedder-cache-dtype",
        SCORE,
        MJ + r"'embedder\.cache_dtype' is \"int8\", expected one of float16",
        embedder(cache_dtype="int8"),
    ),
    Case("bundle-embedder-max-length", SCORE, MJ + r"'embedder\.max_length' is \"long\"", embedder(max_length="long")),
    Case("bundle-no-fingerprint", EVAL, MJ + r"'fingerprint' is missing", drop("fingerprint")),
    Case(
        "bundle-gate-input", SCORE, MJ + r"'gate_input' is \"gate\", expected one of 'prompt'", top(gate_input="gate")
    ),
    Case("bundle-routed-from-number", EVAL, MJ + r"'routed_from' is 3", top(routed_from=3)),
]


def identical_features(ws):
    """A run whose every rejected response is its chosen one plus trailing spaces, embedded by a backend that
    ignores trailing whitespace (as a tokenizer does): every difference vector is zero."""
    rows = synthetic_rows(n_per_group=6, topic=True, seed=4, prefix="z")
    for r in rows:
        r["rejected"] = r["chosen"] + "   "
    plain = AttrBackend.vector
    ws.mp.setattr(AttrBackend, "vector", staticmethod(lambda t: plain(t.rstrip())))
    make_run(ws.root, rows, "zrun")


def user_with_one_train_pair(ws):
    rows = synthetic_rows(n_per_group=12, seed=2, prefix="u", groups=("g0", "g1"))
    rows += [dict(r, group="g2", split="train" if i == 0 else "test") for i, r in enumerate(rows[:4])]
    write_jsonl(rows, ws.path("user_bad.jsonl"))


def user_without_test_pairs(ws):
    rows = synthetic_rows(n_per_group=12, seed=2, prefix="u", groups=("g0", "g1"))
    rows += [dict(r, group="lonely", split="train") for r in rows[:5]]
    write_jsonl(rows, ws.path("user_bad.jsonl"))


FITS_AND_USERS = [
    Case(
        "fit-all-features-identical",
        "fit {ws}/zrun --out {ws}/zm --k 2",
        r"zrun: all \d+ pairs have identical chosen and rejected features",
        identical_features,
    ),
    Case(
        "route-user-one-train-pair",
        "route {bundle} --user-data {ws}/user_bad.jsonl --out {ws}/ro --seeds 1",
        r"user_bad\.jsonl: user 'g2' has 1 train pairs; adapting needs at least 2",
        user_with_one_train_pair,
        backend=True,
    ),
    Case(
        "route-user-no-test-pairs",
        "route {bundle} --user-data {ws}/user_bad.jsonl --out {ws}/ro --seeds 1",
        r"user_bad\.jsonl: user 'lonely' has no held-out pairs",
        user_without_test_pairs,
        backend=True,
    ),
]


@cases(*MODEL_JSON, *FITS_AND_USERS)
def test_bad_model_json(case, ws, monkeypatch, capsys):
    check(case, ws, monkeypatch, capsys)
    if case.id.startswith("route-"):  # found before any result: no routed bundle, no profile
        out = ws.path("ro")
        assert not (out / "model.json").exists() and not (out / "users").exists()
    if case.id.startswith("fit-"):
        assert not ws.path("zm").exists()


def test_model_json_round_trip_is_accepted(ws):
    """The checks accept what `micro fit` writes (and JSON numbers written as integers where floats are usual)."""
    from pipeline.core.bundle import load_bundle

    ws.edit_json("bundle/model.json", lambda d: d["fitted"].update(temperature_=2, l2_=0))
    model, meta = load_bundle(ws.path("bundle"))
    assert model.temperature_ == 2 and json.loads(ws.path("bundle/model.json").read_text())["fitted"]["l2_"] == 0
