"""`micro demo` (pipeline/demo.py): every stage on the bundled DSP sample, here with a fast fake embedder.

The real-model run (bundled all-MiniLM-L6-v2 on ~1,200 unique DSP texts) takes minutes on CPU, over the
60 s budget of a slow test, so it is not run here; `micro demo` itself is the end-to-end check of that path.
"""

from __future__ import annotations

import sys

import polars as pl
import pytest

from conftest import FakeBackend

DOMAINS = ("academy", "business", "entertainment", "literature")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """run_demo(k=2, seeds=1) with FakeBackend; returns (result, out folder, log lines, built backends)."""
    import pipeline.embed.backends
    from pipeline.demo import run_demo

    out = tmp_path_factory.mktemp("demo") / "demo"
    built, lines = [], []

    def get_backend(name, model=None, **kw):
        built.append(FakeBackend(dim=16))
        return built[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline.embed.backends, "get_backend", get_backend)
        res = run_demo(out, k=2, seeds=1, cache_dir=out.parent / "cache", log=lines.append)
    return res, out, lines, built


def test_demo_writes_every_stage(demo):
    from pipeline.core.bundle import read_meta
    from pipeline.evaluate.evaluate import METHODS

    res, out, lines, built = demo
    assert res["out"] == out and res["seconds"] > 0
    for p in ("pairs.parquet", "run/run.json", "model/model.json", "model-routed/model.json", "report/results.csv"):
        assert (out / p).exists(), p
    df = pl.read_csv(out / "report" / "results.csv")
    assert sorted(set(df["method"].to_list())) == sorted(METHODS) and len(METHODS) == 8
    assert set(df["group"].to_list()) == {*DOMAINS, "macro"}
    assert df.height == 8 * 5
    assert len(read_meta(out / "model")["fitted"]["mixture_weights_"]) == 2
    assert read_meta(out / "model-routed")["gate_input"] == "context"
    assert res["route"].after.shape == (1, 4) and res["route"].groups == list(DOMAINS)
    assert [m[:5] for m in lines if m.startswith("[")] == [f"[{i}/6]" for i in range(1, 7)]
    # the embedder was built three times: embed, route (user data), score
    assert len(built) == 3


def test_demo_picks_one_response_per_domain(demo):
    import pyarrow.parquet as pq

    res, out, *_ = demo
    assert set(res["picks"]) == {"academy", "entertainment"}
    pairs = pq.read_table(out / "run" / "pairs.parquet").to_pylist()
    prompt = next(r["prompt"] for r in pairs if r["split"] == "test")
    assert res["prompt"] == prompt[-1]["content"]
    candidates = {r[c] for r in pairs if r["prompt"] == prompt for c in ("chosen", "rejected")}
    assert all(text in candidates for text in res["picks"].values())


def test_demo_rerun_embeds_nothing(demo, tmp_path, monkeypatch):
    import pipeline.embed.backends
    from pipeline.demo import run_demo

    res, out, *_ = demo
    built = []
    monkeypatch.setattr(
        pipeline.embed.backends, "get_backend", lambda *a, **k: built.append(FakeBackend(dim=16)) or built[-1]
    )
    lines = []
    run_demo(tmp_path / "again", k=2, seeds=1, cache_dir=out.parent / "cache", log=lines.append)
    assert all(b.embedded == [] for b in built), [len(b.embedded) for b in built]
    assert any(" 0 embedded" in m for m in lines), lines


def test_cli_demo(demo, tmp_path, monkeypatch, capsys):
    import cli
    import pipeline.embed.backends

    res, out, *_ = demo
    monkeypatch.setattr(pipeline.embed.backends, "get_backend", lambda *a, **k: FakeBackend(dim=16))
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "micro",
            "demo",
            "--out",
            str(tmp_path / "cli"),
            "--k",
            "2",
            "--seeds",
            "1",
            "--cache-dir",
            str(out.parent / "cache"),
        ],
    )
    try:
        cli.main()
    except SystemExit as exc:
        assert exc.code == 0
    captured = capsys.readouterr()
    assert "| micro |" in captured.out and "| oracle |" in captured.out
    assert "best response for a user who says they are into academy" in captured.err
    assert "demo finished" in captured.err and (tmp_path / "cli" / "report" / "results.csv").exists()
