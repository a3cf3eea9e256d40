"""cache.store.EmbeddingStore: content keys, round trips, recovery, damage detection, inter-process appends."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import warnings

import numpy as np
import pytest

from cache.store import CacheDamaged, EmbeddingStore, text_keys
from pipeline.errors import MicroError

FP = {"backend": "fake", "model": "m"}
FID = "fid0123456789abc"


def store(root, dtype="float32", fid=FID) -> EmbeddingStore:
    return EmbeddingStore(root, FP, fid, dtype)


def data(n: int, d: int = 16, seed: int = 0, prefix: str = "t") -> tuple[list[str], np.ndarray, np.ndarray]:
    texts = [f"{prefix}{seed}-{i}" for i in range(n)]
    vecs = np.random.default_rng(seed).uniform(-1, 1, (n, d)).astype(np.float32)
    return texts, text_keys(FID, texts), vecs


def shard_files(s: EmbeddingStore) -> list:
    return [s.shard_dir / e["file"] for e in json.loads((s.dir / "manifest.json").read_text())["shards"]]


def all_keys(s: EmbeddingStore) -> set[bytes]:
    return {bytes(k) for k in np.asarray(s.index().keys).view(np.uint8).reshape(-1, 16)}


# --- keys ---------------------------------------------------------------------------------------------------------


def test_keys_are_content_addresses():
    k = text_keys(FID, ["hello", "world", "hello", "héllo \ud800"])
    assert k.dtype == np.dtype("S16") and k.shape == (4,)
    assert k.tobytes()[:16] == hashlib.sha256(FID.encode() + b"\0" + b"hello").digest()[:16]
    assert k[0] == k[2] and k[0] != k[1] and k[0] != k[3]
    assert (text_keys(FID, ["hello"]) == k[0]).all()  # independent of the batch it is in
    assert text_keys("another-fingerprint", ["hello"])[0] != k[0]


# --- round trips --------------------------------------------------------------------------------------------------


def test_round_trip_float32_exact_and_reopen(tmp_path):
    s = store(tmp_path)
    _, k1, v1 = data(30, seed=1)
    _, k2, v2 = data(20, seed=2)
    s.append(k1, v1)
    s.append(k2, v2)
    assert s.rows == 50 and s.dim == 16
    got = s.lookup(np.concatenate([k2, k1])[::-1])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.concatenate([v2, v1])[::-1])
    # a fresh process-like reopen sees every row, bit for bit
    s2 = store(tmp_path)
    assert s2.rows == 50 and len(s2.manifest["shards"]) == 2
    np.testing.assert_array_equal(s2.lookup(k1), v1)
    np.testing.assert_array_equal(s2.lookup(k2[[3, 3, 0]]), v2[[3, 3, 0]])


def test_round_trip_float16(tmp_path):
    s = store(tmp_path, "float16")
    _, k, v = data(40, seed=3)
    s.append(k, v)
    s2 = store(tmp_path, "float16")
    assert s2.dir.name.endswith("-f16")
    got16 = s2.lookup(k)
    assert got16.dtype == np.float16
    got = s2.lookup(k, np.float32)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, v, atol=1e-3, rtol=0)
    assert not np.array_equal(got, v)  # really stored as float16
    # float32 and float16 caches of one fingerprint are separate folders
    assert store(tmp_path, "float32").rows == 0


def test_missing_and_lookup_of_absent_keys(tmp_path):
    s = store(tmp_path)
    assert s.missing(text_keys(FID, ["a", "b"])).tolist() == [True, True]
    assert s.missing(np.empty(0, "S16")).shape == (0,)
    _, k, v = data(10, seed=4)
    s.append(k[:6], v[:6])
    assert s.missing(k).tolist() == [False] * 6 + [True] * 4
    assert store(tmp_path).missing(k).tolist() == [False] * 6 + [True] * 4
    with pytest.raises(KeyError, match="4 of 10"):
        s.lookup(k)


def test_appends_after_the_index_is_built_are_merged_once_on_use(tmp_path, monkeypatch):
    import cache.keys

    s = store(tmp_path)
    _, k, v = data(30, seed=5)
    assert s.missing(k).all()  # the index of the empty cache (width unknown)
    built = []
    concat = cache.keys.KeyIndex.concat.__func__
    monkeypatch.setattr(cache.keys.KeyIndex, "concat", classmethod(lambda cls, *a: built.append(a) or concat(cls, *a)))
    for i in range(0, 30, 10):
        s.append(k[i : i + 10], v[i : i + 10])
    assert built == []  # appending never copies the cached vectors
    np.testing.assert_array_equal(s.lookup(k[::-1]), v[::-1])
    assert not s.missing(k).any() and len(built) == 1  # merged once, on the first use
    np.testing.assert_array_equal(store(tmp_path).lookup(k), v)


def test_append_validates(tmp_path):
    s = store(tmp_path)
    _, k, v = data(4, seed=5)
    with pytest.raises(ValueError, match="vectors must be"):
        s.append(k, v[:3])
    bad = v.copy()
    bad[1, 2] = np.nan
    with pytest.raises(MicroError, match="non-finite"):
        s.append(k, bad)
    s.append(k, v)
    _, k2, v2 = data(4, d=8, seed=6)
    with pytest.raises(MicroError, match="width"):
        s.append(k2, v2)
    assert s.rows == 4 and len(shard_files(s)) == 1


def test_compact_dedupes_and_preserves_values(tmp_path):
    s = store(tmp_path)
    _, k, v = data(30, seed=7)
    s.append(k[:20], v[:20])
    s.append(k[10:], v[10:])  # 10 keys twice
    s.append(k[5:8], v[5:8])  # 3 keys a third time
    assert s.rows == 43
    assert s.compact() == 3
    files = shard_files(s)
    assert len(files) == 1 and len(list(s.shard_dir.glob("*.parquet"))) == 1
    s2 = store(tmp_path)
    assert s2.rows == 30 and len(s2.index().keys) == 30
    np.testing.assert_array_equal(s2.lookup(k), v)
    assert s2.compact() == 0  # one shard: nothing to do


def test_compact_only_some_shards(tmp_path):
    s = store(tmp_path)
    _, k, v = data(30, seed=18)
    for part in np.array_split(np.arange(30), 5):
        s.append(k[part], v[part])
    s.append(k[:3], v[:3])
    names = [e["file"] for e in s.manifest["shards"]]
    assert s.compact(only=names[2:]) == 4
    files = [e["file"] for e in store(tmp_path).manifest["shards"]]
    assert files[:2] == names[:2] and len(files) == 3 and not any((s.shard_dir / n).exists() for n in names[2:])
    assert s.compact(only=names[:1]) == 0  # fewer than min_shards
    s2 = store(tmp_path)
    assert s2.rows == 33  # k[:3] is in shard 0 and in the merged shard: deduplicated only within the merge
    np.testing.assert_array_equal(s2.lookup(k), v)
    assert s2.compact() == 3 and store(tmp_path).rows == 30


# --- recovery -----------------------------------------------------------------------------------------------------


def test_orphan_shard_is_adopted(tmp_path):
    s = store(tmp_path)
    _, k1, v1 = data(10, seed=8)
    _, k2, v2 = data(12, seed=9)
    s.append(k1, v1)
    s.append(k2, v2)
    # a kill between the shard rename and the manifest write: the shard exists, the manifest does not list it
    mpath = s.dir / "manifest.json"
    m = json.loads(mpath.read_text())
    orphan = m["shards"].pop()
    m["rows"] -= orphan["rows"]
    mpath.write_text(json.dumps(m))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # adoption is not damage
        s2 = store(tmp_path)
    assert s2.rows == 22 and orphan["file"] in {e["file"] for e in s2.manifest["shards"]}
    assert json.loads(mpath.read_text())["rows"] == 22  # written back
    np.testing.assert_array_equal(s2.lookup(k2), v2)
    # even with no manifest at all (kill before the first manifest write)
    mpath.unlink()
    s3 = store(tmp_path)
    assert s3.rows == 22 and s3.dim == 16
    np.testing.assert_array_equal(s3.lookup(k1), v1)


def test_leftover_temp_files_are_removed(tmp_path):
    s = store(tmp_path)
    _, k, v = data(5, seed=10)
    s.append(k, v)
    tmp_shard = s.shard_dir / ".part-deadbeef.parquet.x1y2.tmp"
    tmp_shard.write_bytes(b"PAR1 half written")
    tmp_manifest = s.dir / ".manifest.json.abc.tmp"
    tmp_manifest.write_text("{")
    s2 = store(tmp_path)
    assert not tmp_shard.exists() and not tmp_manifest.exists()
    assert s2.rows == 5 and not s2.damaged
    np.testing.assert_array_equal(s2.lookup(k), v)


def _flip_in_vector(path, vec: np.ndarray) -> None:
    """Flip bytes inside the data page that stores ``vec`` (uncompressed, so its bytes are in the file)."""
    raw = bytearray(path.read_bytes())
    pos = bytes(raw).find(vec.tobytes())
    assert pos > 0, "vector bytes not found in the shard"
    for off in (1, 5, 9):
        raw[pos + off] ^= 0xA5
    path.write_bytes(bytes(raw))  # same size: only the page checksum can tell


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_flipped_bytes_are_detected_and_quarantined(tmp_path, dtype):
    s = store(tmp_path, dtype)
    _, k1, v1 = data(25, seed=11)
    _, k2, v2 = data(25, seed=12)
    s.append(k1, v1)
    s.append(k2, v2)
    bad = shard_files(s)[1]
    _flip_in_vector(bad, v2.astype(s.np_dtype)[13])
    s2 = store(tmp_path, dtype)  # same size: passes the open-time check, caught when the data is read
    with pytest.warns(CacheDamaged, match="damaged"):
        miss = s2.missing(np.concatenate([k1, k2]))
    assert miss.tolist() == [False] * 25 + [True] * 25  # never silently used
    assert not bad.exists() and (s2.dir / "quarantine" / bad.name).exists()
    assert [f for f, _ in s2.damaged] == [bad.name]
    with pytest.raises(KeyError):
        s2.lookup(k2[:1])
    np.testing.assert_allclose(s2.lookup(k1, np.float32), v1, atol=1e-3)
    # the manifest no longer lists it: a reopen is clean and the keys are still missing
    s3 = store(tmp_path, dtype)
    assert s3.rows == 25 and not s3.damaged and s3.missing(k2).all()
    s3.append(k2, v2)  # re-embedding heals the cache
    np.testing.assert_allclose(store(tmp_path, dtype).lookup(k2, np.float32), v2, atol=1e-3)


def test_truncated_shard_is_detected_on_open(tmp_path):
    s = store(tmp_path)
    _, k1, v1 = data(10, seed=13)
    _, k2, v2 = data(10, seed=14)
    s.append(k1, v1)
    s.append(k2, v2)
    bad = shard_files(s)[0]
    size = bad.stat().st_size
    with open(bad, "r+b") as fh:
        fh.truncate(size // 2)
    with pytest.warns(CacheDamaged, match="size"):
        s2 = store(tmp_path)
    assert s2.damaged and s2.damaged[0][0] == bad.name
    assert (s2.dir / "quarantine" / bad.name).exists() and not bad.exists()
    assert s2.missing(k1).all() and not s2.missing(k2).any()
    np.testing.assert_array_equal(s2.lookup(k2), v2)


def test_truncated_orphan_is_quarantined_not_adopted(tmp_path):
    s = store(tmp_path)
    _, k, v = data(10, seed=15)
    s.append(k, v)
    mpath = s.dir / "manifest.json"
    m = json.loads(mpath.read_text())
    name = m["shards"].pop()["file"]
    m["rows"] = 0
    mpath.write_text(json.dumps(m))
    p = s.shard_dir / name
    p.write_bytes(p.read_bytes()[:-40])  # footer gone
    with pytest.warns(CacheDamaged):
        s2 = store(tmp_path)
    assert s2.rows == 0 and s2.missing(k).all() and (s2.dir / "quarantine" / name).exists()


def test_shard_missing_from_disk_is_reported(tmp_path):
    s = store(tmp_path)
    _, k, v = data(10, seed=16)
    s.append(k[:5], v[:5])
    s.append(k[5:], v[5:])
    shard_files(s)[0].unlink()
    with pytest.warns(CacheDamaged, match="missing"):
        s2 = store(tmp_path)
    assert s2.missing(k).tolist() == [True] * 5 + [False] * 5
    assert s2.rows == 5


# --- concurrency --------------------------------------------------------------------------------------------------


def _append_worker(root: str, seed: int, n_shards: int, start) -> None:
    start.wait(30)
    for i in range(n_shards):
        s = store(root)  # open (and recover) while the other process is writing shards
        _, k, v = data(7, seed=seed * 1000 + i)
        s.append(k, v)


def test_concurrent_appends_from_two_processes(tmp_path):
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_append_worker, args=(str(tmp_path), seed, 12, start)) for seed in (1, 2)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    s = store(tmp_path)
    assert not s.damaged
    assert len(s.manifest["shards"]) == 24 and s.rows == 24 * 7
    assert len(list(s.shard_dir.glob("part-*.parquet"))) == 24
    for seed in (1, 2):
        for i in range(12):
            _, k, v = data(7, seed=seed * 1000 + i)
            np.testing.assert_array_equal(s.lookup(k), v)


def test_shards_of_the_earlier_list_layout_are_still_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    s = store(tmp_path, "float16")
    _, k, v = data(12, seed=17)
    s.append(k[:6], v[:6])  # current layout
    keys = pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), 6, [None, pa.py_buffer(k[6:].tobytes())])
    vec = pa.FixedSizeListArray.from_arrays(pa.array(v[6:].astype(np.float16).ravel(), type=pa.float16()), 16)
    pq.write_table(
        pa.table({"key": keys, "vec": vec}), s.shard_dir / "part-legacy.parquet", write_page_checksum=True
    )  # an orphan in the fixed_size_list layout
    s2 = store(tmp_path, "float16")
    assert s2.rows == 12 and not s2.damaged
    np.testing.assert_allclose(s2.lookup(k, np.float32), v, atol=1e-3)
    assert s2.compact() == 2
    np.testing.assert_allclose(store(tmp_path, "float16").lookup(k, np.float32), v, atol=1e-3)
    # a float32 shard dropped into the float16 cache is not read as float16
    pq.write_table(
        pa.table(
            {"key": keys, "vec": pa.FixedSizeListArray.from_arrays(pa.array(v[6:].ravel(), type=pa.float32()), 16)}
        ),
        s.shard_dir / "part-wrong.parquet",
    )
    with pytest.warns(CacheDamaged, match="unexpected vector type"):
        assert store(tmp_path, "float16").rows == 12


# --- read-only caches and damaged manifests (issue 8) ------------------------------------------------------------


def _files(root) -> dict:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("lock_file", [True, False])
def test_read_only_cache_serves_reads_and_refuses_writes(tmp_path, read_only, lock_file):
    s = store(tmp_path)
    _, k, v = data(12, seed=3)
    s.append(k[:6], v[:6])
    s.append(k[6:], v[6:])
    if not lock_file:
        (s.dir / ".lock").unlink()
    before = _files(tmp_path)
    read_only(tmp_path)
    r = store(tmp_path)
    assert r.read_only and r.rows == 12 and not r.missing(k).any()
    np.testing.assert_array_equal(r.lookup(k), v)
    assert r.compact() == 0
    _, k2, v2 = data(2, seed=4)
    with pytest.raises(MicroError, match=r"the embedding cache .* is read-only: 2 texts are not cached yet"):
        r.append(k2, v2)
    assert _files(tmp_path) == before  # no lock file, manifest or shard was written


def test_read_only_cache_ignores_damage_without_moving_it(tmp_path, read_only):
    s = store(tmp_path)
    _, k, v = data(8, seed=5)
    s.append(k[:4], v[:4])
    s.append(k[4:], v[4:])
    bad = shard_files(s)[1]
    bad.write_bytes(bad.read_bytes()[:40])
    read_only(tmp_path)
    with pytest.warns(CacheDamaged, match="read-only"):
        r = store(tmp_path)
    assert r.missing(k).tolist() == [False] * 4 + [True] * 4 and bad.exists()
    assert r.damaged[0][0] == bad.name and "not moved" in r.damaged[0][1]


@pytest.mark.parametrize(
    "text",
    ["", '{"version": 1, "shards": [', "[]", '{"shards": [{"file": 1}], "dim": 16}', '{"shards": "x", "dim": null}'],
)
def test_damaged_manifest_is_rebuilt_from_the_shards(tmp_path, text):
    """A truncated or invalid manifest used to break every command; a missing one was already rebuilt."""
    s = store(tmp_path)
    _, k, v = data(10, seed=6)
    s.append(k[:5], v[:5])
    s.append(k[5:], v[5:])
    (s.dir / "manifest.json").write_text(text)
    with pytest.warns(CacheDamaged, match=r"manifest\.json is .*; rebuilt from the 2 shard\(s\)"):
        r = store(tmp_path)
    assert r.damaged == [("manifest.json", r.damaged[0][1])] and "rewritten" in r.damaged[0][1]
    np.testing.assert_array_equal(r.lookup(k), v)
    m = json.loads((s.dir / "manifest.json").read_text())
    assert m["rows"] == 10 and m["dim"] == 16 and len(m["shards"]) == 2
    assert not store(tmp_path).damaged  # repaired for good


def test_read_only_cache_never_reads_a_shard_of_the_wrong_size(tmp_path, read_only):
    """A readable shard whose size disagrees with the manifest is ignored for good in a read-only cache (the
    manifest on disk, which still lists it, cannot be repaired)."""
    s = store(tmp_path)
    _, k, v = data(8, seed=7)
    s.append(k[:4], v[:4])
    s.append(k[4:], v[4:])
    m = json.loads((s.dir / "manifest.json").read_text())
    m["shards"][1]["bytes"] += 1
    (s.dir / "manifest.json").write_text(json.dumps(m))
    read_only(tmp_path)
    with pytest.warns(CacheDamaged):
        r = store(tmp_path)
    assert r.missing(k).tolist() == [False] * 4 + [True] * 4


# --- background shard writes (cache.writer.ShardWriter) --------------------------------------------------------


def _write_in_background_then_die(root: str, kill_after: int | None, shards: int) -> None:
    """Put ``shards`` chunks through a ShardWriter; SIGKILL this process right after handing over chunk
    ``kill_after`` (its write is then in flight in the writer thread)."""
    import os
    import signal

    from cache.writer import ShardWriter

    s = store(root)
    with ShardWriter(s) as w:
        for i in range(shards):
            _, k, v = data(400, d=256, seed=5000 + i)
            w.put(k, v)
            if i == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("kill_after", [0, 3, 8])
def test_kill_during_background_shard_writes_loses_only_the_chunk_in_flight(tmp_path, kill_after):
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=_write_in_background_then_die, args=(str(tmp_path), kill_after, 12))
    p.start()
    p.join(120)
    assert p.exitcode == -9
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheDamaged)  # nothing may be damaged
        s = store(tmp_path)
    assert not s.damaged and not list(s.dir.rglob("*.tmp"))
    n = s.rows // 400
    assert s.rows % 400 == 0 and n in (kill_after, kill_after + 1)  # every earlier chunk, whole chunks only
    for i in range(n):
        _, k, v = data(400, d=256, seed=5000 + i)
        np.testing.assert_array_equal(s.lookup(k), v)


def test_background_writer_stores_everything_and_reports_progress(tmp_path):
    from cache.writer import ShardWriter

    s = store(tmp_path)
    ticks: list[int] = []
    with ShardWriter(s, ticks.append) as w:
        for i in range(5):
            _, k, v = data(10 + i, seed=6000 + i)
            w.put(k, v)
    assert ticks == [10, 11, 12, 13, 14] and w.written == s.rows == 60
    with pytest.raises(MicroError, match="non-finite"):  # a failed write is raised in the caller
        with ShardWriter(s) as w:
            _, k, v = data(3, seed=7000)
            v[0, 0] = np.nan
            w.put(k, v)
            w.wait()
