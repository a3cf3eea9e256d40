"""``micro fit``: check the options, select K when asked (``--k auto``), fit, print the report."""

from __future__ import annotations

import time
from pathlib import Path

from pipeline import checks as C
from pipeline.boundary import console_log
from pipeline.errors import MicroError, shown


def print_fit_report(console, report) -> None:
    """Closing table: mixture log-likelihood/accuracy per split, then head × group accuracy (Table 7/8 shape)."""
    from rich.table import Table

    sel = report.selection
    if sel.get("path"):
        console.print(
            f"selection on {sel['val_pairs']} held-out pairs ({sel['holdout']:.0%} of the train prompts, "
            f"{sel['seconds']:.1f} s): "
            + "  ".join(f"{p['c']:.3g}→{p['val_loglik']:.4f}" for p in sorted(sel["path"], key=lambda p: p["c"]))
            + " (relative L2 → held-out log-lik)",
            highlight=False,
            soft_wrap=True,
        )
    cal = sel.get("calibration")
    console.print(
        f"chosen: l2 {sel['l2']:.3g}, gate l2 {sel['gate_l2']:.3g}, width {sel['dim']} "
        f"(gate {sel['gate_dim']}),"
        f" temperature {sel['temperature']:.3f}"
        + (f" (held-out NLL {cal['val_nll_before']:.4f} → {cal['val_nll_after']:.4f})" if cal else ""),
        highlight=False,
        soft_wrap=True,
    )
    t = Table(title="mixture")
    for c in ("split", "n", "log-lik", "accuracy", "ECE"):
        t.add_column(c, justify="right")
    for split, m in report.metrics.items():
        ece = f"{m['ece']:.4f}" + (f" (uncalibrated {m['ece_uncalibrated']:.4f})" if "ece_uncalibrated" in m else "")
        t.add_row(split, str(m["n"]), f"{m['loglik']:.4f}", f"{m['accuracy']:.4f}", ece)
    console.print(t)
    h = Table(title=f"accuracy of each head alone per group ({report.head_group_split} split)")
    h.add_column("head")
    for g, n in zip(report.groups, report.group_counts):
        h.add_column(shown(f"{g} (n={n})"), justify="right")
    best = report.head_group_accuracy.argmax(axis=0)
    for k, row in enumerate(report.head_group_accuracy):
        h.add_row(str(k), *[(f"[bold]{v:.3f}[/]" if best[j] == k else f"{v:.3f}") for j, v in enumerate(row)])
    console.print(h)
    say = console_log(console)
    for note in report.notes:
        say(f"note: {note}")
    for p in report.plots:
        say(f"written: {p}")
    bundle = f" | bundle: {report.bundle}" if report.bundle else ""
    say(f"gate input: {report.gate_input} | {report.seconds:.1f} s{bundle}")


def fit_command(
    run_dir: Path,
    *,
    k: str,
    k_range: str,
    gate: str,
    gate_input: str,
    gate_hidden: int | None,
    alpha: float,
    l2: str,
    gate_l2: float | None,
    holdout: float,
    patience: int,
    calibrate: str,
    n_init: int,
    max_iter: int,
    tol: float,
    seed: int,
    dim: str,
    gate_dim: str,
    init: str,
    optimizer: str,
    epochs: int,
    baseline: str | None,
    out: Path | None,
    quiet: bool,
    console,
) -> None:
    """``micro fit`` (see the README)."""
    from heads.initialise import INITS
    from heads.solvers import AdamWSolver
    from pipeline.core.run import read_run
    from pipeline.fit.fit import BASELINES, fit_run

    auto = k.strip().lower() == "auto"
    if not auto and (not k.strip().isdigit() or int(k) < 1):
        raise MicroError(f"--k must be a positive integer or 'auto', got {k!r}")
    if auto:
        from pipeline.sweep.report import k_candidates, parse_k_range

        k_candidates(*parse_k_range(k_range))
    C.choice(gate, "--gate", ("context", "static"))
    C.choice(gate_input, "--gate-input", ("auto", "prompt", "context"))
    C.integer(gate_hidden, "--gate-hidden", optional=True)
    params = dict(  # MixtureBT's, checked; the same for the K selection's trials and the final fit
        gate_hidden=gate_hidden,
        alpha=C.number(alpha, "--alpha", low=0),
        l2=C.auto_number(l2, "--l2"),
        gate_l2=C.number(gate_l2, "--gate-l2", low=0, optional=True),
        dim=C.auto_number(dim, "--dim", int, none=True),
        gate_dim=C.auto_number(gate_dim, "--gate-dim", int, none=True),
        holdout=C.number(holdout, "--holdout", low=0, high=1, high_open=True),
        patience=C.integer(patience, "--patience"),
        calibrate={"auto": "auto", "on": True, "off": False}[C.choice(calibrate, "--calibrate", ("auto", "on", "off"))],
        n_init=C.integer(n_init, "--n-init"),
        max_iter=C.integer(max_iter, "--max-iter", minimum=0),
        tol=C.number(tol, "--tol", low=0),
        init=C.choice(init, "--init", INITS),
    )
    if params["calibrate"] is True and params["holdout"] == 0:
        raise MicroError("--calibrate on needs --holdout > 0: the temperature is fitted on the held-out train prompts")
    C.integer(seed, "--seed", minimum=0)
    C.choice(optimizer, "--optimizer", ("em", "adamw"))
    C.integer(epochs, "--epochs")
    C.choice(baseline, "--baseline", BASELINES, optional=True)
    if auto and optimizer != "em":
        raise MicroError("--k auto fits with --optimizer em")
    if auto and params["holdout"] == 0:
        raise MicroError("--k auto needs --holdout > 0: K is chosen on the held-out train prompts")
    if auto and baseline == "single":
        raise MicroError("--k auto: the single baseline has one head")
    read_run(run_dir)
    out = out or Path(run_dir) / "model"
    C.out_dir(out, "--out")
    state = {"t": time.perf_counter(), "prev": None}

    def on_iter(it: int, obj: float) -> None:
        if quiet:
            return
        prev, state["prev"] = state["prev"], obj
        rel = "" if prev is None else f"  rel.change {abs(prev - obj) / max(abs(prev), 1e-12):.2e}"
        console.print(
            f"  iter {it:4d}  objective {obj:.6f}{rel}  {time.perf_counter() - state['t']:.1f} s", highlight=False
        )

    extra_meta, run = None, None
    if auto:
        from pipeline.core.run import Run
        from pipeline.fit.select_k import auto_k

        run = Run.load(run_dir, dtype=None)  # loaded once: the K sweep's trials and the final fit share it
        gate_used = "static" if baseline == "static" else gate
        sel = auto_k(
            run,
            k_range,
            dict(params, gate=gate_used, gate_input=gate_input),
            holdout=params["holdout"],
            out_dir=out / "k_selection",
            log=console_log(console),
        )
        console.print(f"chose {sel.reason}", highlight=False, soft_wrap=True)
        console.print(f"K selection: {out / 'k_selection'} | fitting the final model with K={sel.chosen_k}")
        k, extra_meta = str(sel.chosen_k), {"k_selection": sel.to_dict()}
    report = fit_run(
        run_dir,
        run=run,
        k=int(k),
        gate=gate,
        gate_input=gate_input,
        baseline=baseline,
        out=out,
        on_iter=on_iter,
        extra_meta=extra_meta,
        random_state=seed,
        solver=AdamWSolver(epochs=epochs) if optimizer == "adamw" else "em",
        **params,
    )
    print_fit_report(console, report)
