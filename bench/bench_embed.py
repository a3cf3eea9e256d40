"""Benchmark Stage 0 (`micro embed`) and the embedding cache against the plain library calls.

    python bench/bench_embed.py                # all three, 1,000 unique DSP texts, 100k x 1024 float16 load
    python bench/bench_embed.py --n 300 --only embed,rerun

1. embed   pipeline.embed.embed.embed_pairs (default sentence-transformers backend, fresh temp cache each time) vs
           SentenceTransformer.encode of the same unique rendered texts, same batch size.  The model is loaded
           once before either is timed (load excluded from both); each is timed --reps times, alternating
           (A B, B A, ...), and the ratio of the medians is printed.  Target <= 1.10.
2. rerun   the whole `micro embed` CLI process (subprocess, start-up and model load included) on a fresh cache,
           then again on the same pairs: texts embedded the second time (must be 0) and its time as a fraction
           of the first.  Target < 5 %.
3. load    100k x 1024 float16 vectors written with EmbeddingStore.append in 10 shards and compacted, then
           EmbeddingStore(...) + lookup of all keys in a shuffled order vs np.load of the same array from an
           .npy file (page cache warm for both).  Median of 5.  Target <= 2.

Pairs come from ``../shared/data/dsp/domain_specific_preference.test.json`` (``--dsp``) through
``pipeline.data.prepare.build_pairs("dsp", ...)``; the first pairs are taken until they hold --n unique texts.
Numbers are wall-clock on whatever machine runs this; on shared cores expect noise of several percent.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cache.store import EmbeddingStore, text_keys  # noqa: E402
from pipeline.data.schema import write_pairs  # noqa: E402
from pipeline.embed.embed import ROLES, embed_pairs, render_inputs  # noqa: E402

DSP = REPO.parent / "shared/data/dsp/domain_specific_preference.test.json"
MICRO = Path(sys.executable).parent / "micro"


def quiet(msg: str) -> None:
    pass


def unique_texts(table, backend) -> list[str]:
    inputs = render_inputs(table, backend)
    return sorted({t for r in ROLES for t in inputs[r] if t is not None})


def pair_slice(dsp: Path, n: int, backend):
    """The first pairs of the DSP table that hold at least ``n`` unique rendered texts."""
    from pipeline.data.prepare import build_pairs

    table = build_pairs("dsp", [dsp])[0]
    inputs = render_inputs(table, backend)
    seen: set[str] = set()
    for i in range(table.num_rows):
        seen.update(inputs[r][i] for r in ROLES if inputs[r][i] is not None)
        if len(seen) >= n:
            return table.slice(0, i + 1)
    return table


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# --- 1. embed_pairs vs SentenceTransformer.encode ------------------------------------------------------------------


def bench_embed(work: Path, pairs_path: Path, table, backend, reps: int) -> dict:
    texts = unique_texts(table, backend)
    model = backend.load()
    model.encode(texts[: backend.batch_size], batch_size=backend.batch_size)  # warm-up, not timed
    ours, ref, counter = [], [], [0]
    cpu = {id(ours): [], id(ref): []}

    inside = []  # seconds spent inside backend.embed per micro run: the rest is our own overhead
    real_embed = backend.embed

    def timed_embed(batch):
        t0 = time.perf_counter()
        try:
            return real_embed(batch)
        finally:
            inside[-1] += time.perf_counter() - t0

    backend.embed = timed_embed

    def run_ours():
        inside.append(0.0)
        counter[0] += 1
        d = work / f"embed{counter[0]}"
        s = embed_pairs(pairs_path, d / "run", backend, cache_dir=d / "cache", log=quiet)
        assert s.embedded == len(texts), (s.embedded, len(texts))

    def run_ref():
        model.encode(texts, batch_size=backend.batch_size, convert_to_numpy=True, show_progress_bar=False)

    for i in range(reps):
        order = [(ours, run_ours), (ref, run_ref)]
        for sink, fn in order if i % 2 == 0 else order[::-1]:
            c0 = time.process_time()  # CPU seconds of all threads: less sensitive to other jobs on shared cores
            sink.append(timed(fn))
            cpu[id(sink)].append(time.process_time() - c0)
            print(
                f"  embed rep {i}: {'micro' if sink is ours else 'encode'} {sink[-1]:.2f} s wall, "
                f"{cpu[id(sink)][-1]:.2f} s cpu",
                file=sys.stderr,
            )
    backend.embed = real_embed
    med = statistics.median
    overhead = [w - i for w, i in zip(ours, inside)]
    return {
        "overhead": overhead,
        "overhead_ratio": 1 + med(overhead) / med(ref),
        "texts": len(texts),
        "ours": ours,
        "ref": ref,
        "ratio": med(ours) / med(ref),
        "cpu_ours": cpu[id(ours)],
        "cpu_ref": cpu[id(ref)],
        "cpu_ratio": med(cpu[id(ours)]) / med(cpu[id(ref)]),
    }


def overhead_breakdown(work: Path, pairs_path: Path, table, backend) -> dict:
    """Time the non-model parts of embed_pairs on their own (no model: vectors are random)."""
    from pipeline.data.schema import read_pairs
    from pipeline.embed.embed import open_store

    out = {}
    out["read pairs"] = timed(lambda: read_pairs(pairs_path))
    t0 = time.perf_counter()
    inputs = render_inputs(table, backend)
    out["render"] = time.perf_counter() - t0
    texts = sorted({t for r in ROLES for t in inputs[r] if t is not None})
    t0 = time.perf_counter()
    keys = text_keys("bench", texts)
    out["hash"] = time.perf_counter() - t0
    out["token lengths"] = timed(lambda: backend.token_lengths(texts))
    st = open_store(work / "breakdown", backend, "float32")
    vecs = np.random.default_rng(0).standard_normal((len(texts), backend.dim)).astype(np.float32)
    step = backend.chunk_size

    def appends():
        for s in range(0, len(texts), step):
            st.append(keys[s : s + step], vecs[s : s + step])

    out[f"{-(-len(texts) // step)} shard appends"] = timed(appends)
    out["compact"] = timed(st.compact)
    return out


# --- 2. CLI first run vs cached rerun ------------------------------------------------------------------------------

SUMMARY = re.compile(r"unique texts (\d+) \| cache hits (\d+) \| newly embedded (\d+)")


def bench_rerun(work: Path, pairs_path: Path, batch_size: int) -> dict:
    cmd = [
        str(MICRO),
        "embed",
        str(pairs_path),
        "--out",
        str(work / "cli_run"),
        "--cache-dir",
        str(work / "cli_cache"),
        "--batch-size",
        str(batch_size),
    ]
    res = []
    for _ in range(2):
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        secs = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"micro embed failed ({r.returncode}):\n{r.stderr}")
        m = SUMMARY.search(" ".join(r.stderr.split()))
        res.append((secs, *map(int, m.groups())))
        print(
            f"  cli run: {secs:.2f} s, unique {m.group(1)}, hits {m.group(2)}, embedded {m.group(3)}", file=sys.stderr
        )
    (t1, u1, h1, e1), (t2, u2, h2, e2) = res
    return {
        "cmd": " ".join(cmd),
        "first_s": t1,
        "second_s": t2,
        "first_embedded": e1,
        "second_embedded": e2,
        "fraction": t2 / t1,
    }


# --- 3. cached load vs np.load --------------------------------------------------------------------------------------


def bench_load(work: Path, rows: int, dim: int, shards: int, reps: int) -> dict:
    fp = {"backend": "bench", "dim": dim}
    keys = text_keys("bench-load", [f"text {i}" for i in range(rows)])
    vecs = np.random.default_rng(0).standard_normal((rows, dim)).astype(np.float16)
    root = work / "load_cache"
    st = EmbeddingStore(root, fp, "bench-load", "float16")
    for part in np.array_split(np.arange(rows), shards):
        st.append(keys[part], vecs[part])
    st.compact()
    npy = work / "vecs.npy"
    np.save(npy, vecs)
    want = np.random.default_rng(1).permutation(rows)
    qkeys = keys[want]

    def ours():
        got = EmbeddingStore(root, fp, "bench-load", "float16").lookup(qkeys)
        assert got.shape == (rows, dim)
        return got

    assert np.array_equal(ours(), vecs[want])  # also warms the page cache
    np.load(npy)
    t_ours, t_ref = [], []
    for i in range(reps):
        pair = [(t_ours, ours), (t_ref, lambda: np.load(npy))]
        for sink, fn in pair if i % 2 == 0 else pair[::-1]:
            sink.append(timed(fn))
    # where the time goes: the shard read with / without page-checksum verification, the index, the gather
    import pyarrow.parquet as pq

    shard = st.shard_dir / st.manifest["shards"][0]["file"]
    s2 = EmbeddingStore(root, fp, "bench-load", "float16")
    idx = s2.index()
    parts = {
        "read+verify": min(
            timed(lambda: pq.read_table(shard, memory_map=True, page_checksum_verification=True)) for _ in range(3)
        ),
        "read unverified": min(timed(lambda: pq.read_table(shard, memory_map=True)) for _ in range(3)),
        "index build": min(timed(lambda: type(idx)(idx.keys, idx.vecs)) for _ in range(3)),
        "key search": min(timed(lambda: idx.find(qkeys)) for _ in range(3)),
    }
    found = idx.find(qkeys)
    parts["gather"] = min(timed(lambda: idx.vecs[found]) for _ in range(3))
    print("lookup stages (s): " + ", ".join(f"{k} {v:.3f}" for k, v in parts.items()))
    return {
        "rows": rows,
        "dim": dim,
        "mb": vecs.nbytes / 2**20,
        "ours": t_ours,
        "ref": t_ref,
        "ratio": statistics.median(t_ours) / statistics.median(t_ref),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="unique texts to embed (parts 1 and 2)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--reps", type=int, default=2, help="timings of each side in part 1")
    ap.add_argument("--dsp", type=Path, default=DSP)
    ap.add_argument("--load-rows", type=int, default=100_000)
    ap.add_argument("--load-dim", type=int, default=1024)
    ap.add_argument("--load-shards", type=int, default=10)
    ap.add_argument("--only", default="embed,rerun,load", help="comma list of parts: embed, rerun, load")
    ap.add_argument("--no-breakdown", action="store_true", help="skip the timing of embed_pairs' own stages")
    args = ap.parse_args()
    parts = set(args.only.split(","))
    work = Path(tempfile.mkdtemp(prefix="bench_embed_"))
    rows = []
    try:
        print(f"cpu cores {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}", file=sys.stderr)
        if parts & {"embed", "rerun"}:
            from pipeline.embed.backends.st import SentenceTransformersBackend

            backend = SentenceTransformersBackend(batch_size=args.batch_size)
            table = pair_slice(args.dsp, args.n, backend)
            pairs_path = write_pairs(table, work / "pairs.parquet")
            print(f"{table.num_rows} DSP pairs -> {len(unique_texts(table, backend))} unique texts", file=sys.stderr)
        if "embed" in parts:
            e = bench_embed(work, pairs_path, table, backend, args.reps)
            rows.append(
                (
                    "embed_pairs / ST.encode (load excluded)",
                    f"{statistics.median(e['ours']):.2f} s / {statistics.median(e['ref']):.2f} s",
                    f"{e['ratio']:.3f}",
                    "<= 1.10",
                )
            )
            rows.append(
                (
                    "  1 + (embed_pairs time outside backend.embed) / encode",
                    f"{statistics.median(e['overhead']):.2f} s / {statistics.median(e['ref']):.2f} s",
                    f"{e['overhead_ratio']:.3f}",
                    "(info)",
                )
            )
            rows.append(
                (
                    "  same, CPU seconds of the process",
                    f"{statistics.median(e['cpu_ours']):.2f} s / {statistics.median(e['cpu_ref']):.2f} s",
                    f"{e['cpu_ratio']:.3f}",
                    "(info)",
                )
            )
            if not args.no_breakdown:
                print(
                    "embed_pairs stages without the model (s): "
                    + ", ".join(f"{k} {v:.3f}" for k, v in overhead_breakdown(work, pairs_path, table, backend).items())
                )
        if "rerun" in parts:
            r = bench_rerun(work, pairs_path, args.batch_size)
            rows.append(
                (
                    f"CLI rerun / first run (embedded {r['first_embedded']} -> {r['second_embedded']})",
                    f"{r['second_s']:.2f} s / {r['first_s']:.2f} s",
                    f"{r['fraction']:.3f}",
                    "< 0.05",
                )
            )
        if "load" in parts:
            ld = bench_load(work, args.load_rows, args.load_dim, args.load_shards, 5)
            rows.append(
                (
                    f"lookup / np.load ({ld['rows']:,}x{ld['dim']} f16, {ld['mb']:.0f} MiB, shuffled)",
                    f"{statistics.median(ld['ours']):.3f} s / {statistics.median(ld['ref']):.3f} s",
                    f"{ld['ratio']:.2f}",
                    "<= 2",
                )
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    w = max(len(r[0]) for r in rows) if rows else 10
    print(f"{'measure':<{w}}  {'median times':<22}  {'ratio':>6}  target")
    for name, times, ratio, target in rows:
        print(f"{name:<{w}}  {times:<22}  {ratio:>6}  {target}")


if __name__ == "__main__":
    main()
