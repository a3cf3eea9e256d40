"""micro sweep on a tiny synthetic run folder (make_mixture vectors written through the embedding cache by a fake
backend, no model): trial counts, resume, per-trial errors, --jobs 2 == --jobs 1, Ray == local, K selection,
random search."""

from __future__ import annotations

import math
import re

import numpy as np
import polars as pl
import pytest

from conftest import PlainTextBackend
from pipeline.errors import MicroError

DIM, N, K_TRUE = 8, 600, 3
FAST = "n_init=1; max_iter=40"
TIMING = {"wall_seconds", "fit_seconds"}
quiet = lambda m: None  # noqa: E731


class VectorBackend(PlainTextBackend):
    """Backend stand-in returning make_mixture vectors: 'resp I a' -> base_i + delta_i, 'resp I b' -> base_i,
    'question I' -> prompt_i; a context 'criterion for gJ' adds 2 e_J to the prompt vector."""

    name = "fake-vectors"
    dim, max_length, chunk_size = DIM, 10_000, 256

    def __init__(self, vectors: dict):
        self.vectors = vectors

    def fingerprint(self) -> dict:
        return {
            "backend": self.name,
            "model": "mixture",
            "dim": DIM,
            "max_length": self.max_length,
            "chat_template": None,
        }

    def embed(self, inputs):
        out = np.zeros((len(inputs), DIM), dtype=np.float32)
        for i, t in enumerate(inputs):
            m = re.search(r"resp (\d+) ([ab])", t)
            if m:
                out[i] = self.vectors[(int(m.group(1)), m.group(2))]
                continue
            out[i] = self.vectors[(int(re.search(r"question (\d+)", t).group(1)), "q")]
            c = re.search(r"criterion for g(\d)", t)
            if c:
                out[i, int(c.group(1))] += 2.0
        return out

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from heads.synthetic import make_mixture
    from pipeline.data.schema import pairs_to_table, write_pairs
    from pipeline.embed.embed import embed_pairs

    root = tmp_path_factory.mktemp("sweep")
    data = make_mixture(n=N, d=DIM, p=DIM, k=K_TRUE, seed=0)
    base = 0.5 * np.random.default_rng(1).standard_normal((N, DIM))
    vectors, rows = {}, []
    for i in range(N):
        vectors[(i, "a")], vectors[(i, "b")] = base[i] + data["delta"][i], base[i]
        vectors[(i, "q")] = data["prompt"][i]
        g = int(data["groups"][i])
        rows.append(
            {
                "pair_id": f"p{i}",
                "prompt": [{"role": "user", "content": f"question {i}"}],
                "chosen": f"resp {i} a",
                "rejected": f"resp {i} b",
                "group": f"g{g}",
                "context": f"criterion for g{g}",
                "split": "test" if i % 4 == 0 else "train",
                "source": "synthetic",
            }
        )
    pairs = write_pairs(pairs_to_table(rows), root / "pairs.parquet")
    embed_pairs(pairs, root / "run", VectorBackend(vectors), cache_dir=root / "cache", log=quiet)
    return root / "run"


def metrics(frame) -> pl.DataFrame:
    return frame.sort("trial").drop([c for c in frame.columns if c in TIMING])


def assert_same(a: pl.DataFrame, b: pl.DataFrame, atol: float = 0.0) -> None:
    a, b = metrics(a), metrics(b)
    assert a.columns == b.columns and a.height == b.height, (a.columns, b.columns, b["error"].to_list())
    for c in a.columns:
        x, y = a[c].to_list(), b[c].to_list()
        if a[c].dtype == pl.Float64:
            x, y = np.array(x, dtype=float), np.array(y, dtype=float)
            assert np.allclose(x, y, rtol=0, atol=atol, equal_nan=True), c
        else:
            assert x == y, c


def test_grid_trials_resume_and_errors(run, tmp_path):
    from pipeline.sweep.runner import run_sweep

    out = tmp_path / "res.parquet"
    with pytest.raises(MicroError, match=r"sweep: alpha=-1\.0: .*'alpha' parameter"):  # no trial could use it
        run_sweep(run, f"k=1,2; alpha=0,-1; {FAST}", seeds=2, jobs=1, out=out, log=quiet)
    with pytest.raises(MicroError, match=r"--rank-by 'routed_acc_macro': no such column"):  # not after the trials
        run_sweep(run, f"k=1,2; {FAST}", seeds=2, jobs=1, out=out, rank_by="routed_acc_macro", log=quiet)
    assert not out.exists()
    grid = f"k=1,2,100000; {FAST}"
    res = run_sweep(run, grid, seeds=2, jobs=1, out=out, log=quiet)
    assert res.new == 6 and res.skipped == 0
    f = pl.read_parquet(out)
    assert f.height == 6 and f["config_hash"].n_unique() == 6
    bad = f.filter(pl.col("k") == 100000)  # fails on this data only: recorded, the sweep goes on
    assert bad.height == 2 and bad["error"].is_not_null().all()
    assert all("larger than the number of pairs" in e for e in bad["error"].to_list())
    good = f.filter(pl.col("error").is_null())
    assert good.height == 4 and good["test_acc_macro"].is_not_null().all()
    assert {
        "acc_g0",
        "acc_g1",
        "acc_g2",
        "train_loglik",
        "val_loglik",
        "test_loglik",
        "test_ece",
        "n_iter",
        "converged",
        "wall_seconds",
    } <= set(f.columns)
    # validation rows come from the train split only, grouped by prompt, about 20 %
    assert (good["train_n"] + good["val_n"]).to_list() == [N - N // 4] * 4
    assert all(0.1 < v / (N - N // 4) < 0.3 for v in good["val_n"].to_list())
    blob, mtime = out.read_bytes(), out.stat().st_mtime_ns
    res2 = run_sweep(run, grid, seeds=2, jobs=1, out=out, log=quiet)
    assert res2.new == 0 and res2.skipped == 6
    assert out.read_bytes() == blob and out.stat().st_mtime_ns == mtime


@pytest.fixture(scope="module")
def routed_local(run, tmp_path_factory):
    """The same routing sweep with --jobs 1 (in process) and --jobs 2 (spawned pool, memory-mapped arrays)."""
    from pipeline.sweep.runner import run_sweep

    root = tmp_path_factory.mktemp("routed")
    kw = dict(grid=f"k=2,3; tau=0.1,1; budget=20; epochs=3; {FAST}", seeds=2, stage="all", log=quiet, plots=False)
    one = run_sweep(run, jobs=1, out=root / "one.parquet", **kw)
    two = run_sweep(run, jobs=2, out=root / "two.parquet", **kw)
    return one, two, kw


def test_jobs2_equals_jobs1(routed_local):
    one, two, _ = routed_local
    assert one.new == two.new == 8
    assert one.frame["error"].is_null().all(), one.frame["error"].to_list()
    assert one.frame["fit_reused"].sum() == 4  # one fit per (fit config, seed), two routers each
    assert {"routed_acc_macro", "routed_acc_g0", "acc_g0"} <= set(one.frame.columns)
    assert_same(one.frame, two.frame)


def test_ray_equals_local(run, routed_local, tmp_path):
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'micro-rm[ray]')")
    from pipeline.sweep.runner import run_sweep

    one, _, kw = routed_local
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        res = run_sweep(run, backend="ray", jobs=2, out=tmp_path / "ray.parquet", **kw)
    finally:
        ray.shutdown()
    assert res.new == 8 and res.frame["error"].is_null().all(), res.frame["error"].to_list()
    assert_same(one.frame, res.frame, atol=1e-9)


def test_k_selection_true_k_and_one_se_rule(tmp_path):
    from heads.synthetic import make_mixture
    from pipeline.core.run import Run
    from pipeline.sweep.runner import run_sweep

    d = make_mixture(n=2500, d=DIM, p=DIM, k=K_TRUE, seed=3)
    split = np.where(np.arange(2500) % 5 == 0, "test", "train")
    data = Run.from_arrays(d["delta"], d["prompt"], split)
    res = run_sweep(data, "k=int:1..5; n_init=2; max_iter=60", seeds=3, jobs=1, out=tmp_path / "k.parquet", log=quiet)
    sel = res.k_selection
    assert abs(sel.chosen_k - K_TRUE) <= 1, sel.reason
    # the one-SE rule, recomputed from the table
    per_k = {}
    for r in res.frame.filter(pl.col("error").is_null()).iter_rows(named=True):
        per_k.setdefault(r["k"], []).append(r["val_loglik"])
    assert sorted(per_k) == [r["k"] for r in sel.table] == [1, 2, 3, 4, 5]
    mean = {k: np.mean(v) for k, v in per_k.items()}
    best = max(mean, key=mean.get)
    se = np.std(per_k[best], ddof=1) / math.sqrt(len(per_k[best]))
    assert sel.best_k == best and math.isclose(sel.threshold, mean[best] - se, rel_tol=1e-9)
    assert sel.chosen_k == min(k for k in mean if mean[k] >= mean[best] - se)
    assert f"K={sel.chosen_k}" in sel.reason and (tmp_path / "k_k_selection.png").exists()
    assert (tmp_path / "k_k.png").exists()


def test_random_search_ranges_and_determinism():
    from pipeline.sweep.space import grid_configs, parse_space, random_configs

    space = parse_space("tau=log:1e-4..1e-2; alpha=0..1; k=int:1..16; init=kmeans,random")
    a = random_configs(space, 40, seed=7)
    assert len(a) == 40 and a == random_configs(space, 40, seed=7) and a != random_configs(space, 40, seed=8)
    for c in a:
        assert 1e-4 <= c["tau"] <= 1e-2 and 0 <= c["alpha"] <= 1 and c["init"] in ("kmeans", "random")
        assert isinstance(c["k"], int) and 1 <= c["k"] <= 16
    taus = np.log10([c["tau"] for c in a])
    assert taus.min() < -3.3 and taus.max() > -2.7  # log-uniform spreads over the decades
    assert len(grid_configs(parse_space("k=1,2,5; alpha=0,0.5; l2=1e-4,1e-3,1e-2"))) == 18
    assert [c["k"] for c in grid_configs(parse_space("k=int:2..4"))] == [2, 3, 4]
    with pytest.raises(MicroError, match="range"):
        grid_configs(parse_space("alpha=0..1"))
    with pytest.raises(MicroError, match="unknown hyperparameter"):
        parse_space("kk=1")


def test_k_candidates():
    from pipeline.sweep.report import k_candidates

    assert k_candidates(1, 16) == [1, 2, 4, 6, 8, 10, 12, 16]
    assert k_candidates(1, 12) == [1, 2, 4, 6, 8, 10, 12]
    assert k_candidates(3, 7) == [3, 4, 5, 6, 7]


@pytest.mark.filterwarnings("ignore:Best restart did not converge")
def test_cli_sweep_and_fit_k_auto(run, tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    import pipeline.core.parallel as B
    from cli import app

    r = CliRunner().invoke(
        app,
        [
            "sweep",
            str(run),
            "--grid",
            f"k=1,2; {FAST}",
            "--seeds",
            "2",
            "--jobs",
            "1",
            "--out",
            str(tmp_path / "s" / "res.parquet"),
        ],
    )
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "top 2 configurations by test_acc_macro" in text and "(4 new, 0 already there)" in text
    monkeypatch.setattr(B, "n_cores", lambda: 1)  # --jobs default = cores: run the K sweep in this process
    r = CliRunner().invoke(
        app,
        [
            "fit",
            str(run),
            "--k",
            "auto",
            "--k-range",
            "1..4",
            "--n-init",
            "1",
            "--max-iter",
            "40",
            "--gate-dim",
            "4",
            "--out",
            str(tmp_path / "m"),
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    sel = json.loads((tmp_path / "m" / "k_selection" / "k_selection.json").read_text())
    trials = pl.read_parquet(tmp_path / "m" / "k_selection" / "results.parquet")
    assert set(trials["gate_dim"].to_list()) == {"4"}  # K is chosen with the options of the final fit
    assert meta["k_selection"]["chosen_k"] == sel["chosen_k"] and sel["candidates"] == [1, 2, 3, 4]
    assert f"fitting the final model with K={sel['chosen_k']}" in " ".join(r.output.split())
    assert (tmp_path / "m" / "k_selection" / "results_k_selection.png").exists()
