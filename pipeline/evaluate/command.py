"""``micro eval``: check the options, run the seen-group evaluation or leave-group-out, print the tables."""

from __future__ import annotations

import sys
from pathlib import Path

from heads.defaults import BUDGETS, LGO_BUDGETS, LGO_SEEDS, SEEDS
from pipeline import checks as C


def eval_command(
    model: Path,
    run_dir: Path,
    *,
    report: Path | None,
    protocol: str,
    budget: int,
    seeds: int | None,
    hyre_n: int,
    budgets: str | None,
    tau: float,
    epochs: int,
    lr: float,
    adapt: str,
    jobs: int | None,
) -> None:
    """``micro eval`` (see the README): the table on stdout, notes and written files on stderr."""
    from pipeline.core.bundle import read_meta
    from pipeline.core.run import read_run
    from pipeline.evaluate.results import parse_budgets
    from pipeline.route.command import router_options
    from pipeline.route.methods import METHODS

    lgo = C.choice(protocol, "--protocol", ("seen", "leave-group-out")) == "leave-group-out"
    seed_list = router_options(tau, epochs, budget, (LGO_SEEDS if lgo else SEEDS) if seeds is None else seeds, lr)
    C.integer(hyre_n, "--hyre-n", minimum=0)
    C.choice(adapt, "--adapt", tuple(METHODS))
    C.integer(jobs, "--jobs", optional=True)
    budgets = budgets or ",".join(map(str, LGO_BUDGETS if lgo else BUDGETS))
    parse_budgets(budgets)
    read_meta(model)
    read_run(run_dir)
    if report is not None:
        C.out_dir(report, "--report")
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    if lgo:
        from pipeline.evaluate.lgo import leave_group_out

        res = leave_group_out(
            model,
            run_dir,
            budgets=budgets,
            seeds=seed_list,
            adapt=adapt,
            report=report,
            jobs=jobs,
            tau=tau,
            epochs=epochs,
            lr=lr,
            log=log,
        )
    else:
        from pipeline.evaluate.evaluate import evaluate

        res = evaluate(
            model,
            run_dir,
            report=report,
            budget=budget,
            seeds=seed_list,
            hyre_n=hyre_n,
            budgets=budgets,
            tau=tau,
            epochs=epochs,
            lr=lr,
            log=log,
        )
    print(res.markdown())
    for note in res.notes:
        print(f"note: {note}", file=sys.stderr)
    for p in [*res.files, *res.plots]:
        print(f"written: {p}", file=sys.stderr)
    print(f"eval: {res.seconds:.1f} s", file=sys.stderr)
