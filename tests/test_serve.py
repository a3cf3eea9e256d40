"""`micro serve` (pipeline/serve/): a real uvicorn server on 127.0.0.1 in a thread, the fake AttrBackend bundle.

Every answer is compared with ``RewardModel.rewards`` (and `micro score`) on the same rows and user to 1e-6:
a context-gated bundle under a context, the routed bundle, an adapted profile with a residual, a Hedge profile.
"""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import polars as pl
import pytest

from _serve import build_models, running
from _stage2 import patch_backend, score_cli, write_jsonl

PROMPTS = ["question x", "question y", "question z"]
RESPONSES = ["answer attrs 1 0 0", "answer attrs -1 0.5 0", "answer attrs 0 2 0.3"]
CTX = "criterion for g1"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("serve"))


@pytest.fixture
def rm_for(monkeypatch):
    """rm_for(bundle) → (RewardModel with AttrBackend, list of backends built)."""
    from pipeline.route.score import RewardModel

    built = patch_backend(monkeypatch)
    return lambda bundle: (RewardModel.load(bundle), built)


def expected(rm, models, user=None, context=None, prompts=PROMPTS, responses=RESPONSES):
    u = rm.load_user(models["users"] / f"{user}.json") if user else None
    return rm.rewards(prompts, responses, context=context, user=u)


def v1(url, items, **kw):
    return httpx.post(f"{url}/v1/rewards", json={"items": items}, timeout=30, **kw)


def check(items_out, exp):
    np.testing.assert_allclose([it["reward"] for it in items_out], exp["reward"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose([it["per_head"] for it in items_out], exp["per_head"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose([it["weights"] for it in items_out], exp["weights"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose([it["residual"] for it in items_out], exp["residual"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("which", ["bundle", "routed"])
def test_v1_rewards_equal_reward_model_under_a_context(models, rm_for, which):
    rm, _ = rm_for(models[which])
    with running(rm) as (url, _):
        r = v1(url, [{"prompt": p, "response": a, "context": CTX} for p, a in zip(PROMPTS, RESPONSES)])
        assert r.status_code == 200, r.text
        check(r.json()["items"], expected(rm, models, context=CTX))
        # message-list prompts are the same prompts
        msgs = [
            {"prompt": [{"role": "user", "content": p}], "response": a, "context": CTX}
            for p, a in zip(PROMPTS, RESPONSES)
        ]
        check(v1(url, msgs).json()["items"], expected(rm, models, context=CTX))


@pytest.mark.parametrize("user", ["g1", "g0", "hedge"])
def test_users_equal_reward_model_and_micro_score(models, rm_for, user, tmp_path, monkeypatch, capsys):
    rm, _ = rm_for(models["bundle"])
    exp = expected(rm, models, user=user)
    if user == "g1":
        assert np.abs(exp["residual"]).max() > 1e-3  # the adapted profile's residual is in play
    with running(rm, users_dir=models["users"]) as (url, _):
        r = v1(url, [{"prompt": p, "response": a, "user": user} for p, a in zip(PROMPTS, RESPONSES)])
        assert r.status_code == 200, r.text
        check(r.json()["items"], exp)
        info = httpx.get(f"{url}/info").json()
        assert info["users"] == ["g0", "g1", "g2", "hedge"] and info["n_heads"] == 2
        assert info["fingerprint_id"] == rm.meta["fingerprint_id"]
        assert info["rows_scored"] == len(PROMPTS) and info["scoring_calls"] >= 1 and info["scoring_seconds"] > 0
        got = [it["reward"] for it in r.json()["items"]]
    rows = write_jsonl([{"prompt": p, "response": a} for p, a in zip(PROMPTS, RESPONSES)], tmp_path / "rows.jsonl")
    code, _, err = score_cli(
        monkeypatch, capsys, models["bundle"], rows, tmp_path / "r.parquet", "--user", models["users"] / f"{user}.json"
    )
    assert code == 0, err
    np.testing.assert_allclose(got, pl.read_parquet(tmp_path / "r.parquet")["reward"].to_numpy(), rtol=1e-6, atol=1e-6)


def test_one_request_mixing_users_and_contexts(models, rm_for):
    rm, _ = rm_for(models["bundle"])
    spec = [("g1", None), (None, "criterion for g0"), ("hedge", None), (None, CTX), ("g1", None), (None, CTX)]
    prompts = [f"question m{i}" for i in range(len(spec))]
    responses = [f"answer attrs {i / 3:.3f} {1 - i / 4:.3f} 0.1" for i in range(len(spec))]
    with running(rm, users_dir=models["users"]) as (url, _):
        items = [
            {"prompt": p, "response": a} | ({"user": u} if u else {"context": c})
            for p, a, (u, c) in zip(prompts, responses, spec)
        ]
        out = v1(url, items).json()["items"]
    for i, (u, c) in enumerate(spec):
        e = expected(rm, models, user=u, context=c, prompts=[prompts[i]], responses=[responses[i]])
        check([out[i]], e)


def test_openrlhf_payload_replay(models, rm_for):
    """OpenRLHF's remote RM calls: one sample per request, empty lists, string / object / empty labels."""
    rm, _ = rm_for(models["bundle"])
    with running(rm, users_dir=models["users"], context="criterion for g0", scores="sigmoid") as (url, _):

        def post(body):
            return httpx.post(f"{url}/get_reward", json=body, timeout=30)

        empty = post({"query": [], "prompts": [], "labels": []})
        assert empty.status_code == 200 and empty.json()["rewards"] == [] and empty.json()["scores"] == []
        g0 = {"context": "criterion for g0"}
        cases = [(CTX, {"context": CTX}), ({"user": "g1"}, {"user": "g1"}), ("", g0), (None, g0),
                 ({"context": CTX, "user": "hedge"}, {"user": "hedge"})]  # fmt: skip
        for label, meaning in cases:
            for p, a, eos in zip(PROMPTS, RESPONSES, ("</s>", "<|eot_id|>", "<|im_end|><|endoftext|>")):
                r = post({"query": [p + a + eos], "prompts": [p], "labels": [label]})
                assert r.status_code == 200, (label, r.text)
                body = r.json()
                e = expected(rm, models, prompts=[p], responses=[a], **meaning)
                np.testing.assert_allclose(body["rewards"], e["reward"], rtol=1e-6, atol=1e-6)
                np.testing.assert_allclose(body["scores"], 1 / (1 + np.exp(-e["reward"])), rtol=1e-6)
                logs = body["extra_logs"]
                assert sorted(logs) == ["residual", "reward_head_0", "reward_head_1", "weight_head_0", "weight_head_1"]
                np.testing.assert_allclose(logs["reward_head_1"], e["per_head"][:, 1], rtol=1e-6, atol=1e-6)
                np.testing.assert_allclose(logs["weight_head_0"], e["weights"][:, 0], rtol=1e-6, atol=1e-6)
        # labels absent altogether: the server's --context; several rows at once, parallel lists back
        r = post({"query": [p + a for p, a in zip(PROMPTS, RESPONSES)], "prompts": PROMPTS})
        e = expected(rm, models, context="criterion for g0")
        np.testing.assert_allclose(r.json()["rewards"], e["reward"], rtol=1e-6, atol=1e-6)
        assert len(r.json()["extra_logs"]["residual"]) == 3


def test_empty_label_without_context_on_a_context_gate_is_422(models, rm_for):
    rm, _ = rm_for(models["bundle"])
    with running(rm) as (url, _):
        r = httpx.post(
            f"{url}/get_reward", json={"query": ["question xanswer"], "prompts": ["question x"], "labels": [None]}
        )
        assert r.status_code == 422 and r.json()["row"] == 0 and r.json()["field"] == "labels", r.text
        assert "context" in r.json()["error"]


def test_64_concurrent_one_sample_clients_are_few_embedder_calls(models, rm_for):
    rm, built = rm_for(models["bundle"])
    n = 64
    prompts = [f"question batch {i}" for i in range(n)]
    responses = [f"answer attrs {i / n:.4f} 0.5 0" for i in range(n)]
    with running(rm, max_batch=64, max_wait_ms=200) as (url, app):
        before = len(built[0].calls)
        calls_before = app.state.batcher.calls

        async def client(i):
            async with httpx.AsyncClient(timeout=30) as c:
                r = await c.post(
                    f"{url}/get_reward",
                    json={"query": [prompts[i] + responses[i]], "prompts": [prompts[i]], "labels": [CTX]},
                )
                return r.json()["rewards"][0]

        async def main():
            return await asyncio.gather(*(client(i) for i in range(n)))

        got = asyncio.run(main())
        scoring_calls = app.state.batcher.calls - calls_before
        embed_calls = built[0].calls[before:]
    assert len(built) == 1
    assert scoring_calls <= 4, scoring_calls  # 64 requests coalesced into a few scoring calls
    assert len(embed_calls) <= scoring_calls and sum(map(len, embed_calls)) == 2 * n  # each text embedded once
    np.testing.assert_allclose(
        got, expected(rm, models, context=CTX, prompts=prompts, responses=responses)["reward"], rtol=1e-6, atol=1e-6
    )


def test_api_key_and_reload(models, rm_for, tmp_path):
    import shutil

    rm, _ = rm_for(models["bundle"])
    users = tmp_path / "users"
    users.mkdir()
    with running(rm, users_dir=users, api_key="sekret") as (url, _):
        item = [{"prompt": "question x", "response": "answer attrs 1 0 0", "user": "g1"}]
        assert httpx.get(f"{url}/health").status_code == 200
        r = v1(url, item)
        assert r.status_code == 401 and r.json()["field"] == "authorization"
        assert v1(url, item, headers={"Authorization": "Bearer wrong"}).status_code == 401
        auth = {"Authorization": "Bearer sekret"}
        r = v1(url, item, headers=auth)
        assert r.status_code == 422 and r.json()["field"] == "items.user" and r.json()["row"] == 0
        for f in models["users"].glob("g1.*"):
            shutil.copy(f, users / f.name)
        r = httpx.post(f"{url}/users/reload", headers=auth)
        assert r.status_code == 200 and r.json()["users"] == ["g1"], r.text
        check(
            v1(url, item, headers=auth).json()["items"],
            expected(rm, models, user="g1", prompts=["question x"], responses=["answer attrs 1 0 0"]),
        )
        (users / "bad.json").write_text("{not json")
        r = httpx.post(f"{url}/users/reload", headers=auth)
        assert r.status_code == 422 and "bad.json" in r.json()["error"]
        assert httpx.get(f"{url}/info", headers=auth).json()["users"] == ["g1"]  # the users before stay served
