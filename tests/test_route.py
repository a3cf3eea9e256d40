"""Stage 2 (pipeline/route.py, `micro route`): routers on user contexts, routed bundles, user-data embedding.

Synthetic, no model: see tests/_stage2.py. The Stage-1 bundle's gate reads the prompt, which in the user data
carries no group information, so only a router on context+prompt features can tell the groups apart.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from _stage2 import (
    AttrBackend,
    make_bundle,
    patch_backend,
    rendered_texts,
    route_cli,
    synthetic_rows,
    write_jsonl,
    write_table,
)
from pipeline.errors import MicroError

SEEDS = (0, 1)
BUDGET = 30


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """(root, bundle, stage-1 rows, user pair table, user rows)."""
    root = tmp_path_factory.mktemp("route")
    rows = synthetic_rows(n_per_group=120, topic=True)
    bundle = make_bundle(root, rows, gate_input="prompt")
    user_rows = synthetic_rows(n_per_group=60, seed=1, prefix="u", test_frac=0.5)
    return root, bundle, rows, write_table(user_rows, root / "user.parquet"), user_rows


@pytest.fixture(scope="module")
def routed(stage1):
    """route() on the user pair table: (result, routed bundle folder, built backends, log lines)."""
    from pipeline.route.route import route

    root, bundle, _, user, _ = stage1
    lines = []
    with pytest.MonkeyPatch.context() as mp:
        built = patch_backend(mp)
        res = route(bundle, user, root / "routed", seeds=SEEDS, budget=BUDGET, log=lines.append)
    return res, root / "routed", built, lines


def user_feats(routed):
    from pipeline.core.run import Run

    feats = Run.load(routed[1] / "work" / "user_run")
    return feats.part("train"), feats.part("test")


# --- helpers ---------------------------------------------------------------------------------------


def test_group_codes_and_per_group_accuracy():
    from pipeline.core.run import Run, per_group_accuracy

    run = Run.from_arrays(np.zeros((4, 2)), np.zeros((4, 2)), ["train"] * 4, group=["b", None, "a", "b"])
    assert run.groups.tolist() == ["b", "all", "a", "b"] and run.group_names == ["a", "all", "b"]
    p = np.array([0.9, 0.4, 0.6, 0.2])
    acc = per_group_accuracy(p, run.groups, ["a", "all", "b", "zz"])
    assert acc[:3].tolist() == [1.0, 0.0, 0.5] and np.isnan(acc[3])
    assert run.group_accuracy(p).tolist() == [1.0, 0.0, 0.5]
    assert run.take(run.groups != "all").present_groups() == ["a", "b"]
    z = np.array([[1.0, -1.0], [-2.0, 3.0], [0.5, 0.5], [-1.0, 2.0]])  # (N, K) logits: (K, G) per head
    np.testing.assert_array_equal(per_group_accuracy(z, run.groups, ["a", "b"], threshold=0.0), [[1, 0.5], [1, 0.5]])


# --- route_seeds -----------------------------------------------------------------------------------


def test_route_seeds_deterministic_and_shapes(stage1, routed):
    from pipeline.core.model import Model
    from pipeline.route.route import route_seeds

    res = routed[0]
    model = Model.load(stage1[1])
    train, test = user_feats(routed)
    again = route_seeds(model, train, test, budget=BUDGET, seeds=SEEDS)
    assert res.after.shape == (len(SEEDS), 3) and res.groups == ["g0", "g1", "g2"]
    np.testing.assert_array_equal(again.after, res.after)
    # each seed's router depends on its seed only, not on the other seeds run with it
    one = route_seeds(model, train, test, budget=BUDGET, seeds=(SEEDS[1],))
    np.testing.assert_array_equal(one.after[0], res.after[1])
    assert res.counts == [int((test.groups == g).sum()) for g in res.groups] == [30, 30, 30]
    # 'before' is the Stage-1 model with its own (prompt) gate input on the test pairs
    p = model.estimator.predict_proba(test.delta, test.prompt)
    assert res.before.tolist() == [float(np.mean(p[test.groups == g] > 0.5)) for g in res.groups]
    assert res.short == {} and res.notes == [] and len(res.routers) == len(SEEDS)


def test_routing_on_context_beats_the_prompt_gate(routed):
    res = routed[0]
    before, after = float(np.nanmean(res.before)), float(res.after.mean())
    assert after > before + 0.05, (res.before, res.after)
    assert res.after_mean.shape == (3,) and np.allclose(res.after_mean, res.after.mean(axis=0))


def test_budget_larger_than_the_groups(stage1, routed):
    from pipeline.core.model import Model
    from pipeline.route.route import route_seeds

    model = Model.load(stage1[1])
    train, test = user_feats(routed)
    res = route_seeds(model, train, test, budget=1000, seeds=(0,), epochs=1)
    want = {"g0": 30, "g1": 30, "g2": 30}
    assert res.short == {g: int((train.groups == g).sum()) for g in ("g0", "g1", "g2")} == want
    assert any("used all" in n and "g0 (30 pairs)" in n for n in res.notes), res.notes


def test_no_context_and_unseen_groups_notes(stage1, routed):
    from pipeline.core.model import Model
    from pipeline.route.route import route_seeds

    model = Model.load(stage1[1])
    train, test = user_feats(routed)
    bare = replace(train, context=train.prompt, has_context=np.zeros(train.n, dtype=bool))
    res = route_seeds(model, bare, test, budget=10, seeds=(0,), epochs=1)
    assert any("routing on the prompt alone" in n for n in res.notes), res.notes
    partial = train.take(train.groups != "g2")
    res = route_seeds(model, partial, test, budget=10, seeds=(0,), epochs=1)
    assert any("no routing pairs" in n and "'g2'" in n for n in res.notes), res.notes
    assert res.groups == ["g0", "g1", "g2"] and np.isfinite(res.after).all()
    with pytest.raises(MicroError, match="no user pairs"):
        route_seeds(model, train.take(np.zeros(train.n, dtype=bool)), test, seeds=(0,))


# --- route(): routed bundle ------------------------------------------------------------------------


def test_routed_bundle_loads_and_predicts_like_the_seed0_router(stage1, routed):
    from pipeline.core.bundle import load_bundle
    from pipeline.core.run import per_group_accuracy

    res, out, built, lines = routed
    model0, meta0 = load_bundle(stage1[1])
    model, meta = load_bundle(out)
    assert meta["gate_input"] == "context" and meta0["gate_input"] == "prompt"
    assert meta["fingerprint_id"] == meta0["fingerprint_id"] and meta["embedder"] == meta0["embedder"]
    assert meta["routed_from"] == str(stage1[1].resolve())
    assert meta["router"]["seed"] == 0 and meta["router"]["budget_per_group"] == BUDGET
    assert meta["router"]["heldout_accuracy_after_mean"] == pytest.approx(dict(zip(res.groups, res.after_mean)))
    np.testing.assert_allclose(model.coef_, model0.coef_)
    _, test = user_feats(routed)
    p = model.predict_proba(test.delta, test.context)
    want = res.routers[0].predict_proba(test.delta @ model0.coef_.T, test.context)
    np.testing.assert_allclose(p, want, rtol=1e-5, atol=1e-6)  # bundle stores float32 gate weights
    assert per_group_accuracy(p, test.groups, res.groups).tolist() == res.after[0].tolist()
    assert len(built) == 1 and built[0].closed == 1
    assert any("user data: 180 pairs" in m for m in lines), lines


def test_route_errors(stage1, tmp_path, monkeypatch):
    from pipeline.route.route import route

    root, bundle, *_ = stage1
    patch_backend(monkeypatch)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    train_only = write_table(
        synthetic_rows(n_per_group=10, seed=2, prefix="t", split="train"), tmp_path / "train_only.parquet"
    )
    for path, pattern in (
        (empty, "empty.jsonl: the user data file is empty"),
        (train_only, "no held-out pairs"),
        (tmp_path / "missing.jsonl", "no such file"),
    ):
        with pytest.raises(MicroError, match=pattern) as exc:
            route(bundle, path, tmp_path / "out", seeds=(0,), log=lambda m: None)
        assert "\n" not in str(exc.value)


# --- user data embedding -------------------------------------------------------------------------


def test_embed_user_data_embeds_only_new_texts(stage1, tmp_path, monkeypatch):
    from pipeline.core.model import Model

    root, bundle, rows, *_ = stage1
    new = synthetic_rows(n_per_group=4, seed=3, prefix="n")
    user_rows = rows[:5] + new  # five pairs whose texts are cached by the Stage-1 run
    path = write_table(user_rows, tmp_path / "mixed.parquet")
    built = patch_backend(monkeypatch)
    model = Model.load(bundle)
    meta = model.meta
    feats = model.embed_user_data(path, tmp_path / "work", log=lambda m: None)
    want = rendered_texts(user_rows) - rendered_texts(rows)
    assert len(want) == 4 * 3 * 4  # chosen, rejected, prompt, context+prompt of the 12 new pairs
    assert sorted(built[0].embedded) == sorted(want)
    assert feats.n == len(user_rows) and feats.fingerprint_id == meta["fingerprint_id"]
    np.testing.assert_allclose(
        feats.chosen[-1], AttrBackend.vector(AttrBackend().render_response(new[-1]["prompt"], new[-1]["chosen"]))
    )
    model.embed_user_data(path, tmp_path / "work2", log=lambda m: None)  # all cached now
    assert built[1].embedded == []


def test_changed_embedder_fingerprint(stage1, tmp_path, monkeypatch):
    from pipeline.core.model import Model
    from pipeline.embed.backends.base import fingerprint_id

    root, bundle, _, user, _ = stage1
    model = Model.load(bundle)
    meta = model.meta
    patch_backend(monkeypatch, tag="v2")
    new_id = fingerprint_id(AttrBackend("v2").fingerprint())
    assert new_id != meta["fingerprint_id"]
    with pytest.raises(MicroError) as exc:
        model.embed_user_data(user, tmp_path / "work", log=lambda m: None)
    assert new_id in str(exc.value) and meta["fingerprint_id"] in str(exc.value)

    import pipeline.embed.backends

    def broken(name, model=None, **kw):
        raise MicroError(f"{model}: no such model folder")

    monkeypatch.setattr(pipeline.embed.backends, "get_backend", broken)
    with pytest.raises(MicroError, match="the bundle's embedder cannot be loaded"):
        model.embedder()


# --- CLI ---------------------------------------------------------------------------------------------


def test_cli_route(stage1, tmp_path, monkeypatch, capsys):
    root, bundle, *_ = stage1
    patch_backend(monkeypatch)
    user = write_jsonl(
        [
            {**r, "prompt": r["prompt"][0]["content"]}
            for r in synthetic_rows(n_per_group=20, seed=4, prefix="c", test_frac=0.5)
        ],
        tmp_path / "user.jsonl",
    )
    out = tmp_path / "cli-routed"
    code, _, err = route_cli(
        monkeypatch, capsys, bundle, user, out, "--seeds", "2", "--budget-per-group", "5", "--epochs", "2"
    )
    assert code == 0, err
    assert "before" in err and "after" in err and "macro" in err and "g2" in err
    assert f"routed bundle: {out}" in err.replace("\n", "")
    assert json.loads((out / "model.json").read_text())["gate_input"] == "context"

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "chosen": "a"}\n')
    code, _, err = route_cli(monkeypatch, capsys, bundle, bad, tmp_path / "x")
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
