"""Stage 0 (`micro embed`): every unique text once, reruns from cache, roles, overlong, kill/Ctrl-C resume, CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cache.store import CacheDamaged, text_keys
from conftest import FakeBackend, make_pair_rows
from pipeline.core.run import Run
from pipeline.data.schema import read_pairs
from pipeline.embed.backends.base import fingerprint_id, render_plain, with_context
from pipeline.embed.embed import embed_pairs, open_store, render_inputs
from pipeline.errors import MicroError

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
MICRO = Path(sys.executable).parent / "micro"
SUMMARY = re.compile(
    r"pairs (\d+) \(kept (\d+), skipped (\d+)\) \| unique texts (\d+) \| cache hits (\d+) \| "
    r"newly embedded (\d+) \| truncated (\d+) \| skipped texts (\d+)"
)


def quiet(msg: str) -> None:
    pass


def expected_texts(rows: list[dict]) -> dict[str, list]:
    """The model inputs per role, written out independently of render_inputs."""
    out = {"chosen": [], "rejected": [], "prompt": [], "context": []}
    for r in rows:
        out["chosen"].append(render_plain([*r["prompt"], {"role": "assistant", "content": r["chosen"]}]))
        out["rejected"].append(render_plain([*r["prompt"], {"role": "assistant", "content": r["rejected"]}]))
        out["prompt"].append(render_plain(r["prompt"]))
        out["context"].append(render_plain(with_context(r["prompt"], r["context"])) if r["context"] else None)
    return out


def unique(texts: dict[str, list]) -> set[str]:
    return {t for v in texts.values() for t in v if t is not None}


def cache_contents(cache_dir: Path, backend) -> dict[bytes, np.ndarray]:
    s = open_store(cache_dir, backend, "float32")
    idx = s.index()
    return {bytes(k): idx.vecs[i] for i, k in enumerate(idx.keys.view(np.uint8).reshape(-1, 16))}


# --- what gets embedded -------------------------------------------------------------------------------------------


def test_every_unique_text_embedded_exactly_once(tmp_path, pair_table):
    rows = make_pair_rows(3)
    want = unique(expected_texts(rows))
    assert len(want) == 15  # 3 prompts x (prompt, shared chosen, 2 rejected, 1 context)
    be = FakeBackend(chunk_size=4)
    s = embed_pairs(pair_table(rows), tmp_path / "run", be, cache_dir=tmp_path / "cache", log=quiet)
    counts = Counter(be.embedded)
    assert set(counts) == want and max(counts.values()) == 1
    assert [len(c) for c in be.calls] == [4, 4, 4, 3]  # chunked by the backend's chunk_size
    assert (s.pairs, s.pairs_kept, s.unique_texts, s.cache_hits, s.embedded) == (6, 6, 15, 0, 15)
    # the shared prompt of two pairs is one text
    assert render_plain(rows[0]["prompt"]) in counts and rows[0]["prompt"] == rows[1]["prompt"]
    # one shard per chunk while running, compacted at the end
    st = open_store(tmp_path / "cache", be, "float32")
    assert st.rows == 15 and len(st.manifest["shards"]) == 1
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["summary"]["embedded"] == 15 and run["fingerprint_id"] == fingerprint_id(be.fingerprint())


def test_rerun_embeds_nothing(tmp_path, pair_table):
    path = pair_table()
    embed_pairs(path, tmp_path / "run1", FakeBackend(), cache_dir=tmp_path / "cache", log=quiet)
    first = open_store(tmp_path / "cache", FakeBackend(), "float32").manifest["shards"]
    be = FakeBackend()
    s = embed_pairs(path, tmp_path / "run2", be, cache_dir=tmp_path / "cache", log=quiet)
    assert be.calls == []
    assert s.embedded == 0 and s.cache_hits == s.unique_texts == 15
    # a superset of the pairs embeds only the new texts
    rows = make_pair_rows(4)
    be = FakeBackend()
    s = embed_pairs(pair_table(rows, "more.parquet"), tmp_path / "run3", be, cache_dir=tmp_path / "cache", log=quiet)
    assert (s.unique_texts, s.cache_hits, s.embedded) == (20, 15, 5)
    assert set(be.embedded) == unique(expected_texts(rows)) - unique(expected_texts(make_pair_rows(3)))
    # the new run's chunks are merged into one shard; the earlier shard is left as it was (not rewritten)
    shards = open_store(tmp_path / "cache", FakeBackend(), "float32").manifest["shards"]
    assert len(shards) == 2 and shards[0] == first[0]


def test_another_fingerprint_does_not_share_vectors(tmp_path, pair_table):
    path = pair_table()
    embed_pairs(path, tmp_path / "a", FakeBackend(tag="v1"), cache_dir=tmp_path / "cache", log=quiet)
    be = FakeBackend(tag="v2")
    s = embed_pairs(path, tmp_path / "b", be, cache_dir=tmp_path / "cache", log=quiet)
    assert s.cache_hits == 0 and s.embedded == 15 == len(be.embedded)


def test_run_vectors_are_the_backends_vectors_per_role(tmp_path, pair_table):
    rows = make_pair_rows(3)
    rows = rows[3:] + rows[:3]  # order must follow the pair table, not the prompts
    path = pair_table(rows)
    be = FakeBackend()
    assert render_inputs(read_pairs(path), be) == expected_texts(rows)
    embed_pairs(path, tmp_path / "run", be, cache_dir=tmp_path / "cache", log=quiet)
    f = Run.load(tmp_path / "run")
    assert f.pairs.column("pair_id").to_pylist() == [r["pair_id"] for r in rows]
    texts = expected_texts(rows)
    for role in ("chosen", "rejected", "prompt"):
        assert getattr(f, role).dtype == np.float32
        np.testing.assert_array_equal(getattr(f, role), np.stack([FakeBackend.vector(t) for t in texts[role]]))
    has = np.array([r["context"] is not None for r in rows])
    assert f.has_context.tolist() == has.tolist() and has.any() and not has.all()
    for i, t in enumerate(texts["context"]):
        np.testing.assert_array_equal(f.context[i], FakeBackend.vector(t) if t else f.prompt[i])
    keys = pq.read_table(tmp_path / "run" / "keys.parquet")
    assert keys.column("context").null_count == int((~has).sum())
    fid = fingerprint_id(be.fingerprint())
    for role in ("chosen", "rejected", "prompt", "context"):
        assert keys.column(role).to_pylist() == [text_keys(fid, [t]).tobytes() if t else None for t in texts[role]]


# --- overlong -----------------------------------------------------------------------------------------------------


def test_overlong_truncate_counts_and_keeps_all_pairs(tmp_path, pair_table):
    # words per text: prompt 6, chosen 10, context 12, rejected 12+p (j=0) and 15+p (j=1), p = 0, 1, 2
    be = FakeBackend(max_length=14)
    s = embed_pairs(pair_table(), tmp_path / "run", be, cache_dir=tmp_path / "cache", log=quiet)
    assert s.truncated == 3 and s.skipped_texts == 0 and s.skipped_pairs == 0 and s.pairs_kept == 6
    assert s.embedded == 15
    assert read_pairs(tmp_path / "run" / "pairs.parquet").num_rows == 6


def test_truncated_count_covers_the_whole_run_after_resume_and_rerun(tmp_path, pair_table):
    """A resumed or fully cached run reports the texts its vectors were truncated from, not 0."""
    table = pair_table()
    interrupted = FakeBackend(max_length=14, chunk_size=4, die_after=2, die_how="keyboard")
    with pytest.raises(KeyboardInterrupt):
        embed_pairs(table, tmp_path / "run", interrupted, cache_dir=tmp_path / "cache", log=quiet)
    resumed = embed_pairs(table, tmp_path / "run", FakeBackend(max_length=14), cache_dir=tmp_path / "cache", log=quiet)
    again = embed_pairs(table, tmp_path / "run", FakeBackend(max_length=14), cache_dir=tmp_path / "cache", log=quiet)
    assert (resumed.embedded, again.embedded) == (7, 0)
    assert resumed.truncated == again.truncated == 3
    assert json.loads((tmp_path / "run" / "run.json").read_text())["summary"]["truncated"] == 3


def test_overlong_skip_drops_exactly_those_pairs(tmp_path, pair_table):
    rows = make_pair_rows(3)
    be = FakeBackend(max_length=14)
    s = embed_pairs(pair_table(rows), tmp_path / "run", be, cache_dir=tmp_path / "cache", overlong="skip", log=quiet)
    assert (s.skipped_texts, s.skipped_pairs, s.pairs_kept, s.truncated) == (3, 3, 3, 0)
    assert s.embedded == 12 and all(len(t.split()) <= 14 for t in be.embedded)
    kept = read_pairs(tmp_path / "run" / "pairs.parquet").column("pair_id").to_pylist()
    assert kept == ["p0-0", "p1-0", "p2-0"]
    assert Run.load(tmp_path / "run").n == 3
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["overlong"] == "skip" and run["summary"]["skipped_pairs"] == 3
    # the same pairs are skipped when the rest is already cached
    s2 = embed_pairs(
        pair_table(rows),
        tmp_path / "run2",
        FakeBackend(max_length=14),
        cache_dir=tmp_path / "cache",
        overlong="skip",
        log=quiet,
    )
    assert (s2.skipped_pairs, s2.embedded) == (3, 0)
    with pytest.raises(MicroError, match="overlong"):
        embed_pairs(pair_table(rows), tmp_path / "run3", be, cache_dir=tmp_path / "cache", overlong="drop")
    with pytest.raises(MicroError, match="every pair"):
        embed_pairs(
            pair_table(rows),
            tmp_path / "run4",
            FakeBackend(max_length=3),
            cache_dir=tmp_path / "cache",
            overlong="skip",
            log=quiet,
        )


def test_overlong_skip_applies_to_texts_cached_by_a_truncating_run(tmp_path, pair_table):
    path = pair_table()
    embed_pairs(path, tmp_path / "a", FakeBackend(max_length=14), cache_dir=tmp_path / "cache", log=quiet)
    s = embed_pairs(
        path, tmp_path / "b", FakeBackend(max_length=14), cache_dir=tmp_path / "cache", overlong="skip", log=quiet
    )
    assert (s.embedded, s.skipped_texts, s.skipped_pairs, s.pairs_kept) == (0, 3, 3, 3)


# --- interruption -------------------------------------------------------------------------------------------------

RUNNER = textwrap.dedent("""
    import os, sys
    sys.path[:0] = [{repo!r}, {tests!r}]  # this checkout's code, not an installed copy
    from conftest import FakeBackend
    import pipeline.embed.backends

    def get_backend(name, model=None, **kw):
        die = os.environ.get("FAKE_DIE_AFTER")
        return FakeBackend(chunk_size=int(os.environ.get("FAKE_CHUNK", "4")),
                           die_after=int(die) if die else None, die_how=os.environ.get("FAKE_DIE_HOW", "sigkill"))

    pipeline.embed.backends.get_backend = get_backend
    import cli
    sys.argv = ["micro", *sys.argv[1:]]
    cli.main()
""")


def micro_fake(
    tmp_path: Path, *args, die_after: int | None = None, how: str = "sigkill"
) -> subprocess.CompletedProcess:
    """Run the real `micro` CLI in a subprocess with the FakeBackend in place of the named backend."""
    script = tmp_path / "micro_fake.py"
    script.write_text(RUNNER.format(repo=str(REPO), tests=str(TESTS)))
    env = {**os.environ, "FAKE_DIE_HOW": how, "FAKE_DIE_AFTER": "" if die_after is None else str(die_after)}
    return subprocess.run(
        [sys.executable, str(script), *map(str, args)], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )


def summary_of(stderr: str) -> tuple[int, ...]:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("pairs ")]
    assert len(lines) == 1, stderr  # one line, not wrapped to the terminal width
    m = SUMMARY.match(lines[0])
    assert m, stderr
    return tuple(int(x) for x in m.groups())


@pytest.mark.parametrize("how", ["sigkill", "exit"])
def test_resume_after_hard_kill(tmp_path, pair_table, how):
    rows = make_pair_rows(5)  # 25 unique texts, chunks of 4
    path = pair_table(rows)
    cache = tmp_path / "cache"
    r = micro_fake(tmp_path, "embed", path, "--out", tmp_path / "run", "--cache-dir", cache, die_after=2, how=how)
    assert r.returncode in (-signal.SIGKILL, 137), r.stderr
    assert not (tmp_path / "run" / "run.json").exists()
    st = open_store(cache, FakeBackend(), "float32")
    # whole chunks only: the first survived; the second may still have been in the background writer
    assert st.rows in (4, 8) and not st.damaged
    assert not list(st.dir.rglob("*.tmp"))
    saved = st.rows
    r = micro_fake(tmp_path, "embed", path, "--out", tmp_path / "run", "--cache-dir", cache)
    assert r.returncode == 0, r.stderr
    assert summary_of(r.stderr) == (10, 10, 0, 25, saved, 25 - saved, 0, 0)  # exactly the missing texts
    # the resumed cache equals a clean run's
    clean = tmp_path / "clean"
    embed_pairs(path, tmp_path / "run_clean", FakeBackend(), cache_dir=clean, log=quiet)
    got, want = cache_contents(cache, FakeBackend()), cache_contents(clean, FakeBackend())
    assert got.keys() == want.keys() and len(got) == 25
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    f, g = Run.load(tmp_path / "run"), Run.load(tmp_path / "run_clean")
    np.testing.assert_array_equal(f.delta, g.delta)
    np.testing.assert_array_equal(f.context, g.context)


def test_keyboard_interrupt_loses_at_most_the_chunk_in_flight(tmp_path, pair_table):
    path = pair_table()
    be = FakeBackend(chunk_size=4, die_after=2, die_how="keyboard")
    with pytest.raises(KeyboardInterrupt):
        embed_pairs(path, tmp_path / "run", be, cache_dir=tmp_path / "cache", log=quiet)
    st = open_store(tmp_path / "cache", be, "float32")
    assert st.rows == 8 and not st.missing(text_keys(st.fingerprint_id, be.embedded)).any()
    be2 = FakeBackend(chunk_size=4)
    s = embed_pairs(path, tmp_path / "run", be2, cache_dir=tmp_path / "cache", log=quiet)
    assert s.embedded == 7 and s.cache_hits == 8 and not set(be2.embedded) & set(be.embedded)


HF_RUNNER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, os.getcwd())  # this checkout's code (the test runs it from the repository root)
    import pipeline.embed.backends.hf as hf

    hf.DEFAULT_CHUNK = 4  # small shards: several of them before the kill
    init = hf.TransformersBackend.__init__

    def __init__(self, *a, **kw):
        init(self, *a, **kw)
        self.prefetch = True  # tokenise in the background thread as on CUDA (on the CPU it runs inline)

    hf.TransformersBackend.__init__ = __init__
    die = int(os.environ.get("DIE_AFTER_LAUNCHES") or 0)
    if die:
        real, count = hf.TransformersBackend.launch, [0]

        def launch(self, batch):
            if count[0] >= die:
                os.kill(os.getpid(), signal.SIGKILL)
            count[0] += 1
            return real(self, batch)

        hf.TransformersBackend.launch = launch
    import cli
    sys.argv = ["micro", *sys.argv[1:]]
    cli.main()
""")


def test_overlapped_transformers_embedding_killed_resumes_with_exactly_the_missing_texts(
    tmp_path, pair_table, tiny_llama_dir
):
    """Acceptance: the token-budget path (background tokenisation and shard writes) killed by SIGKILL loses only
    whole chunks, and a rerun embeds exactly the texts missing from the cache."""
    from pipeline.embed.backends.hf import TransformersBackend

    path = pair_table(make_pair_rows(5))  # 25 unique texts
    cache = tmp_path / "cache"
    script = tmp_path / "micro_hf.py"
    script.write_text(HF_RUNNER)
    args = [
        sys.executable,
        str(script),
        "embed",
        str(path),
        "--out",
        str(tmp_path / "run"),
        "--cache-dir",
        str(cache),
        "--backend",
        "transformers",
        "--model",
        str(tiny_llama_dir),
        "--max-batch-tokens",
        "64",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DIE_AFTER_LAUNCHES": "6"}
    r = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr
    be = TransformersBackend(str(tiny_llama_dir))
    st = open_store(cache, be, "float32")
    assert 4 <= st.rows < 25 and not st.damaged and not list(st.dir.rglob("*.tmp"))
    saved = st.rows
    env["DIE_AFTER_LAUNCHES"] = ""
    r = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    assert summary_of(r.stderr)[3:6] == (25, saved, 25 - saved)
    embed_pairs(path, tmp_path / "run_clean", be, cache_dir=tmp_path / "clean", log=quiet)
    assert_close = np.testing.assert_allclose
    got, want = cache_contents(cache, be), cache_contents(tmp_path / "clean", be)
    assert got.keys() == want.keys() and len(got) == 25
    for k in want:  # other batch neighbours, same vectors
        assert_close(got[k], want[k], atol=1e-5, rtol=0)
    be.close()


def test_keyboard_interrupt_on_the_token_path_keeps_finished_chunks(tmp_path, pair_table):
    from conftest import FakeTokenBackend

    path = pair_table()
    be = FakeTokenBackend(chunk_size=4, max_batch_tokens=12, die_after=8, die_how="keyboard")
    with pytest.raises(KeyboardInterrupt):
        embed_pairs(path, tmp_path / "run", be, cache_dir=tmp_path / "cache", log=quiet)
    done = sum(map(len, be.launched))
    st = open_store(tmp_path / "cache", be, "float32")
    assert 4 <= st.rows <= done  # every chunk handed to the writer was stored before the interrupt surfaced
    be2 = FakeTokenBackend(chunk_size=4, max_batch_tokens=12)
    s = embed_pairs(path, tmp_path / "run", be2, cache_dir=tmp_path / "cache", log=quiet)
    assert (s.cache_hits, s.embedded) == (st.rows, 15 - st.rows) == (st.rows, sum(map(len, be2.launched)))


def test_ctrl_c_in_cli_saves_finished_chunks_and_exits_130(tmp_path, pair_table):
    path = pair_table()
    cache = tmp_path / "cache"
    r = micro_fake(tmp_path, "embed", path, "--out", tmp_path / "run", "--cache-dir", cache, die_after=3, how="sigint")
    assert r.returncode == 130, (r.returncode, r.stderr)
    assert "interrupted: 12 new texts were saved" in r.stderr and "Traceback" not in r.stderr
    r = micro_fake(tmp_path, "embed", path, "--out", tmp_path / "run", "--cache-dir", cache)
    assert r.returncode == 0 and summary_of(r.stderr)[3:6] == (15, 12, 3)


# --- damage, bad input ------------------------------------------------------------------------------------------


def test_damaged_shard_is_reported_and_reembedded(tmp_path, pair_table):
    path = pair_table()
    embed_pairs(path, tmp_path / "run", FakeBackend(), cache_dir=tmp_path / "cache", log=quiet)
    st = open_store(tmp_path / "cache", FakeBackend(), "float32")
    shard = st.shard_dir / st.manifest["shards"][0]["file"]
    raw = bytearray(shard.read_bytes())
    pos = bytes(raw).find(st.lookup(st.index().keys[:1]).tobytes())
    raw[pos + 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    be = FakeBackend()
    with pytest.warns(CacheDamaged):
        s = embed_pairs(path, tmp_path / "run", be, cache_dir=tmp_path / "cache", log=quiet)
    assert s.embedded == 15 and s.cache_hits == 0 and len(be.embedded) == 15
    assert len(s.damaged_shards) == 1 and shard.name in s.damaged_shards[0]
    np.testing.assert_array_equal(
        Run.load(tmp_path / "run").chosen[0], FakeBackend.vector(expected_texts(make_pair_rows())["chosen"][0])
    )


def test_empty_table_and_missing_file_are_one_line_errors(tmp_path, pair_table):
    empty = pair_table([], "empty.parquet")
    with pytest.raises(MicroError, match="empty"):
        embed_pairs(empty, tmp_path / "run", FakeBackend(), cache_dir=tmp_path / "cache")
    with pytest.raises(MicroError, match="no such file"):
        embed_pairs(tmp_path / "nope.parquet", tmp_path / "run", FakeBackend(), cache_dir=tmp_path / "cache")
    for bad in (empty, tmp_path / "nope.parquet"):
        r = micro_fake(tmp_path, "embed", bad, "--out", tmp_path / "run", "--cache-dir", tmp_path / "cache")
        assert r.returncode == 2
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0], r.stderr
    assert not (tmp_path / "run").exists()


def test_bad_gpu_options_are_one_line_errors_before_any_model_loads(tmp_path, pair_table):
    # every rule is tested on pipeline.embed.backends.check_options (tests/test_backend_hf.py); here: the CLI uses it
    path = pair_table()
    cases = [
        (["--backend", "transformers", "--max-batch-tokens", "0"], "--max-batch-tokens must be >= 1"),
        (
            ["--backend", "vllm", "--gpu-memory-utilization", "1.5"],
            "--gpu-memory-utilization must be > 0 and <= 1",
        ),
    ]
    for extra, msg in cases:
        r = micro_fake(tmp_path, "embed", path, "--out", tmp_path / "run", "--cache-dir", tmp_path / "cache", *extra)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and lines == [f"error: {msg}, got {extra[-1]}"], r.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


# --- the real default backend -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_embed_on_the_bundled_sample_with_the_default_backend(tmp_path, dsp_sample_pairs):
    cache = tmp_path / "cache"
    args = [MICRO, "embed", dsp_sample_pairs, "--out", tmp_path / "run", "--cache-dir", cache, "--batch-size", "8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # 2 shared cores: OpenMP spin-waiting costs more than it gains
    r = subprocess.run(list(map(str, args)), capture_output=True, text=True, cwd=tmp_path, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    pairs, kept, skipped, uniq, hits, new, trunc, skipped_texts = summary_of(r.stderr)
    assert (pairs, kept, skipped, hits, skipped_texts) == (15, 15, 0, 0, 0)
    assert new == uniq == 10  # 1 query: prompt, 5 prompt+response, 4 domain contexts
    from pipeline.embed.backends.st import SentenceTransformersBackend

    be = SentenceTransformersBackend()
    texts = sorted({t for v in render_inputs(read_pairs(dsp_sample_pairs), be).values() for t in v if t})
    assert trunc == int((be.token_lengths(texts) > be.max_length).sum())
    f = Run.load(tmp_path / "run")
    assert f.chosen.shape == (15, 384) and f.has_context.all()
    # a rerun is served from the cache without loading the model
    r = subprocess.run(list(map(str, args)), capture_output=True, text=True, cwd=tmp_path, timeout=300, env=env)
    assert r.returncode == 0 and summary_of(r.stderr)[3:6] == (10, 10, 0), r.stderr


@pytest.mark.slow
def test_default_backend_vectors_match_sentence_transformers(tmp_path, pair_table, st_backend, one_torch_thread):
    rows = make_pair_rows(2)
    path = pair_table(rows)
    s = embed_pairs(path, tmp_path / "run", st_backend, cache_dir=tmp_path / "cache", log=quiet)
    assert s.embedded == s.unique_texts == 10
    f = Run.load(tmp_path / "run")
    texts = expected_texts(rows)
    assert render_inputs(read_pairs(path), st_backend) == texts
    for role in ("chosen", "rejected", "prompt", "context"):
        want = [t if t else texts["prompt"][i] for i, t in enumerate(texts[role])]
        ref = st_backend._model.encode(want, batch_size=1, convert_to_numpy=True)  # one text at a time
        assert getattr(f, role).dtype == np.float32 and getattr(f, role).shape == (4, 384)
        np.testing.assert_allclose(getattr(f, role), ref, atol=1e-5, rtol=0)
