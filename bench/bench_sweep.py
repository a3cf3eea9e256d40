"""Benchmark of ``micro sweep`` (local backend) on HelpSteer2-sized synthetic features.

One run of a 48-trial sweep: K ∈ {1, 2, 5, 10} × alpha ∈ {0, 0.5} × l2 ∈ {1e-4, 1e-3, 1e-2} × 2 seeds on
23,500 × 3,072 float32 features (heads.synthetic.make_helpsteer2_like, 10 true heads; the gate reads the
3,072-d prompt features); every fit uses dim = gate_dim = 256 (uncentred PCA of the deltas / prompts),
n_init = 1 and max_iter = 100 by default so the sweep finishes in minutes on 2 cores. Prints:

  1. parallel efficiency = Σ single-trial wall seconds ÷ (sweep wall seconds × cores), measured in this one run
     (the sweep wall includes writing the shared .npy files and starting the workers);
  2. the sweep's wall time vs re-embedding the run's texts once per trial with the default embedder (what a
     pipeline without the embedding cache pays): 48 × unique texts ÷ texts/s, with the documented 28 texts/s of
     all-MiniLM-L6-v2 on 2 CPU cores (``--texts-per-s`` to change) and unique texts = 2 responses per pair +
     one prompt per 2 pairs (HelpSteer2 has about two pairs per prompt) = 58,750.

    python bench/bench_sweep.py [--quick] [--jobs 2] [--max-iter 100] [--dim 256]

``--quick``: the same 48-trial grid on 6,000 × 768 features, dim = gate_dim = 64, max_iter = 30.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from heads.synthetic import make_helpsteer2_like  # noqa: E402
from pipeline.core.parallel import n_cores  # noqa: E402
from pipeline.core.run import Run  # noqa: E402
from pipeline.sweep.runner import run_sweep  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="6,000 x 768 features, dim 64, max_iter 30")
    ap.add_argument("--jobs", type=int, default=None, help="workers (default: cores)")
    ap.add_argument("--max-iter", type=int, default=None)
    ap.add_argument("--dim", type=int, default=None, help="PCA dims of deltas and prompts (dim = gate_dim)")
    ap.add_argument("--texts-per-s", type=float, default=28.0, help="embedding throughput of the default embedder")
    ap.add_argument("--backend", default="local", choices=("local", "ray"))
    a = ap.parse_args()
    n, d = (6000, 768) if a.quick else (23500, 3072)
    dim = a.dim or (64 if a.quick else 256)
    max_iter = a.max_iter or (30 if a.quick else 100)
    cores = n_cores()
    jobs = a.jobs or cores

    t0 = time.perf_counter()
    data = make_helpsteer2_like(n=n, d=d, p=d, seed=0)
    rng = np.random.default_rng(0)
    prompt_id = np.arange(n) // 2  # two pairs per prompt
    test_prompts = rng.random(n // 2 + 1) < 0.2  # test split grouped by prompt
    split = np.where(test_prompts[prompt_id], "test", "train")
    groups = np.array([f"c{c}" for c in data["clusters"]])
    sd = Run.from_arrays(
        data["delta"],
        data["prompt"],
        split,
        group=groups,
        prompt_id=prompt_id,
        fingerprint_id="bench-helpsteer2-like",
        unique_texts=2 * n + n // 2,
    )
    del data
    print(
        f"data: {n} x {d} float32 (+ prompts {n} x {d}), {time.perf_counter() - t0:.1f} s to generate; "
        f"{cores} cores, {jobs} workers",
        flush=True,
    )

    grid = f"k=1,2,5,10; alpha=0,0.5; l2=1e-4,1e-3,1e-2; dim={dim}; gate_dim={dim}; n_init=1; max_iter={max_iter}"
    print(f"grid: {grid} × 2 seeds (holdout 20 % of the train prompts)", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        t0 = time.perf_counter()
        res = run_sweep(
            sd,
            grid,
            seeds=2,
            jobs=jobs,
            backend=a.backend,
            out=os.path.join(tmp, "results.parquet"),
            plots=False,
            log=lambda m: print(m, flush=True) if m.startswith("sweep") else None,
        )
        wall = time.perf_counter() - t0
    f = res.frame
    ok = f.filter(f["error"].is_null())
    if ok.height != f.height:
        print("errors:", f["error"].drop_nulls().unique().to_list())
    trial_sum = float(f["wall_seconds"].sum())
    eff = trial_sum / (wall * cores)
    print(f"\ntrials: {f.height} ({ok.height} ok) | sweep wall {wall:.1f} s | Σ single-trial {trial_sum:.1f} s")
    for k in sorted(set(ok["k"].to_list())):
        s = ok.filter(ok["k"] == k)
        print(
            f"  K={k:2d}: median trial {np.median(s['wall_seconds'].to_numpy()):6.2f} s, "
            f"median EM iterations {np.median(s['n_iter'].to_numpy()):.0f}, "
            f"test macro acc {s['test_acc_macro'].mean():.3f}"
        )
    print(f"parallel efficiency = {trial_sum:.1f} / ({wall:.1f} × {cores}) = {eff:.1%}  (target ≥ 75 %)")
    texts = sd.info["summary"]["unique_texts"]
    reembed = f.height * texts / a.texts_per_s
    print(
        f"re-embedding per trial: {f.height} × {texts:,} texts ÷ {a.texts_per_s:g} texts/s = {reembed:,.0f} s "
        f"({reembed / 3600:.1f} h) vs this sweep {wall:.1f} s -> ratio {reembed / wall:,.0f}×"
    )
    best = ok.sort("val_loglik", descending=True).row(0, named=True)
    print(
        f"best by validation log-lik: K={best['k']} alpha={best['alpha']} l2={best['l2']} "
        f"(val {best['val_loglik']:.4f}, test macro acc {best['test_acc_macro']:.3f})"
    )


if __name__ == "__main__":
    main()
