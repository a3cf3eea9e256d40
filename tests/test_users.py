"""The Stage-2 user model (pipeline/route/users.py) and the scoring contract of pipeline/route/score.py.

Old-format files in tests/fixtures/profiles_v1 were written by the code before UserModel (generate_v1.py.txt, run
from that checkout); expected.json holds what that code's RewardModel returned on rows.jsonl.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from _stage2 import AttrBackend, patch_backend
from pipeline.errors import MicroError
from pipeline.route.users import ForeignProfile, UserModel, bundle_id, save_user

FIX = Path(__file__).parent / "fixtures" / "profiles_v1"


@pytest.fixture()
def fix(tmp_path, monkeypatch):
    """A copy of the v1 fixtures, the fake embedder patched in, the persistent cache under tmp_path."""
    built = patch_backend(monkeypatch)
    d = tmp_path / "v1"
    shutil.copytree(FIX, d)
    rows = [json.loads(line) for line in (d / "rows.jsonl").read_text().splitlines()]
    return d, rows, built


def _rm(d, tmp_path, **kw):
    from pipeline.route.score import RewardModel

    return RewardModel.load(d / "bundle", cache_dir=tmp_path / "cache", **kw)


def _close(out, want, tol=1e-6):
    for k, v in want.items():
        np.testing.assert_allclose(out[k], np.asarray(v), rtol=0, atol=tol, err_msg=k)


@pytest.mark.parametrize("name", ["hedge", "adapted"])
def test_old_profiles_score_as_before(fix, tmp_path, name):
    d, rows, _ = fix
    want = json.loads((d / "expected.json").read_text())[name]
    rm = _rm(d, tmp_path)
    with pytest.warns(ForeignProfile):
        user = rm.load_user(d / ("hedge_g1.json" if name == "hedge" else "adapted_g2.json"))
    out = rm.rewards([r["prompt"] for r in rows], [r["response"] for r in rows], user=user)
    if "residual" not in want:
        want["residual"] = [0.0] * len(rows)
    _close(out, want)
    assert (name == "adapted") == (user.v is not None and np.abs(out["residual"]).max() > 0.01)


@pytest.mark.parametrize("name", ["gate", "context", "routed"])
def test_bundles_score_as_before(fix, tmp_path, name):
    from pipeline.route.score import RewardModel

    d, rows, _ = fix
    want = json.loads((d / "expected.json").read_text())[name]
    want.setdefault("residual", [0.0] * len(rows))
    P, R = [r["prompt"] for r in rows], [r["response"] for r in rows]
    if name == "routed":
        out = RewardModel.load(d / "routed", cache_dir=tmp_path / "c").rewards(P, R, context="criterion for g0")
        _close(out, want)
        # the routed bundle as a user of its source bundle: the same rewards
        rm = _rm(d, tmp_path)
        out2 = rm.rewards(P, R, context="criterion for g0", user=rm.load_user(d / "routed"))
        _close(out2, want)
        return
    out = _rm(d, tmp_path).rewards(P, R, context="criterion for g1" if name == "context" else None)
    _close(out, want)


@pytest.mark.parametrize("kind", ["weights", "adapted", "gate", "routed"])
def test_round_trip_every_kind(fix, tmp_path, kind):
    d, rows, _ = fix
    rm = _rm(d, tmp_path)
    K, dim = rm.n_heads, rm.model.coef_.shape[1]
    rng = np.random.default_rng(1)
    gate = {k: np.asarray(v, dtype=np.float32).astype(np.float64) for k, v in rm.model.gate_params_.items()}
    um = {
        "weights": UserModel.weights(rng.dirichlet(np.ones(K)), user="w"),
        "adapted": UserModel(
            "adapted",
            rng.standard_normal(K),
            0.7,
            gate,
            "prompt",
            rng.standard_normal(dim).astype(np.float32).astype(np.float64),
            "criterion for g2",
            "logit",
            "a",
        ),
        "gate": UserModel("gate", np.zeros(K), 1.0, gate, "prompt", user="g"),
        "routed": UserModel("routed", np.zeros(K), 1.0, gate, "context", context="criterion for g0", user="r"),
    }[kind]
    path = save_user(tmp_path / "u" / f"{kind}.json", um, rm.meta, d / "bundle", {"source": "test"})
    back = rm.load_user(path)
    assert back.kind == kind and back.user == um.user and back.bundle_id == bundle_id(d / "bundle")
    assert json.loads(path.read_text())["version"] == 2
    np.testing.assert_array_equal(back.head_weights, um.head_weights)
    assert back.gate_multiplier == um.gate_multiplier and back.context == um.context
    P, R = [r["prompt"] for r in rows], [r["response"] for r in rows]
    _close(rm.rewards(P, R, user=back), {k: v for k, v in rm.rewards(P, R, user=um).items()}, tol=1e-12)


def test_per_row_mixing_equals_separate_calls(fix, tmp_path):
    d, rows, built = fix
    rm = _rm(d, tmp_path)
    with pytest.warns(ForeignProfile):
        users = [rm.load_user(d / "hedge_g1.json"), rm.load_user(d / "adapted_g2.json"), rm.load_user(d / "routed")]
    P, R = [r["prompt"] for r in rows], [r["response"] for r in rows]
    row_users = [users[i % 3] if i % 4 else None for i in range(len(P))]
    row_ctx = [None if i % 3 else "criterion for g1" for i in range(len(P))]
    n_calls = len(built[0].calls) if built else 0
    mixed = rm.rewards(P, R, context=row_ctx, user=row_users)
    assert len(built) == 1 and len(built[0].calls) - n_calls == 1  # one embedder pass for every text
    for i in range(len(P)):
        one = rm.rewards([P[i]], [R[i]], context=row_ctx[i], user=row_users[i])
        for k in one:
            np.testing.assert_allclose(mixed[k][i], one[k][0], rtol=0, atol=1e-9, err_msg=f"{k} row {i}")


def test_repeated_prompt_embedded_once(fix, tmp_path):
    d, _, built = fix
    rm = _rm(d, tmp_path)
    G = 8
    for step in range(3):  # GRPO: the same prompt group, fresh completions each step
        out = rm.rewards(
            ["question grpo"] * G, [f"answer attrs {step} {j} 0" for j in range(G)], context="criterion for g2"
        )
        assert out["reward"].shape == (G,)
    texts = built[0].embedded
    prompt_texts = [t for t in texts if "assistant" not in t.lower()]
    assert len(prompt_texts) == 1 and len(built[0].calls) == 3 and len(texts) == 3 * G + 1


def test_no_cache_writes_by_default(fix, tmp_path):
    from pipeline.route.score import RewardModel

    d, _, _ = fix
    cache = tmp_path / "cache"
    RewardModel.load(d / "bundle", cache_dir=cache, cache_writes=True).rewards(["seed"], ["answer attrs 1 0 0"])

    def snapshot():
        return {str(p.relative_to(cache)): p.read_bytes() for p in sorted(cache.rglob("*")) if p.is_file()}

    before = snapshot()
    assert before  # a real cache with a shard and a manifest
    rm = RewardModel.load(d / "bundle", cache_dir=cache)
    n = 10_000
    out = rm.rewards([f"q {i % 50}" for i in range(n)], [f"fresh {i} attrs {i % 7} 0 0" for i in range(n)])
    assert out["reward"].shape == (n,) and np.isfinite(out["reward"]).all()
    assert snapshot() == before
    # cached vectors are still read: the seed row is not embedded again
    rm2 = RewardModel.load(d / "bundle", cache_dir=cache)
    rm2.rewards(["seed"], ["answer attrs 1 0 0"])
    assert rm2.featurizer.calls == 0


def test_foreign_cache_path_not_created(fix, tmp_path, monkeypatch):
    from pipeline.route.score import RewardModel

    d, rows, _ = fix
    home = tmp_path / "home"
    monkeypatch.setattr("pipeline.embed.embed.DEFAULT_CACHE", home / ".cache/micro/embeddings")
    meta = json.loads((d / "bundle/model.json").read_text())
    assert not Path(meta["embedder"]["cache_dir"]).exists()  # recorded on the machine that made the fixture
    rm = RewardModel.load(d / "bundle", cache_writes=True)
    rm.rewards([rows[0]["prompt"]], [rows[0]["response"]])
    assert rm.featurizer.cache_root == home / ".cache/micro/embeddings"
    assert not Path(meta["embedder"]["cache_dir"]).exists() and any((home / ".cache").rglob("*.parquet"))


def test_nan_tensor_and_foreign_bundle_are_errors(fix, tmp_path):
    from safetensors.numpy import load_file, save_file

    d, _, _ = fix
    rm = _rm(d, tmp_path)
    t = load_file(str(d / "adapted_g2.safetensors"))
    t["v"][3] = np.nan
    save_file(t, str(d / "adapted_g2.safetensors"))
    with pytest.raises(MicroError, match=r"adapted_g2.safetensors: tensor 'v' has 1 NaN"):
        rm.load_user(d / "adapted_g2.json")
    # a v2 profile made for bundle A, loaded by bundle B with the same K and embedder
    other = tmp_path / "other"
    shutil.copytree(d / "bundle", other)
    t = load_file(str(other / "model.safetensors"))
    t["coef"] = t["coef"] * 1.01  # a refit: same K, same embedder, other heads
    save_file(t, str(other / "model.safetensors"))
    meta = json.loads((other / "model.json").read_text())
    meta["trained_on"] = "/elsewhere"  # paths are not part of the identity
    (other / "model.json").write_text(json.dumps(meta))
    moved = tmp_path / "moved"
    shutil.copytree(d / "bundle", moved)
    assert bundle_id(moved) == bundle_id(d / "bundle") != bundle_id(other)
    p = save_user(tmp_path / "w.json", UserModel.weights(np.ones(rm.n_heads) / rm.n_heads), rm.meta, d / "bundle")
    from pipeline.route.score import RewardModel

    with pytest.raises(MicroError, match="field 'bundle_id'.*another bundle"):
        RewardModel.load(other, cache_dir=tmp_path / "c").load_user(p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rm.load_user(p)  # its own bundle: no warning


def test_per_row_argument_errors(fix, tmp_path):
    d, rows, _ = fix
    rm = _rm(d, tmp_path)
    with pytest.raises(MicroError, match="context: 1 entries for 2 rows"):
        rm.rewards(["a", "b"], ["x", "y"], context=["c"])
    with pytest.raises(MicroError, match="user: row 1"):
        rm.rewards(["a", "b"], ["x", "y"], user=[None, "alice"])
    assert rm.info()["n_heads"] == rm.n_heads and rm.info()["version"] == 2
    assert isinstance(AttrBackend.vector("x"), np.ndarray)


def test_empty_call(fix, tmp_path):
    d, _, built = fix
    rm = _rm(d, tmp_path)
    out = rm.rewards([], [], user=[])
    assert {k: v.shape for k, v in out.items()} == {
        "per_head": (0, 3),
        "weights": (0, 3),
        "reward": (0,),
        "residual": (0,),
    }


def test_concurrent_calls_equal_sequential(fix, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    d, rows, _ = fix
    rm = _rm(d, tmp_path)
    with pytest.warns(ForeignProfile):
        users = [None, rm.load_user(d / "hedge_g1.json"), rm.load_user(d / "adapted_g2.json")]
    P, R = [r["prompt"] for r in rows], [r["response"] for r in rows]
    want = [rm.rewards(P, R, context="criterion for g0", user=u)["reward"] for u in users]
    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda i: rm.rewards(P, R, context="criterion for g0", user=users[i % 3]), range(24)))
    for i, out in enumerate(got):
        np.testing.assert_allclose(out["reward"], want[i % 3], rtol=0, atol=1e-12)
