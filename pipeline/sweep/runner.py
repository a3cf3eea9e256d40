"""``micro sweep``: grid / random search over Stage-1 (and Stage-2) hyperparameters on a run's CACHED features.

Features are loaded once as a :class:`pipeline.core.run.Run` (never re-embedded) and shared with the workers by
:func:`pipeline.core.parallel.run_jobs`. Every trial (one configuration × one seed; :mod:`pipeline.sweep.trials`)
fits on the train split minus a validation part (``holdout``, default 20 % of the train PROMPTS, grouped by prompt,
drawn per seed), and is scored on the fit rows (``train_*``), the validation rows (``val_*``) and the test split
(``test_*``, ``acc_<group>``, ``test_ece``); with ``--stage route|all`` (synonyms: routing needs its Stage-1 fit)
one router per trial (seed = the trial seed, ``budget`` pairs per group from the fit rows) is also scored on the
test split (``routed_acc_<group>``, ``routed_acc_macro``). The seed is the fit's ``random_state``, the validation
draw and the router's draw. The search space: :mod:`pipeline.sweep.space`. Backends: ``local`` (process pool,
``jobs`` workers × cores // jobs BLAS threads) and ``ray`` (tasks; arrays in the object store once).

Results: one row per trial in a Parquet file (rewritten atomically every few trials, so a killed sweep keeps
its finished trials); ``config_hash`` = hash of (all hyperparameters, seed, stage, holdout, the run's
fingerprint id and pair ids): trials already in the file are skipped on rerun; a failing trial records
``error`` and the sweep goes on. With K swept, the K selection (one-SE rule, :func:`pipeline.sweep.report.select_k`)
and figures beside the results file: ``<stem>_k_selection.png`` and ``<stem>_<param>.png`` per swept
hyperparameter (:mod:`pipeline.sweep.report`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from heads.defaults import HOLDOUT, SWEEP_SEEDS
from pipeline import checks as C
from pipeline.core.run import Run
from pipeline.errors import InputError, Interrupted, OptionError, OutputError, first_line
from pipeline.sweep.report import KSelection, select_k, swept
from pipeline.sweep.space import (
    FIT_PARAMS,
    PARAMS,
    ROUTE_PARAMS,
    STAGES,
    config_hash,
    resolve,
    search_space,
    unique_configs,
)


def _dtype(col: str):
    import polars as pl

    if col in PARAMS:
        return {
            "int": pl.Int64,
            "optint": pl.Int64,
            "float": pl.Float64,
            "str": pl.Utf8,
            "autofloat": pl.Utf8,
            "autoint": pl.Utf8,
        }[PARAMS[col][0]]
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
    return pl.DataFrame(
        {c: [str(r.get(c)).lower() if c in text else r.get(c) for r in rows] for c in cols},
        schema={c: _dtype(c) for c in cols},
    )


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
    frame: object  # polars DataFrame of this sweep's trials (the results file may hold more)
    path: Path
    new: int  # trials run now
    skipped: int  # trials already in the file
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
            out.append(
                {
                    "trial": len(out),
                    "config": i,
                    "params": params,
                    "seed": int(s),
                    "hash": config_hash(params, s, stage, holdout, data_id),
                }
            )
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


def check_options(*, seeds, stage: str, backend: str, jobs: int | None, samples: int | None, holdout: float) -> None:
    """OptionError naming the option (the CLI's words) for a value :func:`run_sweep` cannot use; ``seeds`` is a
    count or a non-empty list of seeds."""
    if isinstance(seeds, int):
        C.integer(seeds, "--seeds")
    elif not len(seeds):
        raise OptionError("--seeds must be >= 1 seed, got none")
    C.choice(stage, "--stage", STAGES)
    C.choice(backend, "--backend", ("local", "ray"))
    C.integer(jobs, "--jobs", optional=True)
    C.integer(samples, "--samples", optional=True)
    C.number(holdout, "--holdout", low=0, high=1, high_open=True)


def run_sweep(
    source,
    grid,
    *,
    seeds=SWEEP_SEEDS,
    stage: str = "fit",
    backend: str = "local",
    jobs: int | None = None,
    samples: int | None = None,
    sample_seed: int = 0,
    out: str | Path = "sweep.parquet",
    address: str | None = None,
    holdout: float = HOLDOUT,
    rank_by: str | None = None,
    retry_errors: bool = False,
    flush_every: int = 4,
    plots: bool = True,
    start_method: str | None = None,
    log: Callable[[str], None] = print,
) -> SweepResult:
    """Run (or resume) a sweep on a run folder or a :class:`Run`; see the module docstring."""
    import polars as pl

    from pipeline.core.parallel import n_cores, run_jobs
    from pipeline.sweep.trials import error_rows, metric_columns, run_job

    t0 = time.perf_counter()
    check_options(seeds=seeds, stage=stage, backend=backend, jobs=jobs, samples=samples, holdout=holdout)
    seeds = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    space, drawn = search_space(grid, stage, samples, sample_seed)
    cfgs, given = unique_configs(drawn, stage), len(seeds)
    seeds = list(dict.fromkeys(seeds))
    if len(cfgs) < len(drawn):
        log(
            f"note: {len(drawn) - len(cfgs)} duplicate configuration(s) dropped (the same values): "
            f"{len(cfgs)} distinct of {len(drawn)} {'drawn' if samples else 'given'}"
        )
    if len(seeds) < given:
        log(f"note: {given - len(seeds)} repeated seed(s) dropped: seeds {seeds}")
    data = source if isinstance(source, Run) else Run.load(source)
    rank_by = rank_by or ("test_acc_macro" if stage == "fit" else "routed_acc_macro")
    if rank_by not in metric_columns(data.group_names, stage):  # before any trial, not after the whole sweep
        raise OptionError(f"--rank-by {rank_by!r}: no such column (e.g. test_acc_macro, test_loglik, val_loglik)")
    trials = plan(cfgs, seeds, stage, holdout, data.data_id)
    out = Path(out)
    for tmp in out.parent.glob(f".{out.name}.*.tmp"):  # a write cut short by kill -9 (atomic_path's temp name)
        tmp.unlink(missing_ok=True)
        log(f"note: removed {tmp}, left by a sweep that was killed while saving")
    old = read_results(out)
    done = (
        set()
        if old is None
        else set((old if not retry_errors else old.filter(pl.col("error").is_null()))["config_hash"].to_list())
    )
    todo = [t for t in trials if t["hash"] not in done]
    skipped = len(trials) - len(todo)
    if old is not None and retry_errors:
        old = old.filter(~pl.col("config_hash").is_in([t["hash"] for t in todo]))
    n_jobs = max(1, int(jobs or n_cores()))
    threads = max(1, n_cores() // n_jobs)
    log(
        f"sweep: {len(trials)} trials ({len(cfgs)} configurations × {len(seeds)} seeds), {skipped} already in "
        f"{out}, {len(todo)} to run on {backend} with {n_jobs} workers × {threads} threads"
    )
    by_hash = {t["hash"]: t for t in trials}
    names = [c for c in space if len({json.dumps(c_[c], default=str) for c_ in cfgs}) > 1]
    buffer, state = [], {"frame": old, "done": 0, "flushed": time.perf_counter()}

    def flush():
        if buffer:
            new = rows_frame(buffer)
            frame = new if state["frame"] is None else pl.concat([state["frame"], new], how="diagonal_relaxed")
            try:
                write_results(frame, out)
            except OutputError as exc:  # e.g. a full disk: the file keeps the trials saved before
                saved = 0 if state["frame"] is None else state["frame"].height
                raise OutputError(
                    f"{exc}; {len(buffer)} finished trial(s) not saved ({out} keeps the {saved} saved before); "
                    "free space and rerun the same command: saved trials are skipped"
                ) from None
            state["frame"] = frame
            buffer.clear()
        state["flushed"] = time.perf_counter()

    def on_rows(job, rows):
        for r in rows:
            t = by_hash[r["config_hash"]]
            row = {
                "config_hash": t["hash"],
                "trial": t["trial"],
                "stage": stage,
                "seed": t["seed"],
                "holdout": holdout,
                "fingerprint_id": data.fingerprint_id,
                **t["params"],
                **r,
            }
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
            arrays, meta = data.shared()
            run_jobs(
                make_jobs(todo, stage, holdout),
                run_job,
                arrays,
                meta,
                on_rows,
                error_rows,
                n_jobs=n_jobs,
                threads=threads,
                backend=backend,
                address=address,
                start_method=start_method,
            )
    except KeyboardInterrupt:
        flush()
        raise Interrupted(
            f"interrupted: {state['done']} finished trial(s) of this run saved to {out}; rerun the same command "
            "to resume (saved trials are skipped)"
        ) from None
    finally:
        flush()
    frame = state["frame"]
    if frame is not None:  # this sweep's trials (the file may hold others), numbered as planned now
        index = pl.DataFrame(
            {"config_hash": [t["hash"] for t in trials], "trial": [t["trial"] for t in trials]},
            schema={"config_hash": pl.Utf8, "trial": pl.Int64},
        )
        frame = frame.drop("trial").join(index, on="config_hash", how="inner").sort("trial")
        frame = frame.select(["config_hash", "trial", *[c for c in frame.columns if c not in ("config_hash", "trial")]])
    res = SweepResult(frame, out, len(todo), skipped, time.perf_counter() - t0, rank_by)
    if frame is None or frame.height == 0:
        return res
    ok = frame.filter(pl.col("error").is_null()).height
    if "k" in swept(frame) and holdout > 0 and ok:
        res.k_selection = select_k(frame)
    if plots and ok:  # nothing to draw when every trial failed
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
