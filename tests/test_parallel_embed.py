"""`micro embed --workers N` / `--ray`: missing texts sharded over worker processes writing into one cache."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cache.store import text_keys
from conftest import FakeBackend, make_pair_rows
from pipeline.core.parallel import threads_per_worker
from pipeline.core.run import Run
from pipeline.data.schema import read_pairs
from pipeline.embed.backends.planning import BackendSpec
from pipeline.embed.embed import embed_pairs, open_store, render_inputs
from pipeline.embed.workers import ParallelEmbedder, gpu_assignment, shard_indices
from pipeline.errors import MicroError

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
SUMMARY = re.compile(r"unique texts (\d+) \| cache hits (\d+) \| newly embedded (\d+)")


def quiet(msg: str) -> None:
    pass


def cache_contents(cache_dir: Path, backend) -> dict[bytes, np.ndarray]:
    idx = open_store(cache_dir, backend, "float32").index()
    return {bytes(k): idx.vecs[i] for i, k in enumerate(idx.keys.view(np.uint8).reshape(-1, 16))}


def assert_same_cache(a: Path, b: Path, backend, atol: float = 0.0) -> int:
    got, want = cache_contents(a, backend), cache_contents(b, backend)
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], atol=atol, rtol=0)
    return len(got)


def assert_same_features(run_a: Path, run_b: Path, atol: float = 0.0) -> None:
    f, g = Run.load(run_a), Run.load(run_b)
    assert f.pairs.column("pair_id").to_pylist() == g.pairs.column("pair_id").to_pylist()
    for role in ("chosen", "rejected", "prompt", "context"):
        np.testing.assert_allclose(getattr(f, role), getattr(g, role), atol=atol, rtol=0)
    assert f.has_context.tolist() == g.has_context.tolist()


def fake_factory(name, model=None, **kw):
    """Importable backend factory for worker processes / Ray tasks: a FakeBackend with chunks of 4."""
    return FakeBackend(chunk_size=4)


def strict_fake_factory(name, model=None, **kw):
    """Passes every option on to FakeBackend (an unknown one fails in the worker)."""
    return FakeBackend(chunk_size=4, **kw)


class UncountingBackend(FakeBackend):
    """A worker's backend that must not count tokens: the parent already did."""

    def token_lengths(self, inputs):
        raise AssertionError("the worker counted the tokens again")


def uncounting_factory(name, model=None, **kw):
    return UncountingBackend(chunk_size=4)


# --- planning -----------------------------------------------------------------------------------------------------


def test_sharding_is_deterministic_and_complete():
    keys = text_keys("fid", [f"text {i}" for i in range(200)])
    parts = shard_indices(keys, 3)
    assert sorted(np.concatenate(parts).tolist()) == list(range(200))
    assert all(len(p) > 40 for p in parts)  # hash-balanced
    assert [p.tolist() for p in shard_indices(keys[::-1].copy(), 3)] != [p.tolist() for p in parts]
    again = shard_indices(keys[::-1].copy(), 3)  # same key -> same worker, whatever the order
    for p, q in zip(parts, again):
        assert set(keys[p].tolist()) == set(keys[::-1][q].tolist())
    assert threads_per_worker(2, cores=2) == 1 and threads_per_worker(3, cores=16) == 5
    assert threads_per_worker(8, cores=2) == 1
    assert gpu_assignment(2, ["0", "1", "2", "3"], 2, exclusive=True) == ["0,1", "2,3"]
    assert gpu_assignment(3, ["4", "5"], 1, exclusive=False) == ["4", "5", "4"]
    with pytest.raises(MicroError, match="needs 4 GPUs"):
        gpu_assignment(2, ["0", "1", "2"], 2, exclusive=True)
    with pytest.raises(MicroError, match="--workers must be >= 1"):
        ParallelEmbedder(BackendSpec("fake"), 0)
    with pytest.raises(MicroError, match="needs --ray"):
        ParallelEmbedder(BackendSpec("fake"), 2, address="ray://x:10001")


# --- the real default backend -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dsp_pairs_60(tmp_path_factory):
    """60 pairs of the bundled DSP sample: 39 unique model inputs for the default backend."""
    from pipeline.data.prepare import build_pairs
    from pipeline.data.schema import write_pairs

    table, _, _ = build_pairs("dsp", [REPO / "pipeline/sample/dsp_sample.json"])
    return write_pairs(table.slice(0, 60), tmp_path_factory.mktemp("dsp60") / "pairs.parquet")


@pytest.mark.slow
def test_two_workers_with_the_default_backend_match_one_process(tmp_path, dsp_pairs_60, st_backend, one_torch_thread):
    from pipeline.embed.backends.st import SentenceTransformersBackend

    assert st_backend.batch_size == 8  # the session's loaded model: the single-process reference
    s1 = embed_pairs(dsp_pairs_60, tmp_path / "run1", st_backend, cache_dir=tmp_path / "c1", log=quiet)
    parent = SentenceTransformersBackend(batch_size=8)  # plans only: its weights are never loaded
    par = ParallelEmbedder(BackendSpec("sentence-transformers", None, {"batch_size": 8}), 2)
    ticks: list[int] = []
    s2 = embed_pairs(
        dsp_pairs_60,
        tmp_path / "run2",
        parent,
        cache_dir=tmp_path / "c2",
        log=quiet,
        progress_factory=lambda total: ticks.append,
        embed_fn=par,
    )
    assert parent._model is None
    assert s1.unique_texts == s2.unique_texts == s2.embedded == 39 and s2.cache_hits == 0
    assert sum(ticks) == 39 and len(ticks) >= 5  # one tick per worker chunk
    assert all(n > 0 for n in par.saved) and sum(par.saved) == 39
    assert assert_same_cache(tmp_path / "c2", tmp_path / "c1", parent, atol=1e-6) == 39
    assert len(open_store(tmp_path / "c2", parent, "float32").manifest["shards"]) == 1  # the run's shards merged
    assert_same_features(tmp_path / "run2", tmp_path / "run1", atol=1e-6)
    # a rerun with workers is served from the cache: nothing is started
    s3 = embed_pairs(dsp_pairs_60, tmp_path / "run3", parent, cache_dir=tmp_path / "c2", log=quiet, embed_fn=par)
    assert (s3.cache_hits, s3.embedded) == (39, 0)


def test_planning_backend_has_the_chat_backends_identity(tiny_llama_dir):
    """The parent of transformers/vLLM workers plans without loading the model, under the same fingerprint."""
    from pipeline.embed.backends.hf import TransformersBackend
    from pipeline.embed.backends.planning import PlanningBackend, parent_backend

    real = TransformersBackend(str(tiny_llama_dir), batch_size=3, dtype="float32", max_length=24)
    plan = parent_backend(
        BackendSpec("transformers", str(tiny_llama_dir), {"batch_size": 3, "dtype": "float32", "max_length": 24})
    )
    assert isinstance(plan, PlanningBackend) and not hasattr(plan, "model")
    assert plan.fingerprint() == real.fingerprint()
    prompt = [{"role": "system", "content": "prefers concise answers"}, {"role": "user", "content": "hello world"}]
    texts = [plan.render_response(prompt, "the fox " * 20), plan.render_prompt(prompt)]
    assert texts == [real.render_response(prompt, "the fox " * 20), real.render_prompt(prompt)]
    assert plan.token_lengths(texts).tolist() == real.token_lengths(texts).tolist()
    # vLLM: the transformers fingerprint with backend "vllm" (pipeline.embed.backends.vllm_backend), no engine started
    vplan = PlanningBackend("vllm", str(tiny_llama_dir), dtype="float32", max_length=24, tensor_parallel_size=2)
    assert vplan.fingerprint() == {**real.fingerprint(), "backend": "vllm"}
    real.close()


# --- a worker killed mid-run, through the CLI ---------------------------------------------------------------------

RUNNER = textwrap.dedent("""
    import os, sys
    sys.path[:0] = [{repo!r}, {tests!r}]  # this checkout's code, not an installed copy
    from conftest import FakeBackend
    import pipeline.embed.backends

    def get_backend(name, model=None, **kw):
        # worker FAKE_DIE_WORKER SIGKILLs itself in its second embed call (after its first chunk is saved)
        die = os.environ.get("FAKE_DIE_WORKER")
        dies = bool(die) and os.environ.get("MICRO_WORKER_INDEX") == die
        return FakeBackend(chunk_size=4, die_after=1 if dies else None)

    pipeline.embed.backends.get_backend = get_backend

    if __name__ == "__main__":  # spawned workers import this file as __mp_main__
        import cli
        sys.argv = ["micro", *sys.argv[1:]]
        cli.main()
""")


def micro_fake(tmp_path: Path, *args, die_worker: int | None = None) -> subprocess.CompletedProcess:
    script = tmp_path / "micro_fake_parallel.py"
    script.write_text(RUNNER.format(repo=str(REPO), tests=str(TESTS)))
    env = {**os.environ, "FAKE_DIE_WORKER": "" if die_worker is None else str(die_worker)}
    return subprocess.run(
        [sys.executable, str(script), *map(str, args)], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )


def test_killed_worker_is_reported_and_the_rerun_embeds_only_the_rest(tmp_path, pair_table):
    path = pair_table(make_pair_rows(8))  # 40 unique texts
    cache = tmp_path / "cache"
    args = ["embed", path, "--out", tmp_path / "run", "--cache-dir", cache, "--workers", "2"]
    r = micro_fake(tmp_path, *args, die_worker=1)
    assert r.returncode == 2, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    m = re.search(r"worker 1 of 2 \(pid \d+\) was killed by SIGKILL after saving (\d+) of \d+ texts", errors[0])
    saved = int(m.group(1))  # its first chunk, unless the kill came while the background writer stored it
    assert saved in (0, 4)
    assert "worker 0" not in errors[0]
    assert not (tmp_path / "run" / "run.json").exists()
    st = open_store(cache, FakeBackend(), "float32")
    # worker 0 finished its share, worker 1 saved its first chunk (or lost it in the writer)
    texts = sorted({t for v in render_inputs(read_pairs(path), FakeBackend()).values() for t in v if t})
    keys = text_keys(st.fingerprint_id, texts)
    share0 = int((shard_indices(keys, 2)[0]).size)
    assert st.rows == share0 + saved and not st.damaged and not list(st.dir.rglob("*.tmp"))
    m = re.search(r"the (\d+) texts saved", errors[0])
    assert m and int(m.group(1)) == st.rows

    r = micro_fake(tmp_path, *args)
    assert r.returncode == 0, r.stderr
    uniq, hits, new = map(int, SUMMARY.search(r.stderr).groups())
    assert (uniq, hits, new) == (40, share0 + saved, 40 - share0 - saved)  # only what was missing
    clean = tmp_path / "clean"
    embed_pairs(path, tmp_path / "run_clean", FakeBackend(), cache_dir=clean, log=quiet)
    assert assert_same_cache(cache, clean, FakeBackend()) == 40
    assert_same_features(tmp_path / "run", tmp_path / "run_clean")


def test_workers_take_the_token_counts_of_the_parent(tmp_path, pair_table):
    path = pair_table(make_pair_rows(4))
    par = ParallelEmbedder(BackendSpec("fake", None, {}, uncounting_factory), 2)
    s = embed_pairs(path, tmp_path / "run", FakeBackend(), cache_dir=tmp_path / "cache", log=quiet, embed_fn=par)
    assert s.embedded == s.unique_texts and all(n > 0 for n in par.saved)


def test_worker_exception_is_one_line_and_names_the_worker(tmp_path, pair_table):
    path = pair_table()
    spec = BackendSpec("fake", None, {"no_such_option": 1}, strict_fake_factory)
    with pytest.raises(MicroError) as e:
        embed_pairs(
            path,
            tmp_path / "run",
            FakeBackend(),
            cache_dir=tmp_path / "cache",
            log=quiet,
            embed_fn=ParallelEmbedder(spec, 2),
        )
    msg = str(e.value)
    assert "\n" not in msg and re.search(r"worker [01] of 2 \(pid \d+\) failed: TypeError: .*no_such_option", msg)


# --- Ray ----------------------------------------------------------------------------------------------------------


def test_ray_without_ray_installed_is_a_one_line_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(MicroError, match=re.escape("pip install -e '.[ray]'")):
        ParallelEmbedder(BackendSpec("fake"), 2, use_ray=True)


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed (pip install -e '.[ray]')")
def test_ray_tasks_give_the_same_cache_as_one_process(tmp_path, pair_table, monkeypatch):
    import ray

    path = pair_table(make_pair_rows(4))
    # Ray's local workers inherit this environment: they import fake_factory from this module
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        par = ParallelEmbedder(BackendSpec("fake", None, {}, fake_factory), 2, use_ray=True)
        ticks: list[int] = []
        s = embed_pairs(
            path,
            tmp_path / "run",
            FakeBackend(),
            cache_dir=tmp_path / "cache",
            log=quiet,
            progress_factory=lambda total: ticks.append,
            embed_fn=par,
        )
    finally:
        ray.shutdown()
    assert s.embedded == s.unique_texts == 20 and sum(ticks) == 20 and sum(par.saved) == 20
    embed_pairs(path, tmp_path / "run_clean", FakeBackend(), cache_dir=tmp_path / "clean", log=quiet)
    assert assert_same_cache(tmp_path / "cache", tmp_path / "clean", FakeBackend()) == 20
    assert_same_features(tmp_path / "run", tmp_path / "run_clean")
