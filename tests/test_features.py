"""pipeline.core.run.Run.load: dtype, alignment with pairs.parquet, float16 caches, damaged caches."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import FakeBackend, make_pair_rows
from pipeline.core.run import Run
from pipeline.embed.backends.base import render_plain, with_context
from pipeline.embed.embed import embed_pairs, open_store
from pipeline.errors import MicroError


def quiet(msg: str) -> None:
    pass


def vectors(rows: list[dict]) -> dict[str, np.ndarray]:
    """What the FakeBackend gives each role of each row (context: the prompt's vector where there is none)."""
    out = {"chosen": [], "rejected": [], "prompt": [], "context": []}
    for r in rows:
        p = r["prompt"]
        out["chosen"].append(FakeBackend.vector(render_plain([*p, {"role": "assistant", "content": r["chosen"]}])))
        out["rejected"].append(FakeBackend.vector(render_plain([*p, {"role": "assistant", "content": r["rejected"]}])))
        out["prompt"].append(FakeBackend.vector(render_plain(p)))
        out["context"].append(
            FakeBackend.vector(render_plain(with_context(p, r["context"]))) if r["context"] else out["prompt"][-1]
        )
    return {k: np.stack(v) for k, v in out.items()}


@pytest.fixture
def shuffled_rows():
    rows = make_pair_rows(4)
    return [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]


def test_features_are_float32_and_aligned_with_pairs(tmp_path, pair_table, shuffled_rows):
    embed_pairs(pair_table(shuffled_rows), tmp_path / "run", FakeBackend(), cache_dir=tmp_path / "cache", log=quiet)
    f = Run.load(tmp_path / "run")
    ids = pq.read_table(tmp_path / "run" / "pairs.parquet").column("pair_id").to_pylist()
    assert ids == [r["pair_id"] for r in shuffled_rows] == f.pairs.column("pair_id").to_pylist()
    want = vectors(shuffled_rows)
    for role in ("chosen", "rejected", "prompt", "context"):
        got = getattr(f, role)
        assert got.dtype == np.float32 and got.shape == (8, 8) and got.flags.c_contiguous
        np.testing.assert_array_equal(got, want[role])
    np.testing.assert_array_equal(f.delta, want["chosen"] - want["rejected"])
    assert f.has_context.tolist() == [r["context"] is not None for r in shuffled_rows]
    assert f.split.tolist() == [{"train": 0, "test": 1}[r["split"]] for r in shuffled_rows]
    assert f.groups.tolist() == ["all" if r["group"] is None else r["group"] for r in shuffled_rows]
    assert f.group_names == sorted({"all" if r["group"] is None else r["group"] for r in shuffled_rows})
    tr = f.part("train")
    assert tr.n == sum(r["split"] == "train" for r in shuffled_rows)
    np.testing.assert_array_equal(tr.chosen, want["chosen"][f.mask("train")])
    np.testing.assert_array_equal(tr.delta, f.delta[f.mask("train")])
    prompts = [str(r["prompt"]) for r in shuffled_rows]  # pairs of one prompt, and only they, share a prompt id
    assert all((f.prompt_id[i] == f.prompt_id[j]) == (prompts[i] == prompts[j]) for i in range(8) for j in range(8))
    assert Run.load(tmp_path / "run", dtype=np.float64).chosen.dtype == np.float64


def test_float16_cache_gives_float32_features(tmp_path, pair_table, shuffled_rows):
    embed_pairs(
        pair_table(shuffled_rows),
        tmp_path / "run",
        FakeBackend(),
        cache_dir=tmp_path / "cache",
        dtype="float16",
        log=quiet,
    )
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["cache_dtype"] == "float16" and run["cache_dir"].endswith("-f16")
    f = Run.load(tmp_path / "run")
    want = vectors(shuffled_rows)
    for role in want:
        got = getattr(f, role)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want[role], atol=1e-3, rtol=0)
        assert not np.array_equal(got, want[role])  # really went through float16


def test_all_contexts_null(tmp_path, pair_table):
    rows = [{**r, "context": None} for r in make_pair_rows(2)]
    embed_pairs(pair_table(rows), tmp_path / "run", FakeBackend(), cache_dir=tmp_path / "cache", log=quiet)
    f = Run.load(tmp_path / "run")
    assert not f.has_context.any()
    np.testing.assert_array_equal(f.context, f.prompt)


def test_deleted_shard_names_the_rerun_command(tmp_path, pair_table):
    pairs = pair_table()
    embed_pairs(pairs, tmp_path / "run", FakeBackend(), cache_dir=tmp_path / "cache", log=quiet)
    st = open_store(tmp_path / "cache", FakeBackend(), "float32")
    for e in st.manifest["shards"]:
        (st.shard_dir / e["file"]).unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(MicroError) as exc:
            Run.load(tmp_path / "run")
    msg = str(exc.value)
    assert "\n" not in msg and "missing from the cache" in msg
    assert f"micro embed {pairs.resolve()} --out {tmp_path / 'run'}" in msg
    # rerunning that command heals the run
    embed_pairs(pairs, tmp_path / "run", FakeBackend(), cache_dir=tmp_path / "cache", log=quiet)
    np.testing.assert_array_equal(Run.load(tmp_path / "run").chosen, vectors(make_pair_rows())["chosen"])


def test_not_a_run_folder_and_mismatched_keys(tmp_path, pair_table):
    with pytest.raises(MicroError, match="micro embed"):
        Run.load(tmp_path)
    embed_pairs(pair_table(), tmp_path / "run", FakeBackend(), cache_dir=tmp_path / "cache", log=quiet)
    keys = pq.read_table(tmp_path / "run" / "keys.parquet")
    pq.write_table(keys.take(pa.array(list(range(keys.num_rows))[::-1])), tmp_path / "run" / "keys.parquet")
    with pytest.raises(MicroError, match="disagree"):
        Run.load(tmp_path / "run")
