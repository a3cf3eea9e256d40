"""The embedding cache on S3 (cache/objstore.py, cache/remote.py) against a moto server on 127.0.0.1."""

from __future__ import annotations

import os
import threading
import uuid
import warnings

import numpy as np
import pytest

from cache.objstore import ObjectStore
from cache.remote import put_create
from cache.store import CacheDamaged
from cache.stores import open_store
from conftest import FakeBackend, make_pair_rows
from pipeline.core.run import Run, read_keys, read_run
from pipeline.embed.backends.base import fingerprint_id
from pipeline.embed.embed import embed_pairs
from pipeline.errors import CacheError
from test_embed import expected_texts, micro_fake, summary_of


def quiet(_msg):
    pass


def s3fs_of(url):
    from cache.remote import filesystem

    return filesystem(url)[0]


def run_keys(run_dir) -> np.ndarray:
    """Every cache key a run folder names (unique)."""
    t = read_keys(run_dir)
    return np.unique(
        np.concatenate(
            [np.array(t.column(r).drop_null().to_pylist(), "S16") for r in ("chosen", "rejected", "prompt", "context")]
        )
    )


def store_of(run_dir):
    info = read_run(run_dir)
    from cache.stores import parent

    return open_store(parent(info["cache_dir"]), info["fingerprint"], info["fingerprint_id"], info["cache_dtype"])


def check_same_cache(tmp_path, pairs, backend_factory, url):
    embed_pairs(pairs, tmp_path / "run_s3", backend_factory(), cache_dir=url, log=quiet)
    embed_pairs(pairs, tmp_path / "run_local", backend_factory(), cache_dir=tmp_path / "cache", log=quiet)
    keys = run_keys(tmp_path / "run_local")
    np.testing.assert_array_equal(keys, run_keys(tmp_path / "run_s3"))
    remote, local = store_of(tmp_path / "run_s3"), store_of(tmp_path / "run_local")
    assert isinstance(remote, ObjectStore) and remote.dir.startswith("s3://")
    assert remote.lookup(keys).tobytes() == local.lookup(keys).tobytes()  # same keys, same bytes
    assert sorted(remote.index().keys.tolist()) == sorted(local.index().keys.tolist())
    a, b = Run.load(tmp_path / "run_s3"), Run.load(tmp_path / "run_local")
    for name in ("delta", "prompt", "context", "chosen", "rejected"):
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes(), name


def test_dsp_sample_vectors_from_s3_equal_the_local_cache(tmp_path, dsp_sample_pairs, s3_bucket):
    check_same_cache(tmp_path, dsp_sample_pairs, lambda: FakeBackend(chunk_size=7), s3_bucket + "/cache")


@pytest.mark.slow
def test_dsp_sample_minilm_vectors_from_s3_equal_the_local_cache(tmp_path, dsp_sample_pairs, s3_bucket, st_backend):
    check_same_cache(tmp_path, dsp_sample_pairs, lambda: st_backend, s3_bucket + "/cache")


def test_rerun_on_s3_embeds_nothing_and_fit_reads_the_remote_run(tmp_path, pair_table, s3_bucket, monkeypatch, capsys):
    from _stage2 import run_cli

    path = pair_table(make_pair_rows(8))
    first = embed_pairs(path, tmp_path / "run", FakeBackend(), cache_dir=s3_bucket + "/c", log=quiet)
    again = embed_pairs(path, tmp_path / "run2", FakeBackend(), cache_dir=s3_bucket + "/c", log=quiet)
    assert first.embedded == first.unique_texts > 0 and again.embedded == 0 and again.cache_hits == first.unique_texts
    store = store_of(tmp_path / "run")
    assert len(store.manifest["shards"]) == 1  # the run's chunk shards were compacted into one
    fs = s3fs_of(s3_bucket)
    assert len(fs.ls(store.base + "/shards", refresh=True)) == 1  # the superseded ones are deleted
    bundle = tmp_path / "model"
    code, _, err = run_cli(
        monkeypatch, capsys, "fit", tmp_path / "run", "--k", "2", "--n-init", "1", "--out", bundle, "--quiet"
    )
    assert code == 0, err
    res = tmp_path / "sweep.parquet"
    args = ("sweep", tmp_path / "run", "--grid", "k=1,2; max_iter=20", "--seeds", "1", "--jobs", "1", "--out", res)
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0 and "(2 new, 0 already there)" in " ".join((out + err).split()), err + out
    code, _, err = run_cli(monkeypatch, capsys, "eval", bundle, tmp_path / "run", "--report", tmp_path / "rep")
    assert code == 0, err


def test_file_url_is_the_local_cache(tmp_path, pair_table):
    embed_pairs(pair_table(), tmp_path / "run", FakeBackend(), cache_dir=f"file://{tmp_path}/cache", log=quiet)
    store = store_of(tmp_path / "run")
    assert type(store).__name__ == "EmbeddingStore"
    assert (tmp_path / "cache" / store.dir.name / "manifest.json").is_file()


def test_two_concurrent_embeds_into_one_prefix(tmp_path, pair_table, s3_bucket):
    rows = make_pair_rows(12)
    path = pair_table(rows)
    url = s3_bucket + "/shared"
    errors = []

    def embed(i):
        try:
            embed_pairs(path, tmp_path / f"run{i}", FakeBackend(chunk_size=3), cache_dir=url, log=quiet)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=embed, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    keys = run_keys(tmp_path / "run0")
    store = store_of(tmp_path / "run0")
    assert store.damaged == []  # every fragment's shard is there: the manifest is consistent
    fs = s3fs_of(url)
    on_store = {p.rsplit("/", 1)[1] for p in fs.ls(store.base + "/shards", refresh=True)}
    assert {s["file"] for s in store.manifest["shards"]} == on_store  # no lost, no orphan shard
    idx = store.index()
    assert set(idx.keys.tolist()) == set(keys.tolist())
    a, b = Run.load(tmp_path / "run0"), Run.load(tmp_path / "run1")
    assert a.delta.tobytes() == b.delta.tobytes() and a.n == len(rows)
    want = np.stack([FakeBackend.vector(t) for t in expected_texts(rows)["chosen"]])
    np.testing.assert_array_equal(a.chosen, want)  # every served vector is the one embedded for its text
    again = embed_pairs(path, tmp_path / "run3", FakeBackend(), cache_dir=url, log=quiet)
    assert again.embedded == 0


def test_two_concurrent_micro_embed_processes_into_one_prefix(tmp_path, pair_table, s3_bucket):
    import subprocess
    import sys

    from test_embed import REPO, RUNNER, TESTS

    path = pair_table(make_pair_rows(12))
    url = s3_bucket + "/procs"
    script = tmp_path / "micro_fake.py"
    script.write_text(RUNNER.format(repo=str(REPO), tests=str(TESTS)))
    env = {**os.environ, "FAKE_CHUNK": "3", "FAKE_DIE_AFTER": ""}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), "embed", str(path), "--out", str(tmp_path / f"run{i}"), "--cache-dir", url],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    store = store_of(tmp_path / "run0")
    assert store.damaged == []
    on_store = {p.rsplit("/", 1)[1] for p in s3fs_of(url).ls(store.base + "/shards", refresh=True)}
    assert {s["file"] for s in store.manifest["shards"]} == on_store
    keys = run_keys(tmp_path / "run0")
    assert set(store.index().keys.tolist()) == set(keys.tolist())
    a, b = Run.load(tmp_path / "run0"), Run.load(tmp_path / "run1")
    assert a.delta.tobytes() == b.delta.tobytes()
    want = np.stack([FakeBackend.vector(t) for t in expected_texts(make_pair_rows(12))["rejected"]])
    np.testing.assert_array_equal(b.rejected, want)


def test_create_only_conflict_gets_a_new_shard_name(tmp_path, s3_bucket, monkeypatch):
    fs = s3fs_of(s3_bucket)
    target = s3_bucket.split("://")[1] + "/x/obj"
    assert put_create(fs, target, b"first") is True
    assert put_create(fs, target, b"second") is False  # If-None-Match: the lost race is reported, not overwritten
    assert fs.cat_file(target) == b"first"

    store = ObjectStore(s3_bucket + "/c", {"m": 1}, "fid", "float32")
    assert store.read_only is False  # probed before the names are fixed
    fixed = uuid.UUID(int=7)
    taken = iter([fixed, uuid.UUID(int=8), fixed])  # shard 1, its fragment, shard 2: the taken name again
    real = uuid.uuid4
    monkeypatch.setattr("cache.objstore.uuid.uuid4", lambda: next(taken, None) or real())
    k1, k2 = np.array([b"a" * 16], "S16"), np.array([b"b" * 16], "S16")
    store.append(k1, np.ones((1, 4), np.float32))
    store.append(k2, np.full((1, 4), 2, np.float32))  # the same shard name comes up: FileExistsError path
    names = [s["file"] for s in store.manifest["shards"]]
    assert len(set(names)) == 2 and names[0] == f"part-{fixed.hex}.parquet"
    fresh = ObjectStore(s3_bucket + "/c", {"m": 1}, "fid", "float32")
    np.testing.assert_array_equal(fresh.lookup(np.concatenate([k1, k2])), [[1] * 4, [2] * 4])


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_remote_shard_is_quarantined_and_reembedded(tmp_path, pair_table, s3_bucket, damage):
    path = pair_table()
    url = s3_bucket + "/c"
    first = embed_pairs(path, tmp_path / "run", FakeBackend(), cache_dir=url, log=quiet)
    store = store_of(tmp_path / "run")
    (shard,) = store.manifest["shards"]
    fs = s3fs_of(url)
    obj = f"{store.base}/shards/{shard['file']}"
    data = bytearray(fs.cat_file(obj))
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF  # same size, wrong bytes: found by the sha256 when read
    else:
        del data[len(data) // 2 :]  # found by the size on open
    fs.pipe_file(obj, bytes(data))
    with pytest.warns(CacheDamaged, match="quarantine|embedded again"):
        again = embed_pairs(path, tmp_path / "run", FakeBackend(), cache_dir=url, log=quiet)
    assert again.embedded == shard["rows"] == first.embedded
    assert len(again.damaged_shards) == 1 and shard["file"] in again.damaged_shards[0]
    assert fs.exists(f"{store.base}/quarantine/{shard['file']}") and not fs.exists(obj)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheDamaged)
        run = Run.load(tmp_path / "run")
    text = read_keys(tmp_path / "run").num_rows
    assert run.n == text


class ReadOnlyFS:
    """An fsspec filesystem whose credentials cannot write: every write raises PermissionError (as S3 AccessDenied)."""

    def __init__(self, fs):
        self.fs = fs

    def __getattr__(self, name):
        if name in ("pipe_file", "pipe", "rm", "rm_file", "copy", "mv", "open", "put_file", "touch"):

            def refuse(*a, **k):
                raise PermissionError("Access Denied")

            return refuse
        return getattr(self.fs, name)


def test_read_only_bucket_serves_reads(tmp_path, pair_table, s3_bucket, monkeypatch):
    path = pair_table()
    url = s3_bucket + "/c"
    embed_pairs(path, tmp_path / "run", FakeBackend(), cache_dir=url, log=quiet)
    expected = Run.load(tmp_path / "run")
    import cache.objstore
    import cache.remote

    real = cache.remote.filesystem
    monkeypatch.setattr(cache.objstore, "filesystem", lambda u: (ReadOnlyFS(real(u)[0]), real(u)[1]))
    got = Run.load(tmp_path / "run")
    assert got.delta.tobytes() == expected.delta.tobytes()
    backend = FakeBackend()
    more = pair_table(make_pair_rows(5), "more.parquet")
    with pytest.raises(CacheError, match="read-only"):
        embed_pairs(more, tmp_path / "run_more", backend, cache_dir=url, log=quiet)
    assert backend.calls == []  # refused before anything was embedded
    again = embed_pairs(path, tmp_path / "run_again", FakeBackend(), cache_dir=url, log=quiet)
    assert again.embedded == 0


def test_no_credentials_is_one_line_error_naming_the_variable(tmp_path, pair_table, s3_bucket, monkeypatch, capsys):
    from _stage2 import run_cli

    path = pair_table()
    embed_pairs(path, tmp_path / "run", FakeBackend(), cache_dir=s3_bucket + "/c", log=quiet)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    code, _, err = run_cli(monkeypatch, capsys, "fit", tmp_path / "run", "--k", "2", "--quiet")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "AWS_ACCESS_KEY_ID" in lines[0] and s3_bucket in lines[0]
    r = micro_fake(tmp_path, "embed", path, "--out", tmp_path / "r2", "--cache-dir", s3_bucket + "/c")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "AWS_ACCESS_KEY_ID" in lines[0], r.stderr


def test_kill_9_mid_embed_then_rerun_embeds_exactly_the_rest(tmp_path, pair_table, s3_bucket):
    path = pair_table(make_pair_rows(10))
    url = s3_bucket + "/c"
    r = micro_fake(tmp_path, "embed", path, "--out", tmp_path / "run", "--cache-dir", url, die_after=3)
    assert r.returncode == -9, r.stderr
    fid = fingerprint_id(FakeBackend().fingerprint())
    stored = ObjectStore(url, FakeBackend().fingerprint(), fid, "float32").rows
    assert stored > 0  # the chunks handed to the writer before the kill are in the cache
    r = micro_fake(tmp_path, "embed", path, "--out", tmp_path / "run", "--cache-dir", url)
    assert r.returncode == 0, r.stderr
    unique, hits, embedded = summary_of(r.stderr)[3:6]  # the counts printed by `micro embed`
    assert hits == stored and embedded == unique - stored > 0


def test_missing_bucket_is_one_line_error_before_embedding(tmp_path, pair_table, s3_bucket):
    backend = FakeBackend()
    with pytest.raises(CacheError, match=r"s3://micro-no-such-bucket-1/c/.*: no such bucket"):
        embed_pairs(pair_table(), tmp_path / "run", backend, cache_dir="s3://micro-no-such-bucket-1/c", log=quiet)
    assert backend.calls == [] and not (tmp_path / "run").exists()
