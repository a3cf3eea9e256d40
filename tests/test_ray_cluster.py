"""`micro embed --ray --address` on a real two-node Ray cluster (one machine, loopback; tests/_ray_cluster.py):
the bundled MiniLM in one actor per node, into one local cache folder and into S3 (moto), a killed node, and two
concurrent runs into the same cache. One cluster for the module; the node kill runs last."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed"),
]

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
SUMMARY = re.compile(r"unique texts (\d+) \| cache hits (\d+) \| newly embedded (\d+)")
TIMEOUT = 150  # seconds one `micro embed` may take on the cluster


@pytest.fixture(scope="module")
def cluster(s3_endpoint):
    """A two-node cluster whose nodes see this checkout, the tests and the moto endpoint (started first)."""
    from _ray_cluster import two_node_cluster
    from _s3 import s3_env

    with two_node_cluster([str(REPO), str(TESTS)], s3_env(s3_endpoint)) as c:
        yield c


@pytest.fixture(scope="module")
def pairs_100(tmp_path_factory):
    """150 pairs of the bundled DSP sample: about 100 unique model inputs for the default backend."""
    from pipeline.data.prepare import build_pairs
    from pipeline.data.schema import write_pairs

    table, _, _ = build_pairs("dsp", [REPO / "pipeline/sample/dsp_sample.json"])
    return write_pairs(table.slice(0, 150), tmp_path_factory.mktemp("dsp150") / "pairs.parquet")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, pairs_100, st_backend):
    """The single-process embed of ``pairs_100`` (one torch thread, as every actor): its cache contents."""
    import torch

    from pipeline.embed.embed import embed_pairs

    d = tmp_path_factory.mktemp("ref")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        s = embed_pairs(pairs_100, d / "run", st_backend, cache_dir=d / "cache", log=lambda m: None)
    finally:
        torch.set_num_threads(n)
    assert 90 <= s.unique_texts == s.embedded <= 130
    return contents(d / "cache")


def contents(cache: str | Path) -> dict[bytes, bytes]:
    """key -> vector bytes of the default backend's cache under ``cache`` (a folder or an s3:// URL)."""
    from pipeline.embed.backends.st import SentenceTransformersBackend
    from pipeline.embed.embed import open_store

    idx = open_store(cache, SentenceTransformersBackend(batch_size=8), "float32").index()
    keys = [bytes(k) for k in idx.keys.view(np.uint8).reshape(-1, 16)]
    assert len(set(keys)) == len(keys)  # no key served twice
    return {k: np.asarray(idx.vecs[i], np.float32).tobytes() for i, k in enumerate(keys)}


def embed_cmd(cluster, pairs, out, cache) -> list[str]:
    code = "import sys, cli; sys.exit(cli.main())"
    args = ["embed", str(pairs), "--out", str(out), "--ray", "--address", cluster.address, "--cache-dir", str(cache)]
    return [sys.executable, "-c", code, *args, "--batch-size", "8"]


def run_embed(cluster, pairs, out, cache) -> tuple[int, str]:
    p = subprocess.run(embed_cmd(cluster, pairs, out, cache), env=cluster.env, capture_output=True, timeout=TIMEOUT)
    return p.returncode, p.stdout.decode() + p.stderr.decode()


def counts(text: str) -> tuple[int, int, int]:
    m = SUMMARY.search(text)
    assert m, text[-3000:]
    return tuple(map(int, m.groups()))


def test_embed_across_both_nodes_equals_one_process(cluster, tmp_path, pairs_100, reference):
    code, out = run_embed(cluster, pairs_100, tmp_path / "run", tmp_path / "cache")
    assert code == 0, out[-3000:]
    assert counts(out) == (len(reference), 0, len(reference))
    per_actor = re.findall(r"actor \d+ on node \S+ \(id ([0-9a-f]{12})\): (\d+)", out)
    assert len({node for node, _ in per_actor}) == 2 and all(int(n) > 0 for _, n in per_actor), out[-3000:]
    assert sum(int(n) for _, n in per_actor) == len(reference)  # one actor per node, both did work
    assert contents(tmp_path / "cache") == reference  # same keys, same bytes


def test_embed_across_both_nodes_into_s3_equals_one_process(cluster, tmp_path, pairs_100, reference, s3_bucket):
    code, out = run_embed(cluster, pairs_100, tmp_path / "run", f"{s3_bucket}/cache")
    assert code == 0, out[-3000:]
    assert counts(out) == (len(reference), 0, len(reference))
    assert contents(f"{s3_bucket}/cache") == reference
    code, out = run_embed(cluster, pairs_100, tmp_path / "run2", f"{s3_bucket}/cache")
    assert code == 0 and counts(out) == (len(reference), len(reference), 0), out[-3000:]


def test_two_concurrent_runs_into_one_cache(cluster, tmp_path, pairs_100, reference):
    """One run on the cluster and one local single-process run, at the same time, into one cache folder."""
    from pipeline.embed.backends.st import SentenceTransformersBackend
    from pipeline.embed.embed import open_store

    cache = tmp_path / "cache"
    local = embed_cmd(cluster, pairs_100, tmp_path / "run1", cache)
    local = local[: local.index("--ray")] + local[local.index("--cache-dir") :]
    procs = [
        subprocess.Popen(cmd, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for cmd in (embed_cmd(cluster, pairs_100, tmp_path / "run0", cache), local)
    ]
    outs = [p.communicate(timeout=2 * TIMEOUT)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    got = [counts(o) for o in outs]
    assert all(u == len(reference) and h + e <= u for u, h, e in got), got  # an actor skips what the other saved
    assert sum(e for _, _, e in got) >= len(reference)  # every text embedded by at least one of them
    assert contents(cache) == reference  # nothing lost, one vector per key
    store = open_store(cache, SentenceTransformersBackend(batch_size=8), "float32")
    shards = store.manifest["shards"]
    assert sorted(p.name for p in store.shard_dir.glob("*.parquet")) == sorted(s["file"] for s in shards)
    assert store.rows == sum(s["rows"] for s in shards) >= len(reference)
    code, out = run_embed(cluster, pairs_100, tmp_path / "run3", cache)
    assert code == 0 and counts(out) == (len(reference), len(reference), 0), out[-3000:]


def test_killed_worker_node_is_named_and_the_rerun_embeds_the_rest(cluster, tmp_path, pairs_100, reference):
    """Runs last: node b's raylet is killed (SIGKILL, by pid) while its actor embeds."""
    cache = tmp_path / "cache"
    proc = subprocess.Popen(
        embed_cmd(cluster, pairs_100, tmp_path / "run", cache),
        env=cluster.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + TIMEOUT
        while not list(cache.glob("*/shards/*.parquet")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)  # the first chunk is saved: both actors are embedding
        assert proc.poll() is None, proc.communicate()[0].decode()[-3000:]
        raylet = cluster.raylet_pid(1)
        os.kill(raylet, signal.SIGKILL)  # node b's raylet, then the rest of the node (its actor's worker process
        cluster.kill(1)  # would otherwise finish its call before it notices its raylet is gone)
        gone = time.time() + 10
        while raylet in cluster.pids(1) and time.time() < gone:
            time.sleep(0.1)
        assert raylet not in cluster.pids(1)
        out = proc.communicate(timeout=TIMEOUT)[0].decode()
    finally:
        proc.kill()
    (tmp_path / "first.log").write_text(out)
    lost = [line for line in out.splitlines() if "was lost" in line]
    if proc.returncode == 0:  # its chunks went to the head's actor
        assert len(lost) == 1 and re.search(r"node \S+ \(id [0-9a-f]{12}\)", lost[0]), out[-3000:]
    else:
        assert "error:" in out and "left missing" in out, out[-3000:]
    first = counts(out)[2] if proc.returncode == 0 else 0
    before = len(contents(cache))  # what the first run saved
    code, out2 = run_embed(cluster, pairs_100, tmp_path / "run2", cache)
    assert code == 0, out2[-3000:]
    u, hits, new = counts(out2)
    assert u == len(reference) and hits + new == u and new == len(reference) - before
    if proc.returncode == 0:
        assert new == 0 and 0 < first <= len(reference)  # less if the lost actor saved its chunk, then died
    assert contents(cache) == reference
