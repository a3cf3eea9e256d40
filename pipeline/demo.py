"""`micro demo`: the whole pipeline on the bundled DSP sample, on CPU, with the bundled embedder.

prepare → embed → fit → route → eval → score (one query under two user contexts).
"""

from __future__ import annotations

import time
from pathlib import Path

from heads.defaults import DEMO_SEEDS, N_COMPONENTS

SAMPLE = Path(__file__).parent / "sample" / "dsp_sample.json"


def run_demo(
    out: str | Path,
    *,
    k: int = N_COMPONENTS,
    seeds: int = DEMO_SEEDS,
    cache_dir: str | Path | None = None,
    progress_factory=None,
    log=print,
) -> dict:
    """Run every stage into ``out``; returns the paths and the evaluation result."""
    from pipeline.data.prepare import prepare
    from pipeline.data.recipes.dsp import DOMAIN_CONTEXT
    from pipeline.embed.backends import get_backend
    from pipeline.embed.embed import embed_pairs
    from pipeline.evaluate.evaluate import evaluate
    from pipeline.fit.fit import fit_run
    from pipeline.route.route import route
    from pipeline.route.score import RewardModel

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log(f"[1/6] prepare: {SAMPLE.name} (DSP, CC BY-NC 4.0, see {SAMPLE.parent / 'README.md'})")
    prepare("dsp", [SAMPLE], out / "pairs.parquet")
    log("[2/6] embed with the bundled all-MiniLM-L6-v2 (cached: a rerun embeds nothing)")
    backend = get_backend("sentence-transformers")
    try:
        s = embed_pairs(
            out / "pairs.parquet", out / "run", backend, cache_dir=cache_dir, progress_factory=progress_factory
        )
    finally:
        backend.close()
    log(
        f"      {s.unique_texts} unique texts, {s.cache_hits} cached, {s.embedded} embedded, "
        f"{s.truncated} truncated, {s.seconds:.1f} s"
    )
    log(f"[3/6] fit: K={k} heads + context gate by EM")
    rep = fit_run(out / "run", k=k, out=out / "model", random_state=0)
    log(f"      test accuracy {rep.metrics['test']['accuracy']:.3f}, {rep.seconds:.1f} s")
    log("[4/6] route: router on 50 labelled pairs per domain (Alg. 1)")
    res = route(
        out / "model",
        out / "run" / "pairs.parquet",
        out / "model-routed",
        seeds=tuple(range(seeds)),
        log=lambda m: None,
    )
    log(
        f"      held-out macro accuracy: Stage-1 gate {res.before.mean():.3f} → routed "
        f"{res.after.mean(axis=1).mean():.3f} ± {res.after.mean(axis=1).std():.3f}"
    )
    log("[5/6] eval: the paper's table, figures and results.csv")
    ev = evaluate(out / "model", out / "run", report=out / "report", seeds=tuple(range(seeds)), log=lambda m: None)
    log("[6/6] score: one held-out query's five responses under two user contexts")
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    pairs = pq.read_table(out / "run" / "pairs.parquet")
    test = pairs.filter(pc.equal(pairs.column("split"), "test"))
    prompt = test.column("prompt")[0].as_py()
    same = test.filter(pc.equal(test.column("group"), test.column("group")[0]))
    responses = sorted(
        {
            r
            for col in ("chosen", "rejected")
            for r, p in zip(same.column(col).to_pylist(), same.column("prompt").to_pylist())
            if p == prompt
        }
    )
    rm = RewardModel.load(out / "model-routed")
    picks = {}
    try:
        for domain in ("academy", "entertainment"):
            r = rm.rewards([prompt] * len(responses), responses, context=DOMAIN_CONTEXT[domain])["reward"]
            picks[domain] = responses[int(r.argmax())]
    finally:
        rm.close()
    return {
        "eval": ev,
        "route": res,
        "picks": picks,
        "prompt": prompt[-1]["content"],
        "out": out,
        "seconds": time.perf_counter() - t0,
    }


def demo_command(out: Path, *, k: int, seeds: int, cache_dir: Path | None, console) -> None:
    """``micro demo``: the whole pipeline, then the table, the figures and the two users' picks."""
    from pipeline import checks as C
    from pipeline.boundary import console_log
    from pipeline.embed.command import progress_factory
    from pipeline.errors import printable

    say = console_log(console)  # the sample's texts print literally (no markup)

    C.integer(k, "--k")
    C.integer(seeds, "--seeds")
    C.out_dir(out, "--out")
    C.cache_dir(cache_dir)
    factory, _ = progress_factory(console)
    res = run_demo(
        out,
        k=k,
        seeds=seeds,
        cache_dir=cache_dir,
        progress_factory=factory,
        log=say,
    )
    print(printable(res["eval"].markdown()))
    say(f"query: {res['prompt'][:100]!r}")
    for domain, text in res["picks"].items():
        say(f"  best response for a user who says they are into {domain}: {text[:100]!r}…")
    for p in [*res["eval"].files, *res["eval"].plots]:
        say(f"written: {p}")
    say(f"demo finished in {res['seconds']:.0f} s; outputs in {res['out']}")
