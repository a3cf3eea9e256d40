"""``micro sweep``: grid / random search over Stage-1 (and Stage-2) hyperparameters on a run's CACHED features.

Features are loaded once (never re-embedded) and shared with the workers (see :mod:`pipeline.sweep.trials`).
Every trial (one configuration × one seed) fits on the train split minus a validation part (``holdout``, default
20 % of the train PROMPTS, grouped by prompt, drawn per seed), and is scored on the fit rows (``train_*``), the
validation rows (``val_*``) and the test split (``test_*``, ``acc_<group>``, ``test_ece``); with ``--stage
route|all`` (synonyms: routing needs its Stage-1 fit) one router per trial (seed = the trial seed, ``budget``
pairs per group from the fit rows) is also scored on the test split (``routed_acc_<group>``,
``routed_acc_macro``). The seed is the fit's ``random_state``, the validation draw and the router's draw.

Search space: ``"k=1,2,5,10; alpha=0,0.5; l2=1e-4,1e-3"`` (lists: grid = the cartesian product). With
``samples=N`` (random search) entries may be ranges: ``alpha=0..1`` (uniform), ``tau=log:1e-4..1e-2``
(log-uniform), ``k=int:1..16`` (uniform integer); lists are then uniform choices. Integer ranges in a grid
expand to every integer. Parameters (default): fit ``k`` (10), ``alpha``, ``l2``, ``n_init``, ``max_iter``,
``tol``, ``init``, ``dim``, ``gate_dim``, ``gate_hidden`` (MixtureBT defaults), ``gate`` (context),
``gate_input`` (auto); route ``tau``, ``epochs``, ``lr``, ``budget`` (pipeline.route.route defaults).
Backends (:mod:`pipeline.sweep.trials`): ``local`` (process pool, ``jobs`` workers × cores // jobs BLAS threads)
and ``ray`` (tasks; arrays in the object store once).

Results: one row per trial in a Parquet file (rewritten atomically every few trials, so a killed sweep keeps
its finished trials); ``config_hash`` = hash of (all hyperparameters, seed, stage, holdout, the run's
fingerprint id and pair ids): trials already in the file are skipped on rerun; a failing trial records
``error`` and the sweep goes on.

K selection (:func:`select_k`): mean ± std over seeds of the validation log-likelihood per K (for each K the
best setting of the other swept hyperparameters), and the one-standard-error rule: the smallest K whose mean is
≥ best mean − SE(best), SE = std (ddof 1) / √seeds. Never uses the test split. :func:`auto_k` is
``micro fit --k auto``. Figures beside the results file: ``<stem>_k_selection.png`` (metric vs K, mean ± std band)
and ``<stem>_<param>.png`` per swept hyperparameter (:mod:`pipeline.sweep.report`).
"""
from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from heads.mixture import MixtureBT
from pipeline.errors import InputError, MicroError, first_line
from pipeline.route.route import BUDGET, EPOCHS, LR, TAU
from pipeline.sweep.trials import SweepData
from pipeline.sweep.report import (KSelection, aggregate, k_candidates, leaderboard, param_columns,  # noqa: F401
                                   parse_k_range, select_k, swept)

# kinds: int, float, str, optint (int or none), autofloat (float or auto), autoint (int, auto or none = full width)
FIT_PARAMS = {"k": ("int", 10), "alpha": ("float", None), "l2": ("autofloat", None), "n_init": ("int", None),
              "max_iter": ("int", None), "tol": ("float", None), "init": ("str", None), "dim": ("autoint", None),
              "gate_hidden": ("optint", None), "gate_dim": ("autoint", None), "gate": ("str", "context"),
              "gate_input": ("str", "auto")}
_MIXTURE_DEFAULTS = {n: p.default for n, p in inspect.signature(MixtureBT.__init__).parameters.items()}
FIT_PARAMS.update({n: (kind, _MIXTURE_DEFAULTS[n]) for n, (kind, d) in FIT_PARAMS.items()
                   if n in ("alpha", "l2", "n_init", "max_iter", "tol", "init", "dim", "gate_dim")})  # MixtureBT's
ROUTE_PARAMS = {"tau": ("float", TAU), "epochs": ("int", EPOCHS), "lr": ("float", LR), "budget": ("int", BUDGET)}
PARAMS = {**FIT_PARAMS, **ROUTE_PARAMS}
ALIASES = {"n_components": "k", "budget_per_group": "budget"}
STAGES = ("fit", "route", "all")


# ------------------------------------------------------------------------------------------- search space
@dataclass
class Dim:
    """One entry of the search space: a list of ``values`` or a range [low, high] with a ``scale``."""

    name: str
    values: list | None = None
    low: float | None = None
    high: float | None = None
    scale: str = "linear"          # linear | log | int


def _cast(name: str, raw):
    kind = PARAMS[name][0]
    text = str(raw).strip()
    try:
        if kind in ("autofloat", "autoint") and text.lower() == "auto":
            return "auto"
        if kind in ("optint", "autoint") and text.lower() in ("none", "null", "", "full"):
            return None
        if kind in ("int", "optint", "autoint"):
            v = float(text)
            if not v.is_integer():
                raise ValueError
            return int(v)
        return float(text) if kind in ("float", "autofloat") else text
    except ValueError:
        raise MicroError(f"sweep: {name}={text!r} is not a valid {kind.replace('optint', 'integer or none')}") from None


def parse_space(spec) -> dict[str, Dim]:
    """``"k=1,2; alpha=0..1; tau=log:1e-4..1e-2"`` (a string, a list of them, or a dict name -> values)."""
    if isinstance(spec, dict):
        items = [(k, v if isinstance(v, (list, tuple)) else [v]) for k, v in spec.items()]
    else:
        text = ";".join([spec] if isinstance(spec, str) else list(spec))
        items = []
        for part in text.replace("\n", ";").split(";"):
            if not part.strip():
                continue
            key, sep, val = part.partition("=")
            if not sep or not val.strip():
                raise MicroError(f"sweep: expected NAME=VALUES, got {part.strip()!r}")
            items.append((key, val.strip()))
    space: dict[str, Dim] = {}
    for key, val in items:
        name = ALIASES.get(key.strip().replace("-", "_"), key.strip().replace("-", "_"))
        if name not in PARAMS:
            raise MicroError(f"sweep: unknown hyperparameter {key.strip()!r}; known: {', '.join(PARAMS)}")
        if name in space:
            raise MicroError(f"sweep: {name} given twice")
        if isinstance(val, list):
            space[name] = Dim(name, values=[v if v is None else _cast(name, v) for v in val])
            continue
        prefix, colon, rest = val.partition(":")
        scale, body = (prefix.strip(), rest) if colon and prefix.strip() in ("log", "int") else ("linear", val)
        if ".." in body:
            lo, _, hi = body.partition("..")
            if PARAMS[name][0] == "str":
                raise MicroError(f"sweep: {name} takes a list of values, not a range")
            lo, hi = float(_cast("alpha", lo)), float(_cast("alpha", hi))
            if lo > hi or (scale == "log" and lo <= 0):
                raise MicroError(f"sweep: bad range {name}={val} (need low <= high, and low > 0 for log)")
            if scale == "linear" and PARAMS[name][0] not in ("float", "autofloat"):
                scale = "int"
            space[name] = Dim(name, low=lo, high=hi, scale=scale)
        else:
            space[name] = Dim(name, values=[_cast(name, v) for v in body.split(",")])
    return space


def grid_configs(space: dict[str, Dim]) -> list[dict]:
    """Cartesian product of the lists (integer ranges expand; other ranges need random search)."""
    axes = []
    for d in space.values():
        if d.values is not None:
            axes.append(d.values)
        elif d.scale == "int":
            axes.append([_cast(d.name, v) for v in range(int(math.ceil(d.low)), int(math.floor(d.high)) + 1)])
        else:
            raise MicroError(f"sweep: {d.name} is a range; use --samples N (random search) or list its values")
    return [dict(zip(space, combo)) for combo in itertools.product(*axes)]


def random_configs(space: dict[str, Dim], n: int, seed: int = 0) -> list[dict]:
    """``n`` configurations drawn from the space; deterministic given ``seed``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(int(n)):
        cfg = {}
        for name in sorted(space):
            d = space[name]
            if d.values is not None:
                cfg[name] = d.values[int(rng.integers(len(d.values)))]
            elif d.scale == "log":
                v = float(np.exp(rng.uniform(np.log(d.low), np.log(d.high))))
                cfg[name] = v if PARAMS[name][0] in ("float", "autofloat") else int(np.clip(round(v), math.ceil(d.low), d.high))
            elif d.scale == "int":
                cfg[name] = int(rng.integers(int(math.ceil(d.low)), int(math.floor(d.high)) + 1))
            else:
                cfg[name] = float(rng.uniform(d.low, d.high))
        out.append(cfg)
    return out


def search_space(grid, stage: str, samples: int | None = None, sample_seed: int = 0) -> tuple[dict, list[dict]]:
    """(space, configurations) of ``--grid`` for ``stage``; MicroError for anything that cannot be searched."""
    space = parse_space(grid)
    if stage == "fit" and set(space) & set(ROUTE_PARAMS):
        raise MicroError(f"sweep: {sorted(set(space) & set(ROUTE_PARAMS))} are routing hyperparameters: "
                         "use --stage route (or all)")
    return space, (random_configs(space, samples, sample_seed) if samples else grid_configs(space))


def resolve(cfg: dict, stage: str) -> dict:
    """All hyperparameters of a trial (defaults filled in); no routing ones for ``stage == "fit"``."""
    keys = FIT_PARAMS if stage == "fit" else PARAMS
    return {k: cfg.get(k, keys[k][1]) for k in keys}


def config_hash(params: dict, seed: int, stage: str, holdout: float, data_id: str) -> str:
    blob = json.dumps({"p": params, "seed": int(seed), "stage": "fit" if stage == "fit" else "route",
                       "holdout": float(holdout), "data": data_id}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- results
def _dtype(col: str):
    import polars as pl

    if col in PARAMS:
        return {"int": pl.Int64, "optint": pl.Int64, "float": pl.Float64, "str": pl.Utf8, "autofloat": pl.Utf8,
                "autoint": pl.Utf8}[PARAMS[col][0]]
    if col in ("seed", "trial", "n_iter", "n_collapsed", "train_n", "val_n", "test_n"):
        return pl.Int64
    if col in ("converged", "fit_reused"):
        return pl.Boolean
    if col in ("config_hash", "stage", "error", "fingerprint_id"):
        return pl.Utf8
    return pl.Float64


def rows_frame(rows: list[dict]):
    import polars as pl

    cols = list(dict.fromkeys(c for r in rows for c in r))
    text = {c for c in cols if c in PARAMS and PARAMS[c][0] in ("autofloat", "autoint")}  # 'auto', 'none' or a number
    return pl.DataFrame({c: [str(r.get(c)).lower() if c in text else r.get(c) for r in rows] for c in cols},
                        schema={c: _dtype(c) for c in cols})


def read_results(path: str | Path):
    """The results file of earlier trials (None if absent); InputError naming the file if it is damaged."""
    import polars as pl

    path = Path(path)
    if not path.exists():
        return None
    hint = "move it aside (or pass another --out) to start a new results file"
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a sweep results file; {hint}")
    try:
        frame = pl.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - polars raises several types for a damaged file
        raise InputError(f"{path}: damaged sweep results file ({first_line(exc)}); {hint}") from None
    for col, kinds in (("config_hash", (pl.Utf8,)), ("error", (pl.Utf8, pl.Null))):
        if col not in frame.columns:
            raise InputError(f"{path}: not a sweep results file (no '{col}' column); {hint}")
        if frame.schema[col] not in kinds:
            raise InputError(f"{path}: column '{col}' is {frame.schema[col]}, expected text; {hint}")
    return frame


def write_results(frame, path: str | Path) -> None:
    from cache.atomic import atomic_path

    with atomic_path(path) as tmp:
        frame.write_parquet(tmp)


# ------------------------------------------------------------------------------------------------ the sweep
@dataclass
class SweepResult:
    frame: object                  # polars DataFrame of this sweep's trials (the results file may hold more)
    path: Path
    new: int                       # trials run now
    skipped: int                   # trials already in the file
    seconds: float
    rank_by: str
    k_selection: KSelection | None = None
    plots: list = field(default_factory=list)
    notes: list = field(default_factory=list)


def plan(space_cfgs: list[dict], seeds, stage: str, holdout: float, data_id: str) -> list[dict]:
    """Trials (index, params, seed, hash) of the configurations × seeds."""
    out = []
    for i, cfg in enumerate(space_cfgs):
        params = resolve(cfg, stage)
        for s in seeds:
            out.append({"trial": len(out), "config": i, "params": params, "seed": int(s),
                        "hash": config_hash(params, s, stage, holdout, data_id)})
    return out


def make_jobs(trials: list[dict], stage: str, holdout: float) -> list[dict]:
    """Group trials sharing a Stage-1 fit (fit params + seed); the costliest fits first (better packing)."""
    jobs: dict = {}
    for t in trials:
        fit = {k: t["params"][k] for k in FIT_PARAMS}
        key = json.dumps([fit, t["seed"]], sort_keys=True, default=str)
        job = jobs.setdefault(key, {"fit": fit, "seed": t["seed"], "holdout": holdout, "trials": []})
        route = None if stage == "fit" else {k: t["params"][k] for k in ROUTE_PARAMS}
        job["trials"].append({"hash": t["hash"], "route": route})

    def cost(j):
        f = j["fit"]
        try:
            return -float(f["k"]) * float(f["n_init"]) * float(f["max_iter"]) * len(j["trials"])
        except (TypeError, ValueError):
            return 0.0
    return sorted(jobs.values(), key=cost)


def run_sweep(source, grid, *, seeds=3, stage: str = "fit", backend: str = "local", jobs: int | None = None,
              samples: int | None = None, sample_seed: int = 0, out: str | Path = "sweep.parquet",
              address: str | None = None, holdout: float = 0.2, rank_by: str | None = None,
              retry_errors: bool = False, flush_every: int = 4, plots: bool = True, start_method: str | None = None,
              log: Callable[[str], None] = print) -> SweepResult:
    """Run (or resume) a sweep on a run folder or a :class:`SweepData`; see the module docstring."""
    import polars as pl

    from pipeline.sweep import trials as B

    t0 = time.perf_counter()
    if stage not in STAGES:
        raise MicroError(f"--stage must be one of {', '.join(STAGES)}, got {stage!r}")
    if backend not in ("local", "ray"):
        raise MicroError(f"--backend must be local or ray, got {backend!r}")
    if not 0 <= holdout < 1:
        raise MicroError(f"--holdout must be in [0, 1), got {holdout}")
    if jobs is not None and int(jobs) < 1:
        raise MicroError(f"--jobs must be >= 1, got {jobs}")
    if samples is not None and int(samples) < 1:
        raise MicroError(f"--samples must be >= 1, got {samples}")
    seeds = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seeds:
        raise MicroError("--seeds must be >= 1")
    space, cfgs = search_space(grid, stage, samples, sample_seed)
    data = source if isinstance(source, SweepData) else SweepData.from_run(source)
    trials = plan(cfgs, seeds, stage, holdout, data.data_id)
    out = Path(out)
    old = read_results(out)
    done = set() if old is None else set(
        (old if not retry_errors else old.filter(pl.col("error").is_null()))["config_hash"].to_list())
    todo = [t for t in trials if t["hash"] not in done]
    skipped = len(trials) - len(todo)
    if old is not None and retry_errors:
        old = old.filter(~pl.col("config_hash").is_in([t["hash"] for t in todo]))
    n_jobs = max(1, int(jobs or B.n_cores()))
    threads = max(1, B.n_cores() // n_jobs)
    rank_by = rank_by or ("test_acc_macro" if stage == "fit" else "routed_acc_macro")
    log(f"sweep: {len(trials)} trials ({len(cfgs)} configurations × {len(seeds)} seeds), {skipped} already in "
        f"{out}, {len(todo)} to run on {backend} with {n_jobs} workers × {threads} threads")
    by_hash = {t["hash"]: t for t in trials}
    names = [c for c in space if len({json.dumps(c_[c], default=str) for c_ in cfgs}) > 1]
    buffer, state = [], {"frame": old, "done": 0, "flushed": time.perf_counter()}

    def flush():
        if buffer:
            new = rows_frame(buffer)
            state["frame"] = new if state["frame"] is None else pl.concat([state["frame"], new], how="diagonal_relaxed")
            write_results(state["frame"], out)
            buffer.clear()
        state["flushed"] = time.perf_counter()

    def on_rows(job, rows):
        for r in rows:
            t = by_hash[r["config_hash"]]
            row = {"config_hash": t["hash"], "trial": t["trial"], "stage": stage, "seed": t["seed"],
                   "holdout": holdout, "fingerprint_id": data.fingerprint_id, **t["params"], **r}
            buffer.append(row)
            state["done"] += 1
            desc = " ".join(f"{n}={_short(t['params'][n])}" for n in names)
            shown = dict.fromkeys([rank_by, "val_loglik"])
            res = f"error: {r['error']}" if r.get("error") else " ".join(f"{m}={_short(r.get(m))}" for m in shown)
            log(f"  [{state['done']}/{len(todo)}] {desc} seed={t['seed']}  {res}  ({r['wall_seconds']:.1f} s)")
        if len(buffer) >= flush_every or time.perf_counter() - state["flushed"] > 30:
            flush()

    try:
        if todo:
            run = B.run_ray if backend == "ray" else B.run_local
            extra = {"address": address} if backend == "ray" else {"start_method": start_method}
            run(make_jobs(todo, stage, holdout), data.arrays, data.meta, n_jobs, threads, on_rows, **extra)
    finally:
        flush()
    frame = state["frame"]
    if frame is not None:  # this sweep's trials (the file may hold others), numbered as planned now
        index = pl.DataFrame({"config_hash": [t["hash"] for t in trials], "trial": [t["trial"] for t in trials]},
                             schema={"config_hash": pl.Utf8, "trial": pl.Int64})
        frame = frame.drop("trial").join(index, on="config_hash", how="inner").sort("trial")
        frame = frame.select(["config_hash", "trial", *[c for c in frame.columns if c not in ("config_hash", "trial")]])
    res = SweepResult(frame, out, len(todo), skipped, time.perf_counter() - t0, rank_by)
    if frame is None or frame.height == 0:
        return res
    if "k" in swept(frame) and holdout > 0 and frame.filter(pl.col("error").is_null()).height:
        res.k_selection = select_k(frame)
    if plots:
        from pipeline.sweep.report import plot_k, plot_params

        if res.k_selection is not None:
            res.plots.append(plot_k(frame, res.k_selection, out.with_name(f"{out.stem}_k_selection.png")))
        res.plots += plot_params(frame, rank_by, out.with_name(out.stem))
    return res


def _short(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def auto_k(source, k_range: str, fit_params: dict, *, seeds: int = 3, holdout: float = 0.2, jobs: int | None = None,
           out_dir: str | Path, log: Callable[[str], None] = print) -> KSelection:
    """``micro fit --k auto``: a K sweep (:func:`k_candidates`) with ``seeds`` seeds on the train split
    (validation = ``holdout`` of the train prompts), the one-SE rule, results + plot in ``out_dir``."""
    lo, hi = parse_k_range(k_range)
    ks = k_candidates(lo, hi)
    space = {"k": ks, **{k: [v] for k, v in fit_params.items() if k in FIT_PARAMS and k != "k"}}
    out_dir = Path(out_dir)
    log(f"K selection: K ∈ {ks} × {seeds} seeds, validation = {holdout:.0%} of the train prompts (test unused)")
    res = run_sweep(source, space, seeds=seeds, holdout=holdout, jobs=jobs, out=out_dir / "results.parquet",
                    rank_by="val_loglik", log=log)
    if res.k_selection is None:
        if res.frame is not None and len(ks) == 1 and res.frame.filter(res.frame["error"].is_null()).height:
            res.k_selection = select_k(res.frame)
        else:
            errs = [] if res.frame is None else res.frame["error"].drop_nulls().unique().to_list()[:3]
            raise MicroError(f"K selection failed: no successful trials ({'; '.join(errs)})")
    from cache.atomic import write_json_atomic

    write_json_atomic(out_dir / "k_selection.json", {**res.k_selection.to_dict(), "k_range": [lo, hi],
                                                     "candidates": ks, "seeds": seeds, "holdout": holdout,
                                                     "plots": [str(p) for p in res.plots]})
    return res.k_selection
