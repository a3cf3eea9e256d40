"""Framework adapters (pipeline/integrations/), each called exactly as its framework calls it: TRL 1.16's
``_calculate_rewards`` (dataset columns, G consecutive completions, log_extra; async detection; pickling),
OpenRLHF's ``--reward.remote_url file.py`` (loaded from its path), verl's naive reward manager kwargs. Every reward
equals ``RewardModel.rewards`` on the same rows and users to 1e-6."""

from __future__ import annotations

import asyncio
import importlib.util
import pickle
from collections import defaultdict

import numpy as np
import pytest

from _serve import build_models, running
from _stage2 import patch_backend

G = 4
PROMPTS = ["question t1", "question t2", "question t3"]
USERS = [("criterion for g1", None), (None, "g1"), ("criterion for g0", "hedge")]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("integrations"))


@pytest.fixture(scope="module")
def server(models):
    from pipeline.route.score import RewardModel

    with pytest.MonkeyPatch.context() as mp:
        patch_backend(mp)
        with running(RewardModel.load(models["bundle"]), users_dir=models["users"]) as (url, _):
            yield url


def trl_inputs(conversational: bool) -> list[dict]:
    """GRPO batch rows: each prompt repeated G times (consecutive), with extra dataset columns."""
    rows = []
    for i, (p, (ctx, user)) in enumerate(zip(PROMPTS, USERS)):
        for g in range(G):
            c = f"answer attrs {0.3 * g - 0.5:.2f} {0.2 * i:.2f} 0.1"
            prompt = [{"role": "user", "content": p}] if conversational else p
            completion = [{"role": "assistant", "content": c}] if conversational else c
            rows.append(
                {
                    "prompt": prompt,
                    "completion": completion,
                    "completion_ids": [1, 2, 3],
                    "user_context": ctx,
                    "user": user,
                    "answer": f"gold {i}",
                    "difficulty": i,
                }  # fmt: skip
            )
    return rows


def call_like_trl(func, inputs):
    """TRL 1.16 GRPOTrainer._calculate_rewards, minus the trainer (sync or async functions)."""
    from trl.trainer.utils import is_async_callable

    prompts = [x["prompt"] for x in inputs]
    completions = [x["completion"] for x in inputs]
    completion_ids_list = [x["completion_ids"] for x in inputs]
    keys = [key for key in inputs[0] if key not in ["prompt", "completion", "completion_ids"]]
    reward_kwargs = {key: [example[key] for example in inputs] for key in keys}
    reward_kwargs["trainer_state"] = object()
    logged = defaultdict(list)
    reward_kwargs["log_extra"] = lambda column, values: logged[column].extend(values)
    reward_kwargs["log_metric"] = lambda name, value: None
    if is_async_callable(func):
        out = asyncio.run(
            func(prompts=prompts, completions=completions, completion_ids=completion_ids_list, **reward_kwargs)
        )
    else:
        out = func(prompts=prompts, completions=completions, completion_ids=completion_ids_list, **reward_kwargs)
    return out, dict(logged)


def expected(models, inputs):
    from pipeline.route.score import RewardModel

    rm = RewardModel.load(models["bundle"])
    users = {u: rm.load_user(models["users"] / f"{u}.json") for _, u in USERS if u}
    text = [x["completion"] if isinstance(x["completion"], str) else x["completion"][0]["content"] for x in inputs]
    prompt = [x["prompt"] if isinstance(x["prompt"], str) else x["prompt"][0]["content"] for x in inputs]
    return rm.rewards(
        prompt, text, context=[x["user_context"] for x in inputs], user=[users.get(x["user"]) for x in inputs]
    )


@pytest.mark.parametrize("conversational", [False, True])
@pytest.mark.parametrize("mode", ["in-process", "http", "async"])
def test_trl_reward_functions(models, server, monkeypatch, mode, conversational):
    from trl.trainer.utils import get_callable_name, is_async_callable

    from pipeline.integrations.trl import async_reward_func, reward_func

    built = patch_backend(monkeypatch)
    if mode == "in-process":
        func = reward_func(models["bundle"], "user_context", "user", users=models["users"])
    elif mode == "http":
        func = reward_func(server, context_column="user_context", user_column="user")
    else:
        func = async_reward_func(server, context_column="user_context", user_column="user")
    assert is_async_callable(func) == (mode == "async")
    assert get_callable_name(func) in ("micro_reward", "micro_reward_async")
    func = pickle.loads(pickle.dumps(func))  # async GRPO pickles reward functions
    inputs = trl_inputs(conversational)
    got, logged = call_like_trl(func, inputs)
    exp = expected(models, inputs)
    assert isinstance(got, list) and len(got) == len(PROMPTS) * G and all(isinstance(r, float) for r in got)
    np.testing.assert_allclose(got, exp["reward"], rtol=1e-6, atol=1e-6)
    assert sorted(logged) == ["micro_head_0", "micro_head_1"]
    np.testing.assert_allclose(logged["micro_head_1"], exp["per_head"][:, 1], rtol=1e-6, atol=1e-6)
    if mode == "in-process":
        # each prompt's G completions share one gate feature: the prompts embedded once per (context, prompt)
        texts = [t for c in built[0].calls for t in c]  # built[0]: the adapter's own model
        assert len(texts) == len(set(texts))
        state = pickle.dumps(func)
        assert len(state) < 2000 and b"RewardModel" not in state  # the model is not pickled, only its path


def test_trl_without_a_context_column_uses_the_user_column_only(models, monkeypatch):
    from pipeline.integrations.trl import reward_func

    patch_backend(monkeypatch)
    func = reward_func(models["bundle"], context_column="missing", user_column="user", users=models["users"])
    inputs = [x | {"user": "g1"} for x in trl_inputs(False)]
    got, _ = call_like_trl(func, inputs)
    np.testing.assert_allclose(got, expected(models, [x | {"user_context": None} for x in inputs])["reward"], rtol=1e-6)


def load_openrlhf_file():
    """As OpenRLHF loads ``--reward.remote_url reward_func.py``: from its path, then ``reward_func``."""
    import pipeline.integrations.openrlhf as mod

    spec = importlib.util.spec_from_file_location("reward_func", mod.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.reward_func


@pytest.mark.parametrize("where", ["url", "model"])
def test_openrlhf_reward_file(models, server, monkeypatch, where):
    import torch

    patch_backend(monkeypatch)
    monkeypatch.delenv("MICRO_REWARD_URL", raising=False)
    if where == "url":
        monkeypatch.setenv("MICRO_REWARD_URL", server)
    else:
        monkeypatch.setenv("MICRO_MODEL", str(models["bundle"]))
        monkeypatch.setenv("MICRO_USERS", str(models["users"]))
    reward_func = load_openrlhf_file()
    inputs = trl_inputs(False)
    queries = [x["prompt"] + x["completion"] + "<|im_end|>" for x in inputs]
    labels = [{"context": x["user_context"], "user": x["user"]} if x["user"] else x["user_context"] for x in inputs]
    out = reward_func(queries, [x["prompt"] for x in inputs], labels)
    exp = expected(models, inputs)
    assert isinstance(out["rewards"], torch.Tensor) and out["rewards"].shape == (len(inputs),)
    np.testing.assert_allclose(out["rewards"].numpy(), exp["reward"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["scores"].numpy(), 1 / (1 + np.exp(-exp["reward"])), rtol=1e-5)
    np.testing.assert_allclose(out["extra_logs"]["micro_head_0"].numpy(), exp["per_head"][:, 0], rtol=1e-5, atol=1e-5)
    empty = reward_func([], [], [])
    assert empty["rewards"].shape == (0,)


def test_verl_compute_score_with_the_naive_managers_kwargs(models, server):
    from pipeline.integrations.verl import compute_score, compute_score_sync

    inputs = trl_inputs(False)
    exp = expected(models, inputs)
    for i, x in enumerate(inputs):
        extra_info = {"prompt": x["prompt"], "user_context": x["user_context"], "user": x["user"], "index": i,
                      "num_turns": 2, "rollout_reward_scores": {}}  # fmt: skip
        kw = dict(
            data_source="dsp", solution_str=x["completion"] + "</s>", ground_truth=x["answer"], extra_info=extra_info
        )
        res = asyncio.run(compute_score(**kw, url=server))
        assert set(res) == {"score", "micro_head_0", "micro_head_1"}
        np.testing.assert_allclose(res["score"], exp["reward"][i], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(res["micro_head_1"], exp["per_head"][i, 1], rtol=1e-6, atol=1e-6)
        if i < 2:
            assert compute_score_sync(**kw, url=server) == res


def test_verl_errors_name_what_is_missing(server, monkeypatch):
    from pipeline.errors import MicroError
    from pipeline.integrations.verl import compute_score

    monkeypatch.delenv("MICRO_REWARD_URL", raising=False)
    with pytest.raises(MicroError, match="reward_kwargs.url"):
        asyncio.run(compute_score("d", "x", None, {"prompt": "q"}))
    with pytest.raises(MicroError, match="extra_info has no 'prompt'"):
        asyncio.run(compute_score("d", "x", None, {}, url=server))
    with pytest.raises(MicroError, match="HTTP 422"):
        asyncio.run(compute_score("d", "answer", None, {"prompt": "q", "user": "nobody"}, url=server))
