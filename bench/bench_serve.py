"""Benchmark `micro serve` against one direct batched ``RewardModel.rewards`` call on the same fresh rows.

    python bench/bench_serve.py                      # bundled DSP sample, bundled MiniLM, CPU, N=1024
    python bench/bench_serve.py --n 512 --decoder    # a small random LlamaForCausalLM (transformers backend)

A model is fitted once on the bundled DSP sample into --out (prepare → embed → fit, as `make demo`; reused when
there). The N rows are DSP prompts with fresh responses (never embedded before, as RL rollouts are), each under its
domain's context. Every mode embeds them anew (scoring writes no cache; each mode has its own RewardModel):

(a) direct   one ``RewardModel.rewards(prompts, responses, context=[...])`` call of all N rows.
(b) server   `micro serve` (a subprocess) and 64 concurrent one-sample clients on POST /get_reward (OpenRLHF).
(c) grpo     POST /v1/rewards requests of 8 prompts × 8 completions (TRL GRPO-shaped), 4 in flight.
(d) verl     the verl adapter's async ``compute_score``, one call per rollout, 64 in flight (the client users run).

Each of (b), (c), (d) has its own server, so no mode finds another's prompts in its LRU.

Shared cores drift (the same call runs 1.5x faster or slower minutes apart), so the modes are measured in
--rounds interleaved rounds (order a b c d, then d c b a, ...), each on its own fresh rows (disjoint prompts: no
mode finds a prompt in its LRU from an earlier round). The servers stay up across rounds; (a) loads a fresh
RewardModel each round. Prints each round's rows/s and ratios b/a, c/a, d/a, their medians (target b/a >= 0.8 on
CPU MiniLM), p50/p99 request latency, rows per server scoring call, the share of the wall time each server spent
in scoring calls, and the cache folder's size before/after (unchanged: scoring does not write the cache). Every
server reward is checked against (a)'s to 1e-4.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.embed.backends.device import DEVICE, DEVICE_HELP, check_device  # noqa: E402
from pipeline.errors import MicroError  # noqa: E402


def device_arg(text: str) -> str:
    try:
        return check_device(text)
    except MicroError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def tiny_llama(folder: Path) -> Path:
    """A small random LlamaForCausalLM (and a tokenizer: the bundled MiniLM's) saved with save_pretrained."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from pipeline.embed.backends.st import default_model_path

    if (folder / "config.json").exists():
        return folder
    tok = AutoTokenizer.from_pretrained(default_model_path())
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512)  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def build_model(out: Path, decoder: bool, device: str) -> Path:
    """prepare → embed → fit on the bundled DSP sample (skipped when ``out/model`` exists)."""
    from pipeline.data.prepare import prepare
    from pipeline.demo import SAMPLE
    from pipeline.embed.backends import get_backend
    from pipeline.embed.embed import embed_pairs
    from pipeline.fit.fit import fit_run

    if (out / "model" / "model.json").exists():
        return out / "model"
    out.mkdir(parents=True, exist_ok=True)
    prepare("dsp", [SAMPLE], out / "pairs.parquet")
    if decoder:
        backend = get_backend("transformers", str(tiny_llama(out / "llama")), device=device)
    else:
        backend = get_backend("sentence-transformers", device=device)
    try:
        embed_pairs(out / "pairs.parquet", out / "run", backend, cache_dir=out / "cache")
    finally:
        backend.close()
    fit_run(out / "run", k=4, out=out / "model", random_state=0)
    return out / "model"


def fresh_rows(out: Path, n: int, round_: int = 0) -> tuple[list, list, list]:
    """(prompts, responses, contexts): DSP prompts (text) with responses never seen, each under its context;
    round ``round_`` takes the next n/8 prompts (8 responses per prompt: GRPO-shaped groups are consecutive)."""
    import pyarrow.parquet as pq

    t = pq.read_table(out / "run" / "pairs.parquet").to_pylist()
    prompts, responses, contexts = [], [], []
    first = round_ * (-(-n // 8))
    for i in range(n):
        r = t[(first + i // 8) % len(t)]
        prompts.append(r["prompt"][-1]["content"])
        # the marker leads: the embedder keeps a response's start when it truncates, so every row stays fresh
        responses.append(f"(rollout {i} of benchmark round {round_}) {(r['chosen'], r['rejected'])[i % 2]}")
        contexts.append(r["context"])
    return prompts, responses, contexts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values, q) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))] * 1000


async def clients(url, bodies, concurrency, path):
    """(seconds, latencies, answers in body order) of POSTing ``bodies`` with ``concurrency`` in flight, on one
    aiohttp session (keep-alive): the load generator must not be what is measured, and on 2 shared cores an
    ``httpx.AsyncClient`` with 64 connections tops out at ~100 requests/s, below the scorer's rate."""
    lat, answers = [], [None] * len(bodies)
    sem = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency), timeout=timeout) as c:

        async def one(i, body):
            async with sem:
                t = time.perf_counter()
                async with c.post(url + path, json=body) as r:
                    assert r.status == 200, await r.text()
                    answers[i] = await r.json()
                lat.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))
    return time.perf_counter() - t0, lat, answers


@contextmanager
def serving(model: Path, max_wait_ms: float | None, device: str):
    """`micro serve MODEL --device DEVICE` in a subprocess on a free port, warmed up (64 requests); yields its URL."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-c", "import sys, cli; sys.exit(cli.main())", "serve", str(model), "--port", str(port)]
    cmd += ["--device", device]
    cmd += [] if max_wait_ms is None else ["--max-wait-ms", str(max_wait_ms)]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        warm = [{"query": [f"warm {i} up"], "prompts": [f"warm {i}"], "labels": ["warm"]} for i in range(64)]
        asyncio.run(clients(url, warm, 64, "/get_reward"))
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def direct(model: Path, rows: tuple, device: str) -> tuple[float, dict]:
    """(seconds, result) of one ``RewardModel.rewards`` call of all ``rows`` on a fresh, warmed-up model."""
    from pipeline.route.score import RewardModel

    rm = RewardModel.load(model, device=device)
    try:
        rm.rewards(["warm up"], ["warm up the embedder"], context="warm up")
        t = time.perf_counter()
        res = rm.rewards(rows[0], rows[1], context=rows[2])
        return time.perf_counter() - t, res
    finally:
        rm.close()


def one_sample(url, rows) -> tuple[float, list, np.ndarray]:
    """(b): every row its own /get_reward request (OpenRLHF), 64 in flight → (seconds, latencies, rewards)."""
    bodies = [{"query": [p + r], "prompts": [p], "labels": [c]} for p, r, c in zip(*rows)]
    t, lat, answers = asyncio.run(clients(url, bodies, 64, "/get_reward"))
    return t, lat, np.array([a["rewards"][0] for a in answers])


def grpo(url, rows) -> tuple[float, list, np.ndarray]:
    """(c): /v1/rewards requests of 64 rows (8 prompts × 8 completions), 4 in flight → (seconds, latencies, rewards)."""
    items = [{"prompt": p, "response": r, "context": c} for p, r, c in zip(*rows)]
    bodies = [{"items": items[i : i + 64]} for i in range(0, len(items), 64)]
    t, lat, answers = asyncio.run(clients(url, bodies, 4, "/v1/rewards"))
    return t, lat, np.array([it["reward"] for a in answers for it in a["items"]])


def verl(url, rows) -> tuple[float, list, np.ndarray]:
    """(d): ``pipeline.integrations.verl.compute_score`` per row, 64 awaited at once (its own server)."""
    from pipeline.integrations.verl import compute_score

    lat = []

    async def run():
        sem = asyncio.Semaphore(64)

        async def one(p, r, c):
            async with sem:
                t = time.perf_counter()
                out = await compute_score("dsp", r, None, {"prompt": p, "user_context": c}, url=url)
                lat.append(time.perf_counter() - t)
                return out["score"]

        t0 = time.perf_counter()
        got = await asyncio.gather(*(one(*row) for row in zip(*rows)))
        return time.perf_counter() - t0, got

    t, got = asyncio.run(run())
    return t, lat, np.array(got)


def counts(url) -> np.ndarray:
    """(scoring calls, rows scored, seconds in scoring calls) of the server so far."""
    info = httpx.get(url + "/info", timeout=10).json()
    return np.array([info["scoring_calls"], info["rows_scored"], info["scoring_seconds"]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024, help="rows scored by each mode in each round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians are printed)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_serve")
    ap.add_argument("--decoder", action="store_true", help="a small random Llama (transformers backend)")
    ap.add_argument("--device", default=DEVICE, type=device_arg, help=DEVICE_HELP + " (bundle, direct, servers)")
    ap.add_argument("--max-wait-ms", type=float, default=None, help="the servers' --max-wait-ms (default: theirs)")
    args = ap.parse_args()
    out = args.out / ("llama" if args.decoder else "minilm")
    model = build_model(out, args.decoder, args.device)
    cache = out / "cache"
    size0 = folder_bytes(cache)
    n, times, lat = args.n, {m: [] for m in "abcd"}, {m: [] for m in "bcd"}
    with (
        serving(model, args.max_wait_ms, args.device) as url_b,
        serving(model, args.max_wait_ms, args.device) as url_c,
        serving(model, args.max_wait_ms, args.device) as url_d,
    ):
        urls = {"b": url_b, "c": url_c, "d": url_d}
        before = {m: counts(u) for m, u in urls.items()}
        for j in range(args.rounds):
            rows = fresh_rows(out, n, j + 1)  # round 0's prompts warmed nothing: the servers warm on other text
            got = {}
            for mode in "abcd" if j % 2 == 0 else "dcba":
                if mode == "a":
                    ta, ref = direct(model, rows, args.device)
                    times["a"].append(ta)
                    continue
                t, lt, rewards = {"b": one_sample, "c": grpo, "d": verl}[mode](urls[mode], rows)
                times[mode].append(t)
                lat[mode] += lt
                got[mode] = rewards
            for mode, rewards in got.items():
                np.testing.assert_allclose(rewards, ref["reward"], rtol=1e-4, atol=1e-4, err_msg=f"({mode}) round {j}")
            ratios = ", ".join(f"{m}/a {ta / times[m][-1]:.2f}" for m in "bcd")
            print(f"round {j + 1}: (a) {n / ta:.1f} rows/s, {ratios}", flush=True)
        calls, scored, busy = {}, {}, {}
        for m in "bcd":
            calls[m], scored[m], busy[m] = counts(urls[m]) - before[m]
    size1 = folder_bytes(cache)
    ratio = {m: statistics.median(a / b for a, b in zip(times["a"], times[m])) for m in "bcd"}
    rate = {m: statistics.median(n / t for t in times[m]) for m in "abcd"}
    print(f"backend: {'random Llama (transformers)' if args.decoder else 'MiniLM (sentence-transformers)'}, "
          f"device {args.device}, N = {n} fresh rows per round, {args.rounds} rounds (medians)")  # fmt: skip
    print("| mode | rows/s | ratio to (a) | p50 ms | p99 ms | rows per scoring call | server busy |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| (a) one direct `RewardModel.rewards` call | {rate['a']:.1f} | 1.00 | | | {n} | |")
    names = {
        "b": "(b) 64 one-sample clients, /get_reward",
        "c": "(c) 8 prompts × 8 completions, /v1/rewards",
        "d": "(d) verl `compute_score` per rollout, 64 awaited",
    }
    for m, name in names.items():
        print(f"| {name} | {rate[m]:.1f} | {ratio[m]:.2f} | {percentile(lat[m], 0.5):.0f} | "
              f"{percentile(lat[m], 0.99):.0f} | {scored[m] / max(1, calls[m]):.1f} | "
              f"{busy[m] / sum(times[m]):.0%} |")  # fmt: skip
    for m in "bcd":
        print(f"per-round {m}/a: {', '.join(f'{a / b:.2f}' for a, b in zip(times['a'], times[m]))}")
    print(f"cache folder: {size0} bytes before, {size1} bytes after")


if __name__ == "__main__":
    main()
