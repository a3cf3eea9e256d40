"""Per-user online profiles (pipeline/profiles.py, `micro route --online`, `micro score --user`).

Synthetic, no model: see tests/_stage2.py. The expected Hedge weights and learning curve are recomputed here
with a plain numpy loop over the same per-head logits z = Δ·w_k.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import polars as pl
import pytest

from _stage2 import (
    make_bundle,
    patch_backend,
    route_cli,
    run_cli,
    score_cli,
    synthetic_rows,
    write_jsonl,
    write_table,
)
from pipeline.errors import MicroError


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(root, bundle, user pair table)."""
    root = tmp_path_factory.mktemp("profiles")
    bundle = make_bundle(root, synthetic_rows(n_per_group=120, topic=True), gate_input="prompt")
    user = write_table(synthetic_rows(n_per_group=40, seed=5, prefix="u", test_frac=0.5), root / "user.parquet")
    return root, bundle, user


@pytest.fixture(scope="module")
def built(setup):
    """build_profile of user g1 (prefers low a0): (result, saved JSON)."""
    from pipeline.route.profiles import build_profile

    root, bundle, user = setup
    with pytest.MonkeyPatch.context() as mp:
        patch_backend(mp)
        res = build_profile(bundle, user, "g1", root / "profiles", log=lambda m: None)
    return res, json.loads(res.path.read_text())


def logsig(z):
    return -np.logaddexp(0.0, -z)


def test_profile_json_and_hand_computed_hedge(setup, built):
    from pipeline.core.bundle import load_bundle
    from pipeline.core.run import Run

    root, bundle, _ = setup
    res, data = built
    assert res.path == root / "profiles" / "g1.json"
    assert data["format"] == "micro-profile" and data["user"] == "g1"
    assert data["bundle"] == str(bundle.resolve()) and data["n_heads"] == 3
    model, meta = load_bundle(bundle)
    assert data["fingerprint_id"] == meta["fingerprint_id"]

    feats = Run.load(root / "profiles" / "work" / "g1" / "user_run")
    assert set(feats.groups) == {"g1"} and feats.n == 40  # only the user's pairs were embedded
    mine = feats.take(feats.groups == "g1")
    stream, held = mine.part("train"), mine.part("test")
    assert res.n_stream == stream.n == 20 and res.n_heldout == held.n == data["n_heldout"] == 20
    # prior: the Stage-1 gate (it reads prompts) averaged over the user's stream pairs
    prior = model.gate_weights(stream.prompt).mean(axis=0)
    assert res.prior == data["prior"] == "Stage-1 gate on the user's prompts"
    assert data["profile"]["prior"] == pytest.approx(prior / prior.sum())

    z_s, z_h = stream.delta @ model.coef_.T, held.delta @ model.coef_.T
    logw = np.log(prior / prior.sum())
    curve = [float(np.mean(np.exp(logsig(z_h)) @ np.exp(logw) > 0.5))]
    for row in z_s:  # Hedge, tau = 1, in stream (file) order
        logw = logw + logsig(row)
        logw = logw - np.logaddexp.reduce(logw)
        curve.append(float(np.mean(np.exp(logsig(z_h)) @ np.exp(logw) > 0.5)))
    np.testing.assert_allclose(res.weights, np.exp(logw), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(data["profile"]["weights"], np.exp(logw), rtol=1e-6, atol=1e-9)
    assert data["profile"]["n_seen"] == stream.n and data["profile"]["tau"] == 1.0
    assert len(res.curve) == stream.n + 1 == len(data["learning_curve"])
    assert res.curve.tolist() == curve == data["learning_curve"]
    # g1 prefers the opposite of g0: the prompt gate is blind to it, the profile learns it
    assert curve[-1] >= curve[0] + 0.2, curve


def test_hedge_temperature_and_uniform_prior(setup, tmp_path, monkeypatch):
    from heads.profile import HedgeProfile
    from pipeline.core.bundle import load_bundle
    from pipeline.core.run import Run
    from pipeline.route.profiles import build_profile

    root, bundle, user = setup
    patch_backend(monkeypatch)
    # no context column and a static bundle: the prior is uniform
    static = make_bundle(
        tmp_path, synthetic_rows(n_per_group=30, topic=True), name="static", baseline="static", max_iter=300
    )
    bare = write_table(
        synthetic_rows(n_per_group=10, seed=6, prefix="b", with_context=False), tmp_path / "bare.parquet"
    )
    res = build_profile(static, bare, "g0", tmp_path / "p", tau=2.0, log=lambda m: None)
    assert res.prior == "uniform"
    model, _ = load_bundle(static)
    feats = Run.load(tmp_path / "p" / "work" / "g0" / "user_run")
    stream = feats.take((feats.groups == "g0") & feats.mask("train"))
    want = HedgeProfile(tau=2.0, n_heads=3).update(stream.delta @ model.coef_.T).weights_
    np.testing.assert_allclose(res.weights, want, rtol=1e-6)
    assert json.loads(res.path.read_text())["profile"]["tau"] == 2.0


def test_build_profile_errors(setup, tmp_path, monkeypatch):
    from pipeline.route.profiles import build_profile

    root, bundle, user = setup
    built = patch_backend(monkeypatch)
    with pytest.raises(MicroError, match="user 'nobody' not found.*users present: g0, g1, g2"):
        build_profile(bundle, user, "nobody", tmp_path, log=lambda m: None)
    assert built == []  # checked before the embedder is even loaded
    test_only = write_table(synthetic_rows(n_per_group=5, seed=7, prefix="t", split="test"), tmp_path / "t.parquet")
    with pytest.raises(MicroError, match="no pairs to learn from"):
        build_profile(bundle, test_only, "g0", tmp_path, log=lambda m: None)


def test_load_profile(setup, built, tmp_path):
    from pipeline.core.bundle import read_meta
    from pipeline.route.profiles import load_profile

    root, bundle, _ = setup
    res, data = built
    meta = read_meta(bundle)
    prof = load_profile(res.path, meta)
    np.testing.assert_allclose(prof.head_weights, res.weights)
    assert prof.kind == "weights" and prof.gate_multiplier == 0 and prof.v is None
    other = copy.deepcopy(meta)
    other["fingerprint_id"] = "0123456789abcdef"
    with pytest.raises(MicroError, match="profile of an unknown model"):
        load_profile(res.path, other)
    fewer = copy.deepcopy(meta)
    fewer["fitted"]["mixture_weights_"] = [0.5, 0.5]
    with pytest.raises(MicroError, match="profile of an unknown model"):
        load_profile(res.path, fewer)
    with pytest.raises(MicroError, match="no such profile"):
        load_profile(tmp_path / "none.json", meta)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(MicroError, match="not a JSON profile"):
        load_profile(tmp_path / "bad.json", meta)
    (tmp_path / "fmt.json").write_text(json.dumps({**data, "format": "micro-bundle"}))
    with pytest.raises(MicroError, match="field 'format'"):
        load_profile(tmp_path / "fmt.json", meta)


def test_cli_online_profile_then_score_with_it(setup, tmp_path, monkeypatch, capsys):
    root, bundle, user = setup
    patch_backend(monkeypatch)
    code, _, err = route_cli(
        monkeypatch, capsys, bundle, user, tmp_path / "profiles", "--online", "--user", "g2", "--hedge-tau", "0.5"
    )
    assert code == 0, err
    path = tmp_path / "profiles" / "g2.json"
    data = json.loads(path.read_text())
    assert data["user"] == "g2" and data["profile"]["tau"] == 0.5
    assert "profile of 'g2' after 20 pairs" in err and "learning curve" in err and "profile saved" in err
    weights = data["profile"]["weights"]

    rows = write_jsonl(
        [
            {"prompt": "question x", "response": "answer attrs 1 0 0"},
            {"prompt": "question y", "response": "answer attrs 0 1 0"},
        ],
        tmp_path / "rows.jsonl",
    )
    out = tmp_path / "rewards.parquet"
    code, _, err = score_cli(monkeypatch, capsys, bundle, rows, out, "--user", path)
    assert code == 0, err
    df = pl.read_parquet(out)
    assert df.height == 2
    for w in df["weights"].to_list():
        np.testing.assert_allclose(w, weights, rtol=1e-12)
    heads = df.select([f"reward_head_{k}" for k in range(3)]).to_numpy()
    np.testing.assert_allclose(df["reward"].to_numpy(), heads @ np.asarray(weights), rtol=1e-9)

    code, _, err = run_cli(monkeypatch, capsys, "route", bundle, "--user-data", user, "--online")
    assert code == 2 and err.startswith("error: --online needs --user"), err
    code, _, err = route_cli(monkeypatch, capsys, bundle, user, tmp_path / "p2", "--online", "--user", "zed")
    assert code == 2 and err.startswith("error: ") and "users present: g0, g1, g2" in err, err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("name", ["../../escaped", "/abs/escaped", ".hidden", "a/b"])
def test_user_names_from_data_never_write_outside_out(setup, tmp_path, monkeypatch, name):
    """A group called '../../x' or '/abs/path' in the user file names the profile and its work folder, but both
    stay inside --out (and do not collide with a plainly named user)."""
    from pipeline.route.profiles import build_profile, safe_name

    root, bundle, _ = setup
    rows = synthetic_rows(n_per_group=6, seed=9, prefix="x", groups=("g0",), test_frac=0.5)
    for r in rows:
        r["group"] = name
    user = write_table(rows, tmp_path / "u.parquet")
    out = tmp_path / "deep" / "er" / "profiles"
    patch_backend(monkeypatch)
    res = build_profile(bundle, user, name, out, log=lambda m: None)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(out in p.parents or p == user for p in written), written
    assert res.path.parent == out and (out / "work" / safe_name(name) / "user_run" / "run.json").exists()
    assert not (tmp_path / "escaped").exists() and not __import__("os").path.exists("/abs/escaped")
    assert "/" not in name or safe_name(name) != safe_name(name.replace("/", "_"))
