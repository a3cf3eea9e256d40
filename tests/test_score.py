"""Scoring (pipeline/score.py, `micro score`): per-head and mixed rewards under a context, a gate or a profile.

Synthetic, no model: see tests/_stage2.py. Expected values are recomputed from AttrBackend's vectors and the
bundle's safetensors arrays read directly, not through the model class.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from _stage2 import AttrBackend, make_bundle, patch_backend, run_cli, score_cli, synthetic_rows, write_jsonl
from pipeline.embed.backends.base import render_plain, with_context
from pipeline.errors import MicroError

PROMPTS = ["question one", "question two", "question three"]
RESPONSES = ["answer attrs 1.5 0 0", "answer attrs -1 0.5 0", "answer attrs 0 2 0.3"]
CONTEXT = "criterion for g1"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """(root, prompt-gate bundle, static-gate bundle)."""
    root = tmp_path_factory.mktemp("score")
    rows = synthetic_rows(n_per_group=60, topic=True)
    gated = make_bundle(root, rows, gate_input="prompt", name="gated")
    static = make_bundle(root, rows, name="static", baseline="static", max_iter=300)
    return root, gated, static


def arrays(bundle):
    from safetensors.numpy import load_file

    t = load_file(str(bundle / "model.safetensors"))
    return t["coef"].astype(np.float64), {k[5:]: v.astype(np.float64) for k, v in t.items() if k.startswith("gate.")}


def vec(text):
    return AttrBackend.vector(text).astype(np.float64)


def per_head_expected(bundle, prompts=PROMPTS, responses=RESPONSES):
    coef, _ = arrays(bundle)
    feats = np.stack(
        [
            vec(render_plain([{"role": "user", "content": p}, {"role": "assistant", "content": r}]))
            for p, r in zip(prompts, responses)
        ]
    )
    return feats @ coef.T


def test_rewards_with_context(bundles, monkeypatch):
    from pipeline.route.score import RewardModel

    root, gated, _ = bundles
    built = patch_backend(monkeypatch)
    rm = RewardModel.load(gated)
    out = rm.rewards(PROMPTS, RESPONSES, context=CONTEXT)
    per_head = per_head_expected(gated)
    np.testing.assert_allclose(out["per_head"], per_head, rtol=1e-5, atol=1e-6)
    x = np.stack([vec(render_plain(with_context([{"role": "user", "content": p}], CONTEXT))) for p in PROMPTS])
    w = rm.model.gate_weights(x)
    np.testing.assert_allclose(out["weights"], w, rtol=1e-6)
    assert out["weights"].shape == (3, 3) and np.allclose(out["weights"].sum(axis=1), 1.0)
    np.testing.assert_allclose(out["reward"], (w * per_head).sum(axis=1), rtol=1e-5, atol=1e-6)
    # the context changes the weights (the gate reads context+prompt features), the prompt alone differs
    plain = rm.rewards(PROMPTS, RESPONSES)
    xp = np.stack([vec(render_plain([{"role": "user", "content": p}])) for p in PROMPTS])
    np.testing.assert_allclose(plain["weights"], rm.model.gate_weights(xp), rtol=1e-6)
    assert not np.allclose(plain["weights"], out["weights"])
    np.testing.assert_allclose(plain["per_head"], out["per_head"])
    # message-list prompts are the same prompts; the gate features are in the in-memory LRU, the responses are
    # embedded again (scoring writes no persistent cache by default), one backend was built
    msgs = [[{"role": "user", "content": p}] for p in PROMPTS]
    again = rm.rewards(msgs, RESPONSES, context=CONTEXT)
    np.testing.assert_allclose(again["reward"], out["reward"])
    assert len(built) == 1 and len(built[0].embedded) == 15  # 3 x 3 responses, 3 context+prompts, 3 prompts
    assert len(built[0].calls) == 3  # one embedder pass per call
    rm.close()
    assert built[0].closed == 1
    with pytest.raises(MicroError, match="2 prompts but 3 responses"):
        rm.rewards(PROMPTS[:2], RESPONSES)
    with pytest.raises(MicroError, match="prompt must be a string"):
        rm.rewards([1, 2, 3], RESPONSES)


def test_ten_thousand_fresh_rows_leave_the_cache_unchanged(bundles, monkeypatch, tmp_path):
    """A training loop's rollouts (10,000 fresh rows, GRPO groups of 8) are scored without touching the persistent
    cache; each distinct prompt is embedded once; with cache_writes the same scoring does write."""
    import shutil

    from pipeline.route.score import RewardModel

    root, gated, _ = bundles
    cache = root / "cache"

    def snapshot(folder):
        return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}

    before = snapshot(cache)
    assert any(name.endswith(".parquet") for name in before)
    built = patch_backend(monkeypatch)
    rm = RewardModel.load(gated)
    rng = np.random.default_rng(3)
    for step in range(10):  # 10 loop steps of 1,000 rollouts
        idx = range(step * 1000, (step + 1) * 1000)
        prompts = [f"question fresh {i // 8}" for i in idx]
        responses = [f"rollout {i} attrs {a:.3f} {b:.3f} 0" for i, (a, b) in zip(idx, rng.standard_normal((1000, 2)))]
        out = rm.rewards(prompts, responses, context=CONTEXT)
        assert out["reward"].shape == (1000,) and np.isfinite(out["reward"]).all()
    assert rm.featurizer.calls == 10  # one embedder pass per call
    rm.close()
    assert snapshot(cache) == before  # not one file added, grown or rewritten (nor a probe made and removed)
    assert len(built) == 1
    assert len(built[0].embedded) == len(set(built[0].embedded)) == 10_000 + 1250  # rollouts + one per prompt
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    writer = RewardModel.load(gated, cache_dir=copy, cache_writes=True)
    writer.rewards(prompts[:8], responses[:8], context=CONTEXT)
    writer.close()
    assert snapshot(copy) != snapshot(cache)  # the check above can see a write


def test_scoring_reads_a_cache_on_s3_without_writing_it(bundles, s3_bucket, monkeypatch):
    """`--cache-dir s3://...` at scoring: cached vectors come from the bucket (they were embedded there, as
    `micro embed --cache-dir s3://...` does), nothing is written or probed there."""
    from cache.remote import filesystem
    from pipeline.embed.embed import embed_texts, open_store
    from pipeline.route.score import RewardModel

    _, gated, _ = bundles
    url = f"{s3_bucket}/cache"
    texts = [render_plain([{"role": "user", "content": p}, {"role": "assistant", "content": r}])
             for p, r in zip(PROMPTS, RESPONSES)]  # fmt: skip
    embed_texts(open_store(url, AttrBackend(), "float32"), AttrBackend(), texts)
    fs = filesystem(url)[0]

    def listing():
        fs.invalidate_cache()
        return sorted((p, i["size"]) for p, i in fs.find(s3_bucket, detail=True).items())

    before = listing()
    assert len(before) >= 2  # a shard and its manifest fragment
    built = patch_backend(monkeypatch)
    rm = RewardModel.load(gated, cache_dir=url)
    out = rm.rewards(PROMPTS, RESPONSES, context=CONTEXT)
    rm.close()
    np.testing.assert_allclose(out["per_head"], per_head_expected(gated), rtol=1e-5, atol=1e-6)
    assert not set(texts) & set(built[0].embedded)  # the responses came from the bucket
    assert len(built[0].embedded) == 3  # the 3 context+prompt texts alone
    assert listing() == before


def test_device_reaches_the_embedder_and_auto_is_the_default(bundles, monkeypatch, capsys, tmp_path):
    from pipeline.route.score import RewardModel

    _, gated, _ = bundles
    built = patch_backend(monkeypatch)
    assert "device" not in RewardModel.load(gated).featurizer.backend.options  # the backend's own default: auto
    assert RewardModel.load(gated, device="cpu").featurizer.backend.options["device"] == "cpu"
    rows = write_jsonl([{"prompt": p, "response": r} for p, r in zip(PROMPTS, RESPONSES)], tmp_path / "rows.jsonl")
    code, _, err = score_cli(monkeypatch, capsys, gated, rows, tmp_path / "r.parquet", "--context", CONTEXT,
                             "--device", "CPU")  # fmt: skip
    assert code in (0, None), err
    assert len(built) == 3 and built[2].options["device"] == "cpu"  # micro score --device, spelled canonically


def test_static_gate_and_profile_weights(bundles, monkeypatch):
    from heads.profile import HedgeProfile
    from pipeline.route.score import RewardModel

    root, gated, static = bundles
    built = patch_backend(monkeypatch)
    rm = RewardModel.load(static)
    assert rm.model.gate_kind_ == "static"
    _, gate = arrays(static)
    responses = [r + " static" for r in RESPONSES]  # not cached yet
    out = rm.rewards(PROMPTS, responses, context=CONTEXT)
    assert set(gate) == {"logits"}
    w = np.exp(gate["logits"] - np.logaddexp.reduce(gate["logits"]))
    np.testing.assert_allclose(out["weights"], np.tile(w, (3, 1)), rtol=1e-6)
    np.testing.assert_allclose(
        w, json.loads((static / "model.json").read_text())["fitted"]["mixture_weights_"], rtol=1e-5
    )
    np.testing.assert_allclose(out["per_head"], per_head_expected(static, responses=responses), rtol=1e-5, atol=1e-6)
    assert len(built[0].embedded) == 3  # the responses only: a static gate reads no prompt

    from pipeline.route.users import UserModel

    prof = UserModel.weights(HedgeProfile(prior=[0.2, 0.3, 0.5]).weights_)
    res = RewardModel.load(gated).rewards(PROMPTS, RESPONSES, user=prof)
    np.testing.assert_allclose(res["weights"], np.tile([0.2, 0.3, 0.5], (3, 1)))
    np.testing.assert_allclose(res["reward"], res["per_head"] @ np.array([0.2, 0.3, 0.5]))


def test_read_score_input(tmp_path):
    from pipeline.route.score import read_score_input

    rows = [{"prompt": p, "response": r, "id": i} for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES))]
    df = pl.DataFrame(rows)
    paths = [
        write_jsonl(rows, tmp_path / "in.jsonl"),
        tmp_path / "in.csv",
        tmp_path / "in.parquet",
        tmp_path / "in.json",
    ]
    df.write_csv(paths[1])
    df.write_parquet(paths[2])
    paths[3].write_text(json.dumps(rows))
    for path in paths:
        prompts, responses, table = read_score_input(path)
        assert prompts == PROMPTS and responses == RESPONSES and table.column("id").to_pylist() == [0, 1, 2], path

    cases = {
        "nocol.jsonl": ('{"prompt": "q", "answer": "a"}\n', r"missing column 'response' \(have: prompt, answer\)"),
        "empty_resp.jsonl": ('{"prompt": "q", "response": "a"}\n{"prompt": "q", "response": "  "}\n', "row 1: empty"),
        "null_resp.jsonl": ('{"prompt": "q", "response": null}\n', "row 0: empty"),
        "empty_prompt.jsonl": ('{"prompt": "q", "response": "a"}\n{"prompt": "", "response": "a"}\n', "row 1: empty"),
        "in.txt": ("prompt,response\nq,a\n", "unsupported file type"),
        "broken.parquet": ("not parquet", "cannot be read"),
    }
    for name, (text, pattern) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(MicroError, match=pattern):
            read_score_input(tmp_path / name)
    with pytest.raises(MicroError, match="no such file"):
        read_score_input(tmp_path / "nope.jsonl")


def test_score_file_parquet_and_jsonl(bundles, tmp_path, monkeypatch):
    from pipeline.route.score import RewardModel, score_file

    root, gated, _ = bundles
    patch_backend(monkeypatch)
    inp = write_jsonl(
        [{"prompt": p, "response": r, "id": i} for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES))],
        tmp_path / "in.jsonl",
    )
    want = RewardModel.load(gated).rewards(PROMPTS, RESPONSES, context=CONTEXT)
    cols = ["prompt", "response", "id", "reward", "reward_head_0", "reward_head_1", "reward_head_2", "weights"]
    frames = {}
    for suffix, read in ((".parquet", pl.read_parquet), (".jsonl", pl.read_ndjson)):
        out = score_file(gated, inp, tmp_path / f"out{suffix}", context=CONTEXT)
        assert out == tmp_path / f"out{suffix}"
        df = frames[suffix] = read(out)
        assert df.columns == cols and df["id"].to_list() == [0, 1, 2]
        np.testing.assert_allclose(df["reward"].to_numpy(), want["reward"])
        np.testing.assert_allclose(df.select(cols[4:7]).to_numpy(), want["per_head"])
        np.testing.assert_allclose(np.array(df["weights"].to_list()), want["weights"])
    # re-scoring an output file under another context replaces its reward columns
    again = score_file(gated, tmp_path / "out.parquet", tmp_path / "again.jsonl", context="criterion for g2")
    df = pl.read_ndjson(again)
    assert df.columns == cols
    assert not np.allclose(np.array(df["weights"].to_list()), want["weights"])
    with pytest.raises(MicroError, match="must be a .parquet or .jsonl"):
        score_file(gated, inp, tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_cli_score(bundles, tmp_path, monkeypatch, capsys):
    root, gated, _ = bundles
    patch_backend(monkeypatch)
    inp = write_jsonl([{"prompt": p, "response": r} for p, r in zip(PROMPTS, RESPONSES)], tmp_path / "in.jsonl")
    out = tmp_path / "r.jsonl"
    code, _, err = score_cli(monkeypatch, capsys, gated, inp, out, "--context", CONTEXT)
    assert code == 0, err
    assert f"rewards written: {out}" in err and pl.read_ndjson(out).height == 3
    code, _, err = run_cli(
        monkeypatch, capsys, "score", gated, "-i", inp, "--context", CONTEXT, "--user", tmp_path / "p.json"
    )
    assert code == 2 and err == "error: give either --context or --user, not both\n"
    (tmp_path / "bad.jsonl").write_text('{"prompt": "q"}\n')
    code, _, err = run_cli(
        monkeypatch, capsys, "score", gated, "-i", tmp_path / "bad.jsonl", "-o", tmp_path / "o.parquet"
    )
    assert code == 2 and err.startswith("error: ") and "missing column 'response'" in err, err


def test_context_gated_bundle_needs_a_context(tmp_path_factory, monkeypatch):
    """The gate of a context bundle was fitted on context+prompt features: scoring without a context used to
    read prompt-only features silently."""
    from pipeline.route.score import RewardModel

    root = tmp_path_factory.mktemp("ctx")
    bundle = make_bundle(root, synthetic_rows(n_per_group=40, topic=True), gate_input="context", name="ctx")
    patch_backend(monkeypatch)
    rm = RewardModel.load(bundle)
    with pytest.raises(MicroError, match="pass --context TEXT"):
        rm.rewards(PROMPTS, RESPONSES)
    assert rm.rewards(PROMPTS, RESPONSES, context=CONTEXT)["reward"].shape == (3,)


def test_score_input_columns_from_every_row(tmp_path):
    """A column that first appears after row 100 is kept (polars used to infer the schema from 100 rows)."""
    from pipeline.route.score import read_score_input

    rows = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(150)]
    rows[120]["note"] = "keep me"
    _, _, table = read_score_input(write_jsonl(rows, tmp_path / "in.jsonl", drop=()))
    assert table.column("note").to_pylist()[120] == "keep me" and table.num_rows == 150


def _fixture_copy(tmp_path):
    import shutil
    from pathlib import Path

    d = tmp_path / "v1"
    shutil.copytree(Path(__file__).parent / "fixtures" / "profiles_v1", d)
    return d


@pytest.mark.parametrize("user", ["adapted_g2.json", "hedge_g1.json", "routed", None])
def test_score_cli_equals_old_behaviour_and_cache_flags(tmp_path, monkeypatch, capsys, user):
    """`micro score` on the version-1 fixtures gives the rewards the code before UserModel gave (1e-6); it reads
    the cache given by --cache-dir and writes it only with --cache-writes."""
    d = _fixture_copy(tmp_path)
    built = patch_backend(monkeypatch)
    want = json.loads((d / "expected.json").read_text())[
        {"adapted_g2.json": "adapted", "hedge_g1.json": "hedge", "routed": "routed", None: "gate"}[user]
    ]
    opts = ["--user", d / user] if user else []
    if user == "routed":
        opts += ["--context", "criterion for g0"]
    cache = tmp_path / "cache"
    code, _, err = score_cli(
        monkeypatch, capsys, d / "bundle", d / "rows.jsonl", tmp_path / "r.parquet", "--cache-dir", cache, *opts
    )
    assert code == 0, err
    df = pl.read_parquet(tmp_path / "r.parquet")
    np.testing.assert_allclose(df["reward"].to_numpy(), want["reward"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.stack(df["weights"].to_list()), want["weights"], rtol=0, atol=1e-6)
    assert ("residual" in df.columns) == (user == "adapted_g2.json")
    if "residual" in df.columns:
        np.testing.assert_allclose(df["residual"].to_numpy(), want["residual"], rtol=0, atol=1e-6)
    assert not cache.exists()  # read only: nothing was created
    meta = json.loads((d / "bundle" / "model.json").read_text())
    assert not Path(meta["embedder"]["cache_dir"]).exists()  # the foreign recorded cache is never created
    code, _, err = score_cli(
        monkeypatch,
        capsys,
        d / "bundle",
        d / "rows.jsonl",
        tmp_path / "r2.parquet",
        "--cache-dir",
        cache,
        "--cache-writes",
        *opts,
    )
    assert code == 0, err and any(cache.rglob("*.parquet"))
    n = len(built[-1].embedded)
    code, _, err = score_cli(
        monkeypatch, capsys, d / "bundle", d / "rows.jsonl", tmp_path / "r3.parquet", "--cache-dir", cache, *opts
    )
    assert code == 0 and built[-1].embedded == [] and n > 0  # every text came from the cache
    np.testing.assert_array_equal(pl.read_parquet(tmp_path / "r3.parquet")["reward"], df["reward"])


def test_route_cache_dir(tmp_path, monkeypatch, capsys):
    """`micro route --cache-dir` embeds the user data there; without it a foreign recorded cache is not created."""
    from _stage2 import route_cli

    d = _fixture_copy(tmp_path)
    patch_backend(monkeypatch)
    home = tmp_path / "home"
    monkeypatch.setattr("pipeline.embed.embed.DEFAULT_CACHE", home / "default")
    ud = write_jsonl(synthetic_rows(n_per_group=8, seed=5, prefix="r"), tmp_path / "ud.jsonl")
    code, _, err = route_cli(
        monkeypatch,
        capsys,
        d / "bundle",
        ud,
        tmp_path / "p1",
        "--online",
        "--user",
        "g0",
        "--cache-dir",
        tmp_path / "mine",
    )
    assert code == 0, err
    assert any((tmp_path / "mine").rglob("*.parquet")) and not (home / "default").exists()
    code, _, err = route_cli(monkeypatch, capsys, d / "bundle", ud, tmp_path / "p2", "--online", "--user", "g0")
    assert code == 0, err
    meta = json.loads((d / "bundle" / "model.json").read_text())
    assert any((home / "default").rglob("*.parquet")) and not Path(meta["embedder"]["cache_dir"]).exists()
    # the profile is bound to the bundle: it scores with it, without a warning
    prof = json.loads((tmp_path / "p2" / "g0.json").read_text())
    assert prof["version"] == 2 and prof["bundle_id"]
