"""Benchmark the embedding cache on S3 (a moto server on 127.0.0.1) against the local cache.

    python bench/bench_remote.py                    # all three
    python bench/bench_remote.py --only lookup --n 100000

1. lookup  --n x --dim float32 vectors stored in 10 shards and compacted (one shard, as a run leaves it), then a
           fresh store + lookup of every key in shuffled order: S3 (ObjectStore: list fragments, stream shards)
           vs the local cache (EmbeddingStore) vs np.load of the same array from an .npy file. Median of --reps.
2. embed   embed_pairs of the bundled DSP sample (pipeline/sample/dsp_sample.json, every unique text) with the
           default sentence-transformers backend (MiniLM, loaded once, load excluded) into a fresh S3 prefix vs a
           fresh local cache, alternating, --reps each: throughput ratio S3 / local (target >= 0.9).
3. fit     fit_run (k=2, one init) on the two runs of (2): the remote run's time / the local run's (target <= 1.5).

moto keeps objects in the memory of this process and serves them over loopback HTTP, so (1) measures the
protocol and the code, not a real network; a real bucket adds latency per request (the reads are batched).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from _s3 import moto_s3, new_bucket  # noqa: E402
from cache.keys import text_keys  # noqa: E402
from cache.stores import open_store  # noqa: E402

SAMPLE = REPO / "pipeline/sample/dsp_sample.json"


def median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_lookup(bucket: str, tmp: Path, n: int, dim: int, reps: int) -> None:
    rng = np.random.default_rng(0)
    keys = text_keys("bench", [f"text {i}" for i in range(n)])
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    roots = {"s3": f"{bucket}/lookup", "local": tmp / "lookup-cache"}
    for root in roots.values():
        store = open_store(root, {"bench": 1}, "bench", "float32")
        for part in np.array_split(np.arange(n), 10):
            store.append(keys[part], vecs[part])
        store.compact()
    np.save(tmp / "vecs.npy", vecs)
    order = rng.permutation(n)
    times = {}
    for name, root in roots.items():

        def read(root=root):
            got = open_store(root, {"bench": 1}, "bench", "float32").lookup(keys[order])
            assert got.tobytes() == vecs[order].tobytes()

        times[name] = median_time(read, reps)
    times["np.load"] = median_time(lambda: np.load(tmp / "vecs.npy")[order], reps)
    print(f"lookup {n} x {dim} float32: " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in times.items()))
    print(
        f"  ratio s3 / local = {times['s3'] / times['local']:.2f}, s3 / np.load = {times['s3'] / times['np.load']:.2f}"
        f", local / np.load = {times['local'] / times['np.load']:.2f}"
    )


def bench_embed_and_fit(bucket: str, tmp: Path, reps: int) -> None:
    from pipeline.data.prepare import prepare
    from pipeline.embed.backends.st import SentenceTransformersBackend
    from pipeline.embed.embed import embed_pairs
    from pipeline.fit.fit import fit_run

    pairs = tmp / "pairs.parquet"
    prepare("dsp", [SAMPLE], pairs, verbose=False)
    backend = SentenceTransformersBackend()
    backend.load()
    rates: dict[str, list[float]] = {"local": [], "s3": []}
    runs = {}
    texts = 0
    for rep in range(reps):
        for where in ("local", "s3") if rep % 2 == 0 else ("s3", "local"):
            root = tmp / f"cache-{uuid.uuid4().hex}" if where == "local" else f"{bucket}/embed-{uuid.uuid4().hex}"
            runs[where] = tmp / f"run-{where}-{rep}"
            t0 = time.perf_counter()
            s = embed_pairs(pairs, runs[where], backend, cache_dir=root, log=lambda _m: None)
            seconds = time.perf_counter() - t0
            assert s.embedded == s.unique_texts
            texts = s.embedded
            rates[where].append(s.embedded / seconds)
    local, remote = statistics.median(rates["local"]), statistics.median(rates["s3"])
    print(
        f"embed {texts} unique DSP-sample texts (MiniLM, whole embed_pairs): local {local:.0f} texts/s, "
        f"s3 {remote:.0f} texts/s, ratio s3 / local = {remote / local:.2f} (target >= 0.9)"
    )
    fits = {w: median_time(lambda w=w: fit_run(runs[w], k=2, n_init=1), reps) for w in ("local", "s3")}
    print(
        f"fit k=2 on the run: local {fits['local']:.2f} s, s3 {fits['s3']:.2f} s, "
        f"ratio s3 / local = {fits['s3'] / fits['local']:.2f} (target <= 1.5)"
    )
    backend.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000, help="vectors in the lookup benchmark")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", default="lookup,embed", help="comma list of lookup, embed (embed includes fit)")
    args = ap.parse_args()
    only = set(args.only.split(","))
    with moto_s3() as endpoint, tempfile.TemporaryDirectory() as tmp:
        bucket = new_bucket(endpoint)
        if "lookup" in only:
            bench_lookup(bucket, Path(tmp), args.n, args.dim, args.reps)
        if "embed" in only or "fit" in only:
            bench_embed_and_fit(bucket, Path(tmp), args.reps)


if __name__ == "__main__":
    main()
