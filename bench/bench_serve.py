"""Benchmark `micro serve` against one direct batched ``RewardModel.rewards`` call on the same fresh rows.

    python bench/bench_serve.py                      # bundled DSP sample, bundled MiniLM, CPU, N=1024
    python bench/bench_serve.py --n 512 --decoder    # a small random LlamaForCausalLM (transformers backend)

A model is fitted once on the bundled DSP sample into --out (prepare → embed → fit, as `make demo`; reused when
there). The N rows are DSP prompts with fresh responses (never embedded before, as RL rollouts are), each under its
domain's context. Every mode embeds them anew (scoring writes no cache; each mode has its own RewardModel):

(a) direct   one ``RewardModel.rewards(prompts, responses, context=[...])`` call of all N rows.
(b) server   `micro serve` (a subprocess) and 64 concurrent one-sample clients on POST /get_reward (OpenRLHF).
(c) grpo     POST /v1/rewards requests of 8 prompts × 8 completions (TRL GRPO-shaped), 4 in flight.

Prints rows/s of each, the ratios b/a and c/a (target b/a >= 0.8 on CPU MiniLM), p50/p99 request latency, and the
cache folder's size before/after (unchanged: scoring does not write the cache). Wall clock on shared cores is noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


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


def fresh_rows(out: Path, n: int) -> tuple[list, list, list]:
    """(prompts, responses, contexts): DSP prompts (text) with responses never seen, each under its context."""
    import pyarrow.parquet as pq

    t = pq.read_table(out / "run" / "pairs.parquet").to_pylist()
    prompts, responses, contexts = [], [], []
    for i in range(n):
        r = t[(i // 8) % len(t)]  # 8 responses per prompt (GRPO-shaped groups are consecutive)
        prompts.append(r["prompt"][-1]["content"])
        responses.append(f"{(r['chosen'], r['rejected'])[i % 2]} (rollout {i} of the benchmark)")
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
    lat = []
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency)) as c:

        async def one(body):
            async with sem:
                t = time.perf_counter()
                r = await c.post(url + path, json=body)
                lat.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text

        t0 = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
    return time.perf_counter() - t0, lat


@contextmanager
def serving(model: Path, max_wait_ms: float):
    """`micro serve MODEL` in a subprocess on a free port, warmed up (model loaded, 64 requests); yields its URL."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-c", "import sys, cli; sys.exit(cli.main())", "serve", str(model), "--port", str(port),
           "--max-batch", "64", "--max-wait-ms", str(max_wait_ms)]  # fmt: skip
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024, help="rows scored by each mode")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_serve")
    ap.add_argument("--decoder", action="store_true", help="a small random Llama (transformers backend)")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda")
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    args = ap.parse_args()
    out = args.out / ("llama" if args.decoder else "minilm")
    model = build_model(out, args.decoder, args.device)
    cache = out / "cache"
    prompts, responses, contexts = fresh_rows(out, args.n)
    size0 = folder_bytes(cache)

    from pipeline.route.score import RewardModel

    rm = RewardModel.load(model)
    rm.rewards(["warm up"], ["warm up the embedder"], context="warm up")
    t = time.perf_counter()
    direct = rm.rewards(prompts, responses, context=contexts)
    ta = time.perf_counter() - t
    rm.close()

    one = [{"query": [p + r], "prompts": [p], "labels": [c]} for p, r, c in zip(prompts, responses, contexts)]
    with serving(model, args.max_wait_ms) as url:
        tb, lat_b = asyncio.run(clients(url, one, 64, "/get_reward"))
        got = httpx.post(url + "/get_reward", json=one[0], timeout=60).json()["rewards"][0]
        assert abs(got - direct["reward"][0]) < 1e-4, (got, direct["reward"][0])
        info_b = httpx.get(url + "/info", timeout=10).json()
    rows = [{"prompt": p, "response": r, "context": c} for p, r, c in zip(prompts, responses, contexts)]
    groups = [{"items": rows[i : i + 64]} for i in range(0, len(rows), 64)]
    with serving(model, args.max_wait_ms) as url:  # a fresh server: nothing in its prompt LRU
        tc, lat_c = asyncio.run(clients(url, groups, 4, "/v1/rewards"))
        info_c = httpx.get(url + "/info", timeout=10).json()
    size1 = folder_bytes(cache)
    n = args.n
    print(f"backend: {'random Llama (transformers)' if args.decoder else 'MiniLM (sentence-transformers)'}, "
          f"device {args.device}, N = {n} fresh rows, K = {direct['per_head'].shape[1]}")  # fmt: skip
    print("| mode | rows/s | ratio to (a) | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|")
    print(f"| (a) one direct `RewardModel.rewards` call | {n / ta:.0f} | 1.00 | | |")
    print(f"| (b) 64 one-sample clients, /get_reward | {n / tb:.0f} | {ta / tb:.2f} | "
          f"{percentile(lat_b, 0.5):.0f} | {percentile(lat_b, 0.99):.0f} |")  # fmt: skip
    print(f"| (c) 8 prompts × 8 completions, /v1/rewards | {n / tc:.0f} | {ta / tc:.2f} | "
          f"{percentile(lat_c, 0.5):.0f} | {percentile(lat_c, 0.99):.0f} |")  # fmt: skip
    for name, info in (("b", info_b), ("c", info_c)):
        print(f"({name}) server scoring calls: {info['scoring_calls']}, embedder passes: {info['embedder_calls']}")
    print(f"cache folder: {size0} bytes before, {size1} bytes after")


if __name__ == "__main__":
    main()
