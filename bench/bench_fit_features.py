"""Stage-1 defaults against the old fixed settings on a run's real features (e.g. LLM features from a GPU run).

    python bench/bench_fit_features.py RUN_DIR [--k 10] [--fixed l2=1e-4,dim=none]

Fits on the run's train split and prints train / test accuracy and test NLL of: the defaults (held-out selection
of L2 and width, calibration), and each ``--fixed`` setting (selection off), for K heads and for a single BT head.
The gate reads context+prompt when every train pair has a context (as ``micro fit`` does). Needs no plotting or
dataframe library, so it runs where only numpy / torch / pyarrow / scikit-learn are installed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from heads import MixtureBT  # noqa: E402
from heads.selection import prompt_groups  # noqa: E402
from pipeline.core.run import Run  # noqa: E402


def parse_fixed(text: str) -> dict:
    out = {"calibrate": False}
    for part in filter(None, text.split(",")):
        k, _, v = part.partition("=")
        out[k.strip()] = None if v.strip().lower() == "none" else float(v) if k.strip() == "l2" else int(v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--fixed", action="append", default=None, help="e.g. l2=1e-4,dim=none (repeatable)")
    args = ap.parse_args()
    fixed = args.fixed or ["l2=1e-4,dim=none,gate_dim=none"]
    t0 = time.perf_counter()
    f = Run.load(args.run_dir, dtype=None)
    tr, te = f.part("train"), f.part("test")
    ctx = bool(tr.has_context.all())
    gx = (lambda part: part.context) if ctx else (lambda part: part.prompt)
    print(
        f"{args.run_dir}: {tr.n} train / {te.n} test pairs, d = {tr.delta.shape[1]}, gate reads "
        f"{'context+prompt' if ctx else 'the prompt'}; loaded in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    groups = prompt_groups(tr.prompt, tr.n)
    for k in (args.k, 1):
        for name, kw in [("defaults", {})] + [(s, parse_fixed(s)) for s in fixed]:
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m = MixtureBT(n_components=k, random_state=0, **kw).fit(tr.delta, gx(tr), groups=groups)
            p_tr, p_te = m.predict_proba(tr.delta, gx(tr)), m.predict_proba(te.delta, gx(te))
            print(
                f"K={k:<3} {name:<32} train acc {np.mean(p_tr > 0.5):.4f}  test acc {np.mean(p_te > 0.5):.4f}  "
                f"test NLL {-np.mean(np.log(np.clip(p_te, 1e-300, None))):.4f}  (l2 {m.l2_:.3g}, width {m.dim_}, "
                f"T {m.temperature_:.3f}; {time.perf_counter() - t:.1f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
