"""Load and faults on a live `micro serve` (127.0.0.1, the fake backend), bounded in count and time: 5,000 requests
with 5 % malformed, clients that hang up mid-request, an over-limit body, a second server on the same port. The
server stays up, its memory stays bounded, and every good answer equals a separate RewardModel on the same rows."""

from __future__ import annotations

import asyncio
import random
import socket

import httpx
import numpy as np
import pytest

from _serve import running
from _stage2 import make_bundle, patch_backend, run_cli, synthetic_rows

N_REQUESTS, N_ROWS, CONCURRENCY = 5000, 300, 32


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_load")
    return make_bundle(root, synthetic_rows(n_per_group=60, topic=True), gate_input="context", k=3)


def rows(n):
    rng = np.random.default_rng(7)
    out = []
    for i in range(n):
        a = rng.standard_normal(3)
        out.append((f"question load {i}", f"answer attrs {a[0]:.3f} {a[1]:.3f} {a[2]:.3f}", f"criterion for g{i % 3}"))
    return out


def malformed(rng, i):
    bad = [
        b"{not json",
        b'{"query": "x", "prompts": ["x"]}',
        b'{"query": ["abc"], "prompts": ["zzz"], "labels": ["c"]}',
        b'{"query": ["q"], "prompts": ["q"], "labels": ["c"]}',
        b'{"query": ["qa"], "prompts": ["q"], "labels": [7]}',
        b'{"query": ["qa", "qb"], "prompts": ["q"]}',
    ]
    return bad[i % len(bad)]


def test_load_and_faults(bundle, tmp_path, monkeypatch, capsys):
    from pipeline.route.score import RewardModel

    patch_backend(monkeypatch)
    data = rows(N_ROWS)
    ref = RewardModel.load(bundle).rewards(
        [p for p, _, _ in data], [a for _, a, _ in data], context=[c for *_, c in data]
    )
    rng = random.Random(0)
    plan = [(rng.random() < 0.05, rng.randrange(N_ROWS)) for _ in range(N_REQUESTS)]
    rm = RewardModel.load(bundle)
    with running(rm, max_body_bytes=2048, max_wait_ms=2) as (url, app):
        port = int(url.rsplit(":", 1)[1])

        async def main():
            sem = asyncio.Semaphore(CONCURRENCY)
            limits = httpx.Limits(max_connections=CONCURRENCY)
            async with httpx.AsyncClient(timeout=60, limits=limits) as client:

                async def one(k, bad, j):
                    async with sem:
                        if bad:
                            body = malformed(rng, k)
                        else:
                            p, a, c = data[j]
                            body = httpx.Request(
                                "POST", url, json={"query": [p + a + "</s>"], "prompts": [p], "labels": [c]}
                            ).content
                        r = await client.post(
                            f"{url}/get_reward", content=body, headers={"content-type": "application/json"}
                        )
                        return k, r.status_code, r.json()

                return await asyncio.gather(*(one(k, bad, j) for k, (bad, j) in enumerate(plan)))

        rss0 = rss_mb()
        results = asyncio.run(main())
        n_bad = 0
        for k, status, body in results:
            bad, j = plan[k]
            if bad:
                n_bad += 1
                assert 400 <= status < 500 and body["field"], body
            else:
                assert status == 200, body
                np.testing.assert_allclose(body["rewards"], [ref["reward"][j]], rtol=1e-6, atol=1e-6)
                np.testing.assert_allclose(
                    body["extra_logs"]["weight_head_2"], [ref["weights"][j, 2]], rtol=1e-6, atol=1e-6
                )
        assert 150 < n_bad < 350  # ~5 % malformed
        assert app.state.batcher.calls < N_REQUESTS - n_bad  # requests were coalesced

        # clients hanging up: mid-body, and right after sending a whole request
        for partial in (True, False):
            for _ in range(20):
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                body = b'{"query": ["question load 1answer"], "prompts": ["question load 1"], "labels": ["c"]}'
                head = (
                    "POST /get_reward HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                )
                s.sendall(head.encode() + (body[:20] if partial else body))
                s.close()
        over = httpx.post(f"{url}/v1/rewards", json={"items": [{"prompt": "q", "response": "x" * 4000}]}, timeout=30)
        assert over.status_code == 413 and over.json()["field"] == "body"
        # still serving, and the same answers
        p, a, c = data[5]
        r = httpx.post(f"{url}/get_reward", json={"query": [p + a], "prompts": [p], "labels": [c]}, timeout=30)
        np.testing.assert_allclose(r.json()["rewards"], [ref["reward"][5]], rtol=1e-6, atol=1e-6)
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        # a second server on the same port: one error line, exit 2, the first keeps serving
        capsys.readouterr()
        code, _, err = run_cli(monkeypatch, capsys, "serve", bundle, "--port", port)
        assert code == 2 and err.count("\n") == 1 and "Address already in use" in err, err
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        assert rss_mb() - rss0 < 300, (rss0, rss_mb())  # bounded: no per-request growth
