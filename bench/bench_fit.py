"""Benchmark of the EM fit on HelpSteer2-sized synthetic mixture features (N=23,500, d=p=3,072, float32).

Prints, from ONE run (``--only`` picks sections):
  1. ``iter``: median seconds per EM iteration / median seconds of one (N x d) @ (d x K) matmul (torch and
     numpy baselines measured in the same run), for K=5 and K=10, full width and with dim=gate_dim=256;
  2. ``race``: time for EM to reach a held-out NLL within 1e-3 of the best either method attains, vs
     optimizer="adamw" (paper settings: batch 32, lr 2e-3, 5 % warm-up, cosine) for 1 and 3 epochs
     (10 with --ten-epochs);
  3. ``fit``: the LLM-width K=10 fit with DEFAULTS (held-out selection of L2 and width, calibration): wall seconds
     and held-out accuracy, against the best fixed (l2, dim) of a grid, each grid fit timed too;
  4. ``memory``: peak RSS of a default fit on N=200,000 x d=1,024 float16 features (in a fresh process) / the
     size of those features, and seconds per objective pass at N = 50k, 100k, 200k (linear in N).

    python bench/bench_fit.py [--quick] [--ten-epochs] [--only iter,race,fit,memory]
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
from heads.fitting import fit_projection  # noqa: E402
from heads.initialise import Sketch, initialise  # noqa: E402
from heads.objective import Problem  # noqa: E402
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
    W0, r0 = initialise(
        "gate-kmeans", K, D.shape[1], 0, rows=np.arange(len(D)), prompt_sketch=Sketch(X, 128, np.random.default_rng(0))
    )
    theta0 = prob.packer.pack(W0, G.init_gate_params("linear", K, X.shape[1]))
    at0 = []
    res = run_em(
        prob,
        theta0,
        r0,
        max_iter=iters,
        tol=0.0,
        init_m_steps=3,
        on_eval=lambda it, ev: at0.append(prob.n_evals) if it == 0 else None,
    )
    t_it = float(np.median(res.times[1:]))
    return t_it, t_it / mm, (prob.n_evals - at0[0]) / max(1, res.n_iter)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer iterations everywhere")
    ap.add_argument("--ten-epochs", action="store_true", help="also run the 10-epoch AdamW schedule")
    ap.add_argument("--only", default="iter,race,fit,memory", help="sections to run (iter, race, fit, memory)")
    ap.add_argument("--memory-child", nargs=2, metavar=("N", "D"), help=argparse.SUPPRESS)
    ap.add_argument("--em-iters", type=int, default=300, help="max EM iterations in the EM-vs-AdamW race")
    args = ap.parse_args()
    if args.memory_child:
        return memory_child(int(args.memory_child[0]), int(args.memory_child[1]))
    only = set(args.only.split(","))
    print(f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")

    if only & {"iter", "race", "fit"}:
        t0 = time.perf_counter()
        data = make_helpsteer2_like(n=23500 + 2350, k=10)
        tr, te = split(data, 23500)
        D, X = tr["delta"], tr["prompt"]
        print(
            f"data: train {D.shape} {D.dtype}, held-out {te['delta'].shape[0]} rows, generated in "
            f"{time.perf_counter() - t0:.1f}s; Bayes held-out acc {te['bayes_accuracy']:.3f}"
        )
    if "iter" in only:
        iteration_costs(D, X, args)
    if "race" in only:
        race(D, X, te, args)
    if "fit" in only:
        llm_fit(D, X, te, args)
    if "memory" in only:
        memory(args)


def iteration_costs(D, X, args):
    """1. per-iteration cost vs one matmul"""
    rows = []
    Dt = torch.from_numpy(D)
    for K in (5, 10):
        W = np.random.default_rng(0).standard_normal((K, D.shape[1])).astype(np.float32)
        mm_t = median_time(lambda W=W: Dt @ torch.from_numpy(W).T)
        mm_n = median_time(lambda W=W: D @ W.T)
        mm = min(mm_t, mm_n)
        it_full, r_full, ev_full = em_iteration_ratio(D, X, K, 8 if args.quick else 20, mm)
        Dp = np.ascontiguousarray(D @ fit_projection(D, 256, 0).T.astype(np.float32))
        Xp = np.ascontiguousarray(X @ fit_projection(X, 256, 0).T.astype(np.float32))
        it_p, r_p, ev_p = em_iteration_ratio(Dp, Xp, K, 8 if args.quick else 20, mm)
        rows.append((K, mm_t, mm_n, it_full, r_full, ev_full, it_p, r_p, ev_p))
    print("\n1. seconds per EM iteration / seconds of one (N x d)@(d x K) matmul (min of torch, numpy)")
    print(
        f"{'K':>3} {'mm torch':>9} {'mm numpy':>9} | {'EM it full':>10} {'ratio':>6} {'evals/it':>8} | "
        f"{'EM it 256':>9} {'ratio':>6} {'evals/it':>8}"
    )
    for K, mt, mn, itf, rf, ef, itp, rp, ep in rows:
        print(f"{K:>3} {mt:9.4f} {mn:9.4f} | {itf:10.4f} {rf:6.2f} {ef:8.2f} | {itp:9.4f} {rp:6.2f} {ep:8.2f}")


def race(D, X, te, args):
    """2. EM vs AdamW time to held-out NLL (K=10, full width, same init incl. the first M-step)"""
    K = 10
    prob = Problem(D, X, K, "linear", 0.5, 1e-3)
    prob_te = Problem(te["delta"], te["prompt"], K, "linear", 0.5, 1e-3)
    t_init0 = time.perf_counter()
    W0, r0 = initialise(
        "gate-kmeans", K, D.shape[1], 0, rows=np.arange(len(D)), prompt_sketch=Sketch(X, 128, np.random.default_rng(0))
    )
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
    for ep in [1, 3] + ([10] if args.ten_epochs else []):
        t = time.perf_counter()
        th, _ = run_adamw(prob, start.theta, epochs=ep, seed=0)
        adam[ep] = (t_start + time.perf_counter() - t, heldout_nll(prob_te, th))
    best = min(min(v for _, v in trace), min(v for _, v in adam.values()))
    target = best + 1e-3
    em_hit = next((t for t, v in trace if v <= target), None)
    print(f"\n2. held-out NLL race (K=10, full width); best NLL {best:.4f}, target {target:.4f}")
    print(
        f"   EM: {res.n_iter} iterations in {em_total:.1f}s (k-means {t_kmeans:.1f}s incl.), final NLL "
        f"{trace[-1][1]:.4f}, reaches target at {'%.1fs' % em_hit if em_hit is not None else 'never'}"
    )
    for ep, (t, v) in adam.items():
        ok = v <= target
        sp = f"{t / em_hit:.1f}x" if (em_hit and ok) else "-"
        print(f"   AdamW {ep:>2} epoch(s): {t:7.1f}s  NLL {v:.4f}  reaches target: {ok}  EM speed-up {sp}")
    if em_hit is not None:
        print(
            f"   EM speed-up vs the AdamW run with the best NLL: "
            f"{min(adam.values(), key=lambda x: x[1])[0] / em_hit:.1f}x"
        )


def _fit_and_score(te, D, X, **kw):
    import warnings

    m = MixtureBT(n_components=10, random_state=0, **kw)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.fit(D, X)
    return m, time.perf_counter() - t, float(np.mean(m.predict_proba(te["delta"], te["prompt"]) > 0.5))


def llm_fit(D, X, te, args):
    """3. the default fit (selection on) vs the best fixed setting of a grid"""
    print("\n3. LLM-width fit, K=10, defaults (held-out selection of L2 and width, calibration)")
    m, wall, acc = _fit_and_score(te, D, X, max_iter=60 if args.quick else 200)
    sel = m.selection_
    print(
        f"   defaults: {wall:.1f}s wall (selection {sel.get('seconds', 0):.1f}s, {len(sel.get('path', []))} path "
        f"fits), chose l2 {m.l2_:.3g} gate l2 {m.gate_l2_:.3g} width {m.dim_}, T {m.temperature_:.3f}; "
        f"held-out acc {acc:.4f}, NLL {-m.score(te['delta'], te['prompt']):.4f}"
    )
    grid = [(l2, dim) for dim in (64, 256) for l2 in ((1e-3, 1e-1) if args.quick else (1e-4, 1e-3, 1e-2, 1e-1))]
    res = []
    for l2, dim in grid:
        _, w, a = _fit_and_score(
            te, D, X, l2=l2, dim=dim, gate_dim=dim, calibrate=False, max_iter=60 if args.quick else 200
        )
        res.append((a, l2, dim, w))
        print(f"   grid l2={l2:g} dim={dim}: held-out acc {a:.4f} ({w:.1f}s)")
    best = max(res)
    print(
        f"   best grid setting l2={best[1]:g} dim={best[2]}: {best[0]:.4f}; defaults - best = {acc - best[0]:+.4f} "
        f"(target >= -0.005), defaults wall {wall:.1f}s (target < 90 s)"
    )


def memory_child(n: int, d: int) -> None:
    """(in a fresh process) a default fit on float16 features; prints peak RSS and the features' bytes"""
    import resource
    import warnings

    rng = np.random.default_rng(0)
    D = np.empty((n, d), np.float16)
    X = np.empty((n, d), np.float16)
    w = rng.standard_normal((4, d)).astype(np.float32) / np.sqrt(d)
    for s in range(0, n, 8192):  # generated in chunks: no float64 copy of the data ever exists
        e = min(n, s + 8192)
        c = rng.integers(0, 4, e - s)
        X[s:e] = (rng.standard_normal((e - s, d), dtype=np.float32) + 3 * w[c] * np.sqrt(d)).astype(np.float16)
        Dc = rng.standard_normal((e - s, d), dtype=np.float32)
        sign = np.where(rng.random(e - s) < 1 / (1 + np.exp(-(Dc * w[c]).sum(1) * 4)), 1, -1)
        D[s:e] = (Dc * sign[:, None]).astype(np.float16)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = MixtureBT(n_components=10, random_state=0, max_iter=50).fit(D, X)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"MEMORY {peak} {base} {D.nbytes + X.nbytes} {time.perf_counter() - t:.1f} {m.dim_}")


def memory(args):
    """4. peak RSS of a float16 fit, and time per pass vs N"""
    import subprocess

    n, d = (50_000 if args.quick else 200_000), 1024
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(n), str(d)], capture_output=True, text=True, check=True
    ).stdout
    peak, base, size, wall, dim = out.split("MEMORY ")[1].split()
    peak, base, size = int(peak), int(base), int(size)
    print(
        f"\n4. default K=10 fit on N={n:,} x d={d} float16 delta + prompt ({size / 2**30:.2f} GiB): peak RSS "
        f"{peak / 2**30:.2f} GiB = {peak / size:.2f} x the features (target <= 2; before the fit, with the data "
        f"and the interpreter, {base / 2**30:.2f} GiB); fit {float(wall):.1f}s, width {dim}"
    )
    rng = np.random.default_rng(0)
    K, times = 10, []
    sizes = (12_500, 25_000, 50_000) if args.quick else (50_000, 100_000, 200_000)
    for n in sizes:
        D = rng.standard_normal((n, d), dtype=np.float32).astype(np.float16)
        prob = Problem(D, D, K, "linear", 0.0, 1e-3)
        theta = np.random.default_rng(1).standard_normal(prob.packer.size) * 1e-2
        times.append(median_time(lambda prob=prob, theta=theta: prob.evaluate(theta, grads=("L",)), reps=3))
    print(
        "   seconds per objective+gradient pass (float16, d=1024, K=10): "
        + ", ".join(f"N={n:,}: {t:.2f}s ({t / n * 1e6:.2f} us/row)" for n, t in zip(sizes, times))
    )


if __name__ == "__main__":
    main()
