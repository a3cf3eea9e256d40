"""Adapted user profiles (pipeline/adapt.py): `micro route --adapt`, `--online` with residual experts, and
`micro score --user PROFILE` applying the residual. Synthetic, no model: see tests/_stage2.py. Expected rewards
are recomputed from AttrBackend's vectors, the bundle's heads and the profile's tensors read directly."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from _stage2 import (
    AttrBackend,
    make_bundle,
    patch_backend,
    route_cli,
    run_cli,
    score_cli,
    synthetic_rows,
    write_jsonl,
    write_table,
)
from pipeline.embed.backends.base import render_plain, with_context
from pipeline.errors import MicroError

ROWS = [
    {"prompt": "question x", "response": "answer attrs 1 0 0"},
    {"prompt": "question y", "response": "answer attrs -1 0.5 0"},
    {"prompt": "question z", "response": "answer attrs 0 2 0.3"},
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(root, bundle fitted on g0 + g2 only (g1 = their opposite is a new user), user pair table)."""
    root = tmp_path_factory.mktemp("adapt")
    rows = [r for r in synthetic_rows(n_per_group=120, topic=True) if r["group"] != "g1"]
    bundle = make_bundle(root, rows, gate_input="context", k=2)
    user = write_table(synthetic_rows(n_per_group=60, seed=3, prefix="u", test_frac=0.5), root / "user.parquet")
    return root, bundle, user


def vec(text):
    return AttrBackend.vector(text).astype(np.float64)


def expected_rewards(bundle, profile_path):
    """reward = sum_k (g f_k(context + prompt) + omega_k) r_k + v . phi from the raw files."""
    from safetensors.numpy import load_file

    from heads.gate import gate_weights

    coef = load_file(str(bundle / "model.safetensors"))["coef"].astype(np.float64)
    data = json.loads(profile_path.read_text())
    t = load_file(str(profile_path.with_suffix(".safetensors"))) if data["tensors"] else {}
    phi = np.stack(
        [
            vec(
                render_plain(
                    [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]
                )
            )
            for r in ROWS
        ]
    )
    w = np.tile(np.asarray(data["head_weights"]), (len(ROWS), 1))
    if data["gate_multiplier"]:
        gate = {k[5:]: v.astype(np.float64) for k, v in t.items() if k.startswith("gate.")}
        x = np.stack(
            [vec(render_plain(with_context([{"role": "user", "content": r["prompt"]}], data["context"]))) for r in ROWS]
        )
        w = w + data["gate_multiplier"] * gate_weights(gate, x)
    v = t["v"].astype(np.float64) if "v" in t else np.zeros(phi.shape[1])
    return (phi @ coef.T * w).sum(axis=1) + phi @ v, phi @ v, w


def test_route_adapt_all_users_then_score(setup, tmp_path, monkeypatch, capsys):
    root, bundle, user = setup
    built = patch_backend(monkeypatch)
    out = tmp_path / "routed"
    code, _, err = route_cli(monkeypatch, capsys, bundle, user, out, "--budget-per-group", "25", "--seeds", "2")
    assert code == 0, err
    assert "routed bundle" in err and "chosen" in err and "adapted" in err and err.count("profile saved:") == 3
    assert len(built) == 1 and not (out / "users" / "work").exists()  # the user data embedded once, for both
    assert (out / "model.json").exists()  # routing as before (--adapt mixture)
    data = {g: json.loads((out / "users" / f"{g}.json").read_text()) for g in ("g0", "g1", "g2")}
    g1 = data["g1"]
    assert g1["format"] == "micro-profile" and g1["kind"] == "adapted" and g1["user"] == "g1"
    assert g1["choice"] == "residual" and g1["rule"] == "logit" and g1["budget"] == 25 and g1["n_heads"] == 2
    assert g1["context"] == "criterion for g1" and set(g1["cv_loglik"]) == {"mixture", "residual"}
    assert g1["cv_loglik"]["residual"] > g1["cv_loglik"]["mixture"]

    rows = write_jsonl(ROWS, tmp_path / "rows.jsonl")
    path = out / "users" / "g1.json"
    code, _, err = score_cli(monkeypatch, capsys, bundle, rows, tmp_path / "r.parquet", "--user", path)
    assert code == 0, err
    df = pl.read_parquet(tmp_path / "r.parquet")
    reward, residual, w = expected_rewards(bundle, path)
    np.testing.assert_allclose(df["reward"].to_numpy(), reward, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(df["residual"].to_numpy(), residual, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.array(df["weights"].to_list()), w, rtol=1e-4, atol=1e-6)
    assert np.any(np.abs(residual) > 1e-3)
    # g1 prefers LOW a0: its adapted reward ranks "attrs -1 ..." above "attrs 1 ..."
    assert reward[1] > reward[0]
    # a routing profile (--adapt mixture --user g0): weights = its router's gate on its context, no residual
    code, _, err = route_cli(
        monkeypatch,
        capsys,
        bundle,
        user,
        tmp_path / "m",
        "--adapt",
        "mixture",
        "--user",
        "g0",
        "--budget-per-group",
        "25",
        "--seeds",
        "1",
    )
    assert code == 0, err
    g0 = json.loads((tmp_path / "m" / "g0.json").read_text())
    assert g0["choice"] == "mixture" and g0["rule"] == "mixture" and g0["tensors"] == "g0.safetensors"
    code, _, err = score_cli(
        monkeypatch, capsys, bundle, rows, tmp_path / "r0.parquet", "--user", tmp_path / "m" / "g0.json"
    )
    assert code == 0, err
    df = pl.read_parquet(tmp_path / "r0.parquet")
    reward, residual, w = expected_rewards(bundle, tmp_path / "m" / "g0.json")
    np.testing.assert_allclose(df["reward"].to_numpy(), reward, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.array(df["weights"].to_list()), w, rtol=1e-4, atol=1e-6)
    assert "residual" not in df.columns and np.allclose(w.sum(axis=1), 1.0)


def test_route_one_user_residual_and_mixture(setup, tmp_path, monkeypatch, capsys):
    from pipeline.core.bundle import read_meta
    from pipeline.route.adapt import adapt_users
    from pipeline.route.profiles import load_profile

    root, bundle, user = setup
    patch_backend(monkeypatch)
    res = adapt_users(
        bundle, user, tmp_path / "p", adapt="residual", budget=20, seeds=(0, 1), user="g1", log=lambda m: None
    )
    assert res.users == ["g1"] and res.adapted.shape == (2, 1) and res.choices == [1.0]
    assert res.adapted.mean() > res.routing.mean() + 0.2
    prof = load_profile(res.paths[0], read_meta(bundle))
    assert prof.rule == "logit" and prof.v.shape == (15,) and prof.head_weights.shape == (2,)
    mix = adapt_users(
        bundle, user, tmp_path / "m", adapt="mixture", budget=20, seeds=(0,), user="g0", log=lambda m: None
    )
    data = json.loads(mix.paths[0].read_text())
    assert data["rule"] == "mixture" and data["gate_multiplier"] == 1.0 and data["gate_input"] == "context"
    assert mix.adapted.tolist() == mix.routing.tolist()  # mixture = the router itself
    assert load_profile(mix.paths[0], read_meta(bundle)).v is None


def test_online_profile_with_residual_experts(setup, tmp_path, monkeypatch, capsys):
    root, bundle, user = setup
    patch_backend(monkeypatch)
    code, _, err = route_cli(monkeypatch, capsys, bundle, user, tmp_path / "profiles", "--online", "--user", "g1")
    assert code == 0, err
    data = json.loads((tmp_path / "profiles" / "g1.json").read_text())
    assert data["kind"] == "adapted" and data["source"] == "route --online" and data["online"]["n_seen"] == 30
    curve, prior = data["learning_curve"], data["prior_learning_curve"]
    assert len(curve) == len(prior) == 31 and data["n_heldout"] == 30
    assert data["online"]["served"].startswith("residual") and curve[-1] > prior[-1] + 0.2
    L = data["online"]["prequential_logloss"]
    assert L[data["online"]["served"]] < L["prior"]
    assert "serving 'residual" in err and "learning curve" in err and "profile saved" in err
    rows = write_jsonl(ROWS, tmp_path / "rows.jsonl")
    code, _, err = score_cli(
        monkeypatch, capsys, bundle, rows, tmp_path / "r.jsonl", "--user", tmp_path / "profiles" / "g1.json"
    )
    assert code == 0, err
    reward, _, _ = expected_rewards(bundle, tmp_path / "profiles" / "g1.json")
    got = pl.read_ndjson(tmp_path / "r.jsonl")["reward"].to_numpy()
    np.testing.assert_allclose(got, reward, rtol=1e-4, atol=1e-5)


def test_bad_adapt_options(setup, tmp_path, monkeypatch, capsys):
    root, bundle, user = setup
    patch_backend(monkeypatch)
    code, _, err = run_cli(monkeypatch, capsys, "route", bundle, "--user-data", user, "--adapt", "span")
    assert code == 2 and err == "error: --adapt must be one of auto, mixture, residual, got 'span'\n", err
    test_only = write_table(synthetic_rows(n_per_group=6, seed=8, prefix="t", split="test"), tmp_path / "t.parquet")
    code, _, err = route_cli(monkeypatch, capsys, bundle, test_only, tmp_path / "x", "--user", "g1")
    assert code == 2 and err.splitlines()[-1].startswith("error: ") and "has 0 train pairs" in err, err
    train_only = write_table(synthetic_rows(n_per_group=6, seed=8, prefix="t", split="train"), tmp_path / "r.parquet")
    with pytest.raises(MicroError, match="no held-out pairs"):
        from pipeline.route.adapt import adapt_users

        adapt_users(bundle, train_only, tmp_path / "y", user="g1", log=lambda m: None)
