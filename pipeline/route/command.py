"""``micro route`` and ``micro score``: check the options, run Stage 2 (routing, adapted users, online profiles) or
score rows, print the results."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline import checks as C
from pipeline.boundary import console_log
from pipeline.errors import MicroError, shown


def router_options(tau: float, epochs: int, budget: int, seeds: int, lr: float) -> tuple:
    """Checked router options (route and eval); returns the seeds (0, 1, ..., seeds - 1)."""
    C.number(tau, "--tau", low=0, low_open=True)
    C.integer(epochs, "--epochs")
    C.integer(budget, "--budget-per-group")
    C.number(lr, "--lr", low=0, low_open=True)
    return tuple(range(C.integer(seeds, "--seeds")))


def _print_route(console, res) -> None:
    from rich.table import Table

    t = Table(
        title=f"held-out accuracy per group: Stage-1 gate vs routed (B={res.budget}/group, "
        f"mean ± std over {len(res.seeds)} seeds)"
    )
    for c in ("group", "n", "before", "after"):
        t.add_column(c, justify="right")
    for j, g in enumerate(res.groups):
        t.add_row(
            shown(g), str(res.counts[j]), f"{res.before[j]:.4f}", f"{res.after_mean[j]:.4f} ± {res.after_std[j]:.4f}"
        )
    macro = res.after.mean(axis=1)
    t.add_row("macro", str(sum(res.counts)), f"{np.nanmean(res.before):.4f}", f"{macro.mean():.4f} ± {macro.std():.4f}")
    console.print(t)
    for note in res.notes:
        console_log(console)(f"note: {note}")


def _print_adapt(console, res) -> None:
    from rich.table import Table

    t = Table(
        title=f"held-out accuracy per user: Stage-1 gate, routing, adapted (B={res.budget}, mean ± std over "
        f"{len(res.seeds)} seeds)"
    )
    for c in ("user", "n", "stage-1 gate", "routing", "adapted", "residual chosen"):
        t.add_column(c, justify="right")
    for j, u in enumerate(res.users):
        r, a = res.routing[:, j], res.adapted[:, j]
        t.add_row(
            shown(u),
            str(res.counts[j]),
            f"{res.before[j]:.4f}",
            f"{r.mean():.4f} ± {r.std():.4f}",
            f"{a.mean():.4f} ± {a.std():.4f}",
            f"{res.choices[j]:.0%}",
        )
    console.print(t)
    say = console_log(console)
    for note in res.notes:
        say(f"note: {note}")
    for p in res.paths:
        say(f"profile saved: {p}")


def print_online(console, res) -> None:
    say = console_log(console)
    say(
        f"profile of '{res.user}' after {res.n_stream} pairs: serving '{res.served}' (prequential "
        "log-loss " + ", ".join(f"{k} {v:.2f}" for k, v in res.losses.items()) + ")"
    )
    if len(res.curve):
        marks = sorted({0, 1, 2, 5, 10, 20, 50, len(res.curve) - 1} & set(range(len(res.curve))))
        say(
            f"learning curve, accuracy on {res.n_heldout} held-out pairs after n pairs seen (prior alone): "
            + "  ".join(f"n={n}: {res.curve[n]:.3f} ({res.prior_curve[n]:.3f})" for n in marks)
        )
    say(f"profile saved: {res.path}")


def print_profile(console, prof) -> None:
    w = ", ".join(f"{v:.3f}" for v in prof.weights)
    say = console_log(console)
    say(f"profile of '{prof.user}' after {prof.n_stream} pairs (prior: {prof.prior}): weights [{w}]")
    if len(prof.curve):
        marks = sorted({0, 1, 2, 5, 10, 20, 50, len(prof.curve) - 1} & set(range(len(prof.curve))))
        say(
            f"learning curve, accuracy on {prof.n_heldout} held-out pairs after n pairs seen: "
            + "  ".join(f"n={n}: {prof.curve[n]:.3f}" for n in marks)
        )
    say(f"profile saved: {prof.path}")


def route_command(
    model: Path,
    user_data: Path,
    out: Path | None,
    *,
    tau: float,
    epochs: int,
    budget: int,
    seeds: int,
    lr: float,
    user: str | None,
    online: bool,
    hedge_tau: float,
    adapt: str,
    console,
    cache_dir: str | Path | None = None,
) -> None:
    """``micro route`` (see the README): routing, adapted users, or an online profile of one user."""
    from pipeline.core.bundle import read_meta
    from pipeline.route.methods import METHODS, call
    from pipeline.route.route import route

    seed_list = router_options(tau, epochs, budget, seeds, lr)
    C.number(hedge_tau, "--hedge-tau", low=0, low_open=True)
    C.choice(adapt, "--adapt", tuple(METHODS))
    if online and not user:
        raise MicroError("--online needs --user NAME (the group in the user data whose profile to build)")
    read_meta(model)
    C.existing_file(user_data, "--user-data")
    cache_dir = C.cache_dir(cache_dir)
    out = out or (model.parent / "profiles" if user else model.parent / f"{model.name}-routed")
    C.out_dir(out, "--out")
    log = console_log(console)
    from pipeline.core.model import Model

    bundle = Model.load(model)
    bundle.cache_dir = cache_dir
    if online:
        method = METHODS[adapt]
        if method.online is None:
            raise MicroError(f"--online: the method {adapt!r} has no online form")
        res = call(method.online, bundle, user_data, user, out, adapt=adapt, tau=hedge_tau, log=log)
        call(method.report, console, res)
        return
    run = None
    if user is None:  # every group: the user data is embedded once, for the routers and the adapted users
        run = bundle.embed_user_data(user_data, out / "work", log=log)
        if adapt != "mixture":  # the users are checked before the routed bundle is written
            from pipeline.route.adapt import check_users

            check_users(run, user_data)
        res = route(
            bundle, user_data, out, tau=tau, epochs=epochs, budget=budget, seeds=seed_list, lr=lr, log=log, run=run
        )
        _print_route(console, res)
        log(f"routed bundle: {out}")
    if adapt != "mixture" or user is not None:
        from pipeline.route.adapt import adapt_users

        _print_adapt(
            console,
            adapt_users(
                bundle,
                user_data,
                out / "users" if user is None else out,
                adapt=adapt,
                budget=budget,
                seeds=seed_list,
                user=user,
                router={"tau": tau, "epochs": epochs, "lr": lr},
                log=log,
                run=run,
            ),
        )


def score_command(
    model: Path,
    input: Path,
    out: Path,
    *,
    context: str | None,
    user: Path | None,
    cache_dir: str | Path | None = None,
    cache_writes: bool = False,
    device: str | None = None,
) -> Path:
    """``micro score``: rewards of the rows of ``input`` written to ``out``; returns ``out``."""
    from pipeline.core.bundle import read_meta
    from pipeline.embed.backends.device import check_device
    from pipeline.route.score import score_file

    if context and user and not (user / "model.json").is_file():  # a routed bundle as --user reads a context
        raise MicroError("give either --context or --user, not both")
    if context is not None and not context.strip():
        raise MicroError("--context is empty")
    device = check_device(device)  # canonical: CPU -> cpu
    read_meta(model)
    C.existing_file(input, "--input")
    if user is not None and not (user / "model.json").is_file():  # a profile file, or a routed bundle folder
        C.existing_file(user, "--user")
    cache_dir = C.cache_dir(cache_dir)
    C.out_file(out, "--out", suffixes=(".parquet", ".jsonl"))
    return score_file(
        model,
        input,
        out,
        context=context,
        profile_path=user,
        cache_dir=cache_dir,
        cache_writes=cache_writes,
        device=device,
    )
