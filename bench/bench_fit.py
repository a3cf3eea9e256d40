"""Benchmark of the EM fit on HelpSteer2-sized synthetic mixture features (N=23,500, d=p=3,072, float32).

Prints, from ONE run:
  1. median seconds per EM iteration / median seconds of one (N x d) @ (d x K) matmul (torch and numpy
     baselines measured in the same run), for K=5 and K=10, full width and with dim=gate_dim=256;
  2. time for EM to reach a held-out NLL within 1e-3 of the best either method attains, vs
     optimizer="adamw" (paper settings: batch 32, lr 2e-3, 5 % warm-up, cosine) for 1 and 3 epochs
     (10 with --ten-epochs);
  3. wall seconds of a full K=10 fit with all restarts (n_init=4).

    python bench/bench_fit.py [--quick] [--ten-epochs] [--full-width-fit]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from heads import MixtureBT  # noqa: E402
from heads import gate as G  # noqa: E402
from heads.em import run_em  # noqa: E402
from heads.objective import Problem  # noqa: E402
from heads.initialise import initialise, sketch  # noqa: E402
from heads.sgd import run_adamw  # noqa: E402
from heads.synthetic import make_helpsteer2_like, split  # noqa: E402


def median_time(f, reps=7):
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def heldout_nll(prob_te: Problem, theta):
    return prob_te.evaluate(theta, grads=()).nll


def em_iteration_ratio(D, X, K, iters, mm):
    prob = Problem(D, X, K, "linear", 0.5, 1e-3)
    W0, r0 = initialise("gate-kmeans", K, D.shape[1], 0, prompt_sketch=sketch(X, 128, np.random.default_rng(0)))
    theta0 = prob.packer.pack(W0, G.init_gate_params("linear", K, X.shape[1]))
    at0 = []
    res = run_em(prob, theta0, r0, max_iter=iters, tol=0.0, init_m_steps=3,
                 on_eval=lambda it, ev: at0.append(prob.n_evals) if it == 0 else None)
    t_it = float(np.median(res.times[1:]))
    return t_it, t_it / mm, (prob.n_evals - at0[0]) / max(1, res.n_iter)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer iterations everywhere")
    ap.add_argument("--ten-epochs", action="store_true", help="also run the 10-epoch AdamW schedule")
    ap.add_argument("--full-width-fit", action="store_true", help="also time the n_init=4 fit without projection")
    ap.add_argument("--em-iters", type=int, default=300, help="max EM iterations in the EM-vs-AdamW race")
    args = ap.parse_args()
    print(f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")

    t0 = time.perf_counter()
    data = make_helpsteer2_like(n=23500 + 2350, k=10)
    tr, te = split(data, 23500)
    D, X = tr["delta"], tr["prompt"]
    print(f"data: train {D.shape} {D.dtype}, held-out {te['delta'].shape[0]} rows, generated in "
          f"{time.perf_counter() - t0:.1f}s; Bayes held-out acc {te['bayes_accuracy']:.3f}")

    # ---- 1. per-iteration cost vs one matmul
    rows = []
    Dt = torch.from_numpy(D)
    for K in (5, 10):
        W = np.random.default_rng(0).standard_normal((K, D.shape[1])).astype(np.float32)
        mm_t = median_time(lambda: Dt @ torch.from_numpy(W).T)
        mm_n = median_time(lambda: D @ W.T)
        mm = min(mm_t, mm_n)
        it_full, r_full, ev_full = em_iteration_ratio(D, X, K, 8 if args.quick else 20, mm)
        m = MixtureBT(n_components=K, dim=256, gate_dim=256, random_state=0)
        Dp = np.ascontiguousarray(D @ m._fit_projection(D, 256).T.astype(np.float32))
        Xp = np.ascontiguousarray(X @ m._fit_projection(X, 256).T.astype(np.float32))
        it_p, r_p, ev_p = em_iteration_ratio(Dp, Xp, K, 8 if args.quick else 20, mm)
        rows.append((K, mm_t, mm_n, it_full, r_full, ev_full, it_p, r_p, ev_p))
    print("\n1. seconds per EM iteration / seconds of one (N x d)@(d x K) matmul (min of torch, numpy)")
    print(f"{'K':>3} {'mm torch':>9} {'mm numpy':>9} | {'EM it full':>10} {'ratio':>6} {'evals/it':>8} | "
          f"{'EM it 256':>9} {'ratio':>6} {'evals/it':>8}")
    for K, mt, mn, itf, rf, ef, itp, rp, ep in rows:
        print(f"{K:>3} {mt:9.4f} {mn:9.4f} | {itf:10.4f} {rf:6.2f} {ef:8.2f} | {itp:9.4f} {rp:6.2f} {ep:8.2f}")

    # ---- 2. EM vs AdamW time to held-out NLL (K=10, full width, same init incl. the first M-step)
    K = 10
    prob = Problem(D, X, K, "linear", 0.5, 1e-3)
    prob_te = Problem(te["delta"], te["prompt"], K, "linear", 0.5, 1e-3)
    t_init0 = time.perf_counter()
    W0, r0 = initialise("gate-kmeans", K, D.shape[1], 0, prompt_sketch=sketch(X, 128, np.random.default_rng(0)))
    theta0 = prob.packer.pack(W0, G.init_gate_params("linear", K, X.shape[1]))
    t_kmeans = time.perf_counter() - t_init0
    trace = []  # (seconds of fitting so far, held-out nll)
    overhead = [0.0]
    t_em0 = time.perf_counter()

    def on_eval(it, ev):
        t = time.perf_counter()
        trace.append((t - t_em0 - overhead[0] + t_kmeans, heldout_nll(prob_te, ev.theta)))
        overhead[0] += time.perf_counter() - t

    res = run_em(prob, theta0, r0, max_iter=60 if args.quick else args.em_iters, tol=1e-6, on_eval=on_eval)
    em_total = trace[-1][0]
    # the same starting point for AdamW: k-means responsibilities + the first M-step
    t_a0 = time.perf_counter()
    start = run_em(prob, theta0, r0, max_iter=0)
    t_start = time.perf_counter() - t_a0 + t_kmeans
    adam = {}
    for ep in ([1, 3] + ([10] if args.ten_epochs else [])):
        t = time.perf_counter()
        th, _ = run_adamw(prob, start.theta, epochs=ep, seed=0)
        adam[ep] = (t_start + time.perf_counter() - t, heldout_nll(prob_te, th))
    best = min(min(v for _, v in trace), min(v for _, v in adam.values()))
    target = best + 1e-3
    em_hit = next((t for t, v in trace if v <= target), None)
    print(f"\n2. held-out NLL race (K=10, full width); best NLL {best:.4f}, target {target:.4f}")
    print(f"   EM: {res.n_iter} iterations in {em_total:.1f}s (k-means {t_kmeans:.1f}s incl.), final NLL "
          f"{trace[-1][1]:.4f}, reaches target at {'%.1fs' % em_hit if em_hit is not None else 'never'}")
    for ep, (t, v) in adam.items():
        ok = v <= target
        sp = f"{t / em_hit:.1f}x" if (em_hit and ok) else "-"
        print(f"   AdamW {ep:>2} epoch(s): {t:7.1f}s  NLL {v:.4f}  reaches target: {ok}  EM speed-up {sp}")
    if em_hit is not None:
        print(f"   EM speed-up vs the AdamW run with the best NLL: "
              f"{min(adam.values(), key=lambda x: x[1])[0] / em_hit:.1f}x")

    # ---- 3. full K=10 fit with all restarts
    print("\n3. full K=10 fit, n_init=4, max_iter=200, tol=1e-6")
    configs = [dict(dim=256, gate_dim=256)] + ([{}] if args.full_width_fit else [])
    for kw in configs:
        m = MixtureBT(n_components=10, n_init=4, random_state=0, max_iter=60 if args.quick else 200, **kw)
        t = time.perf_counter()
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m.fit(D, X)
        wall = time.perf_counter() - t
        print(f"   {kw or 'full width'}: {wall:.1f}s wall, iterations of best restart {m.n_iter_}, converged "
              f"{m.converged_}, held-out NLL {-m.score(te['delta'], te['prompt']):.4f}, "
              f"acc {np.mean(m.predict_proba(te['delta'], te['prompt']) > 0.5):.3f}")


if __name__ == "__main__":
    main()
