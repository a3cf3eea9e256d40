"""The bad-request corpus of `micro serve`: every case is a 4xx whose JSON names the field (and row), and the server
answers the next request (health and a good request) afterwards. Also `micro serve`'s own option errors."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from _serve import build_models, running
from _stage2 import make_bundle, patch_backend, run_cli, synthetic_rows

Q, P = "question xanswer attrs 1 0 0", "question x"
GOOD_ITEM = {"prompt": "question x", "response": "answer attrs 1 0 0", "context": "criterion for g1"}

# (endpoint, body (a dict → JSON, bytes → raw), status, field, row)
CASES = [
    # /get_reward: the body
    ("/get_reward", b"{not json", 400, "body", None),
    ("/get_reward", b"", 400, "body", None),
    ("/get_reward", b"\xff\xfe", 400, "body", None),
    ("/get_reward", b"[1, 2]", 422, "body", None),
    ("/get_reward", b'"text"', 422, "body", None),
    ("/get_reward", b"null", 422, "body", None),
    ("/get_reward", {"prompts": [P], "labels": [None]}, 422, "query", None),
    ("/get_reward", {"query": [Q], "labels": [None]}, 422, "prompts", None),
    ("/get_reward", {"query": Q, "prompts": [P]}, 422, "query", None),
    ("/get_reward", {"query": [Q], "prompts": P}, 422, "prompts", None),
    ("/get_reward", {"query": [Q], "prompts": [P], "labels": "criterion"}, 422, "labels", None),
    ("/get_reward", {"query": [Q], "prompts": [P], "labels": [None], "extra": 1}, 422, "extra", None),
    # length mismatches
    ("/get_reward", {"query": [Q, Q], "prompts": [P], "labels": [None, None]}, 422, "prompts", None),
    ("/get_reward", {"query": [Q], "prompts": [P], "labels": [None, None]}, 422, "labels", None),
    ("/get_reward", {"query": [Q], "prompts": [P, P]}, 422, "prompts", None),
    # wrong types in a row
    ("/get_reward", {"query": [Q, 3], "prompts": [P, P]}, 422, "query", 1),
    ("/get_reward", {"query": [Q, None], "prompts": [P, P]}, 422, "query", 1),
    ("/get_reward", {"query": [Q], "prompts": [["x"]]}, 422, "prompts", 0),
    ("/get_reward", {"query": [Q], "prompts": [" "]}, 422, "prompts", 0),
    ("/get_reward", {"query": [Q], "prompts": [P], "labels": [3]}, 422, "labels", 0),
    ("/get_reward", {"query": [Q], "prompts": [P], "labels": [[1]]}, 422, "labels", 0),
    ("/get_reward", {"query": [Q], "prompts": [P], "labels": [{"ctx": "a"}]}, 422, "labels", 0),
    ("/get_reward", {"query": [Q], "prompts": [P], "labels": [{"context": 5}]}, 422, "labels.context", 0),
    ("/get_reward", {"query": [Q], "prompts": [P], "labels": [{"user": ["g1"]}]}, 422, "labels.user", 0),
    # prompt/query mismatch, empty response, unknown user, missing context
    ("/get_reward", {"query": [Q, "other text"], "prompts": [P, P]}, 422, "query", 1),
    ("/get_reward", {"query": [P], "prompts": [P]}, 422, "query", 0),
    ("/get_reward", {"query": [P + "</s>"], "prompts": [P]}, 422, "query", 0),
    ("/get_reward", {"query": [P + "  <|im_end|><|endoftext|>"], "prompts": [P]}, 422, "query", 0),
    ("/get_reward", {"query": [Q, Q], "prompts": [P, P], "labels": ["c", {"user": "nobody"}]}, 422, "labels.user", 1),
    ("/get_reward", {"query": [Q, Q], "prompts": [P, P], "labels": ["criterion for g0", None]}, 422, "labels", 1),
    ("/get_reward", {"query": [Q], "prompts": [P], "labels": [{}]}, 422, "labels", 0),
    # over the row limit
    ("/get_reward", {"query": [Q] * 9, "prompts": [P] * 9}, 413, "query", None),
    # /v1/rewards
    ("/v1/rewards", b"{", 400, "body", None),
    ("/v1/rewards", b"[]", 422, "body", None),
    ("/v1/rewards", {}, 422, "items", None),
    ("/v1/rewards", {"items": {"prompt": "x"}}, 422, "items", None),
    ("/v1/rewards", {"items": [GOOD_ITEM], "other": 1}, 422, "other", None),
    ("/v1/rewards", {"items": [GOOD_ITEM, "row"]}, 422, "items", 1),
    ("/v1/rewards", {"items": [GOOD_ITEM | {"score": 1}]}, 422, "items", 0),
    ("/v1/rewards", {"items": [{"response": "answer"}]}, 422, "items.prompt", 0),
    ("/v1/rewards", {"items": [GOOD_ITEM | {"prompt": 3}]}, 422, "items.prompt", 0),
    ("/v1/rewards", {"items": [GOOD_ITEM | {"prompt": ""}]}, 422, "items.prompt", 0),
    ("/v1/rewards", {"items": [GOOD_ITEM | {"prompt": []}]}, 422, "items.prompt", 0),
    ("/v1/rewards", {"items": [GOOD_ITEM | {"prompt": [{"role": "user"}]}]}, 422, "items.prompt", 0),
    ("/v1/rewards", {"items": [GOOD_ITEM | {"prompt": [{"role": 1, "content": "x"}]}]}, 422, "items.prompt", 0),
    ("/v1/rewards", {"items": [GOOD_ITEM, {"prompt": "x"}]}, 422, "items.response", 1),
    ("/v1/rewards", {"items": [GOOD_ITEM | {"response": None}]}, 422, "items.response", 0),
    ("/v1/rewards", {"items": [GOOD_ITEM | {"response": " \n"}]}, 422, "items.response", 0),
    ("/v1/rewards", {"items": [GOOD_ITEM | {"context": 1}]}, 422, "items.context", 0),
    ("/v1/rewards", {"items": [GOOD_ITEM | {"user": 1}]}, 422, "items.user", 0),
    ("/v1/rewards", {"items": [GOOD_ITEM, GOOD_ITEM | {"user": "nobody"}]}, 422, "items.user", 1),
    ("/v1/rewards", {"items": [GOOD_ITEM, GOOD_ITEM | {"context": None}]}, 422, "items", 1),
    ("/v1/rewards", {"items": [GOOD_ITEM] * 9}, 413, "items", None),
    # the body over the byte limit (declared and streamed)
    ("/v1/rewards", {"items": [GOOD_ITEM | {"response": "x" * 5000}]}, 413, "body", None),
    ("/get_reward", {"query": [P + "y" * 5000], "prompts": [P]}, 413, "body", None),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from pipeline.route.score import RewardModel

    models = build_models(tmp_path_factory.mktemp("serve_bad"))
    with pytest.MonkeyPatch.context() as mp:
        patch_backend(mp)
        rm = RewardModel.load(models["bundle"])
        with running(rm, users_dir=models["users"], max_rows=8, max_body_bytes=4096) as (url, _):
            yield url


def test_corpus_is_big_enough():
    assert len(CASES) >= 40


@pytest.mark.parametrize("endpoint, body, status, field, row", CASES, ids=[f"{i}" for i in range(len(CASES))])
def test_bad_request(server, endpoint, body, status, field, row):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(server + endpoint, content=raw, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    data = r.json()
    assert data["field"] == field and data["row"] == row, data
    where = f"{field}[{row}]" if row is not None else field
    assert data["error"].startswith(f"{where}: "), data
    assert httpx.get(server + "/health", timeout=10).json() == {"status": "ok"}
    good = httpx.post(server + "/v1/rewards", json={"items": [GOOD_ITEM]}, timeout=30)
    assert good.status_code == 200 and len(good.json()["items"]) == 1


def test_chunked_body_over_the_limit(server):
    """No Content-Length (a streamed body): the limit still holds."""

    def chunks():
        yield b'{"items": [{"prompt": "q", "response": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}]}'

    r = httpx.post(server + "/v1/rewards", content=chunks(), timeout=30)
    assert r.status_code == 413 and r.json()["field"] == "body"


def test_unknown_path_and_method(server):
    assert httpx.get(server + "/get_reward", timeout=10).status_code == 405
    assert httpx.get(server + "/nope", timeout=10).status_code == 404


def test_option_errors(tmp_path, monkeypatch, capsys):
    bundle = tmp_path / "missing"
    code, _, err = run_cli(monkeypatch, capsys, "serve", bundle, "--host", "0.0.0.0")
    assert code == 2 and err.count("\n") == 1 and "--host 0.0.0.0 is not a loopback address" in err, err
    code, _, err = run_cli(monkeypatch, capsys, "serve", bundle, "--scores", "logit")
    assert code == 2 and err == "error: --scores must be raw or sigmoid, got 'logit'\n", err
    code, _, err = run_cli(monkeypatch, capsys, "serve", bundle, "--max-batch", "0")
    assert code == 2 and err == "error: --max-batch must be >= 1, got 0\n", err
    code, _, err = run_cli(monkeypatch, capsys, "serve", bundle, "--device", "tpu")
    assert code == 2 and err == "error: --device must be one of auto | cpu | cuda | cuda:N, got 'tpu'\n", err
    code, _, err = run_cli(monkeypatch, capsys, "serve", bundle)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "missing" in err, err


def test_busy_port_is_one_error_line_before_loading(tmp_path, monkeypatch, capsys):
    """Two servers on one port: the second says so in one line (exit 2), without loading the model."""
    from pipeline.serve import command

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    loaded = []
    monkeypatch.setattr(command, "bind", _spy(command.bind, loaded))
    try:
        patch_backend(monkeypatch)
        bundle = make_bundle(tmp_path, synthetic_rows(n_per_group=20, topic=True))
        capsys.readouterr()
        from pipeline.route.score import RewardModel

        monkeypatch.setattr(RewardModel, "load", classmethod(lambda cls, *a, **k: loaded.append("model") or 1 / 0))
        code, _, err = run_cli(monkeypatch, capsys, "serve", bundle, "--port", port)
    finally:
        holder.close()
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: --host 127.0.0.1 --port {port}: cannot listen (Address already in use)"), err
    assert loaded == [("127.0.0.1", port)]  # bound (and refused) before any model load


def _spy(fn, record):
    def wrapped(host, port):
        record.append((host, port))
        return fn(host, port)

    return wrapped
