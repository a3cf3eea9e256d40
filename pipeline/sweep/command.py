"""``micro sweep``: the options checked, then :func:`pipeline.sweep.runner.run_sweep`, the leaderboard and the K
selection printed."""

from __future__ import annotations

from pathlib import Path

from pipeline.boundary import console_log
from pipeline.errors import MicroError
from pipeline.sweep.runner import check_options, run_sweep
from pipeline.sweep.space import search_space


def sweep_command(
    run_dir: Path,
    grid: list,
    *,
    seeds: int,
    stage: str,
    backend: str,
    jobs: int | None,
    samples: int | None,
    sample_seed: int,
    holdout: float,
    out: Path | None,
    address: str | None,
    rank_by: str | None,
    top: int,
    retry_errors: bool,
    console,
) -> None:
    """``micro sweep`` (see the README): checks first, then the sweep, the leaderboard and the K selection."""
    from pipeline import checks as C
    from pipeline.core.run import read_run
    from pipeline.sweep.report import print_leaderboard

    check_options(seeds=seeds, stage=stage, backend=backend, jobs=jobs, samples=samples, holdout=holdout)
    C.integer(sample_seed, "--sample-seed", minimum=0)
    C.integer(top, "--top")
    if address and backend != "ray":
        raise MicroError("--address is the Ray cluster to join: it needs --backend ray")
    search_space(grid, stage, samples, sample_seed)
    read_run(run_dir)
    out = out or Path(run_dir) / "sweep" / "results.parquet"
    C.out_file(out, "--out", suffixes=(".parquet",))
    res = run_sweep(
        run_dir,
        grid,
        seeds=seeds,
        stage=stage,
        backend=backend,
        jobs=jobs,
        samples=samples,
        sample_seed=sample_seed,
        out=out,
        address=address,
        holdout=holdout,
        rank_by=rank_by,
        retry_errors=retry_errors,
        log=console_log(console),
    )
    if res.frame is not None and res.frame.height:
        n_err = res.frame["error"].is_not_null().sum()
        if n_err == res.frame.height:  # no leaderboard to print: say why, not that the metric column is missing
            errors = res.frame["error"].unique(maintain_order=True).to_list()[:3]
            raise MicroError(f"every trial failed ({'; '.join(errors)}); see the 'error' column of {res.path}")
        print_leaderboard(console, res.frame, res.rank_by, top)
        if n_err:
            console.print(f"{n_err} trial(s) failed (see the 'error' column)")
    if res.k_selection is not None:
        console.print(f"K selection (validation log-lik, one-SE rule): {res.k_selection.reason}", highlight=False)
    for p in res.plots:
        console.print(f"written: {p}")
    console.print(f"results: {res.path} ({res.new} new, {res.skipped} already there) | {res.seconds:.1f} s")
