"""micro command line: a thin Typer layer over ``pipeline`` (no math, no storage logic here)."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

import numpy as np

from pipeline import checks as C
from pipeline.errors import Interrupted, MicroError, first_line, os_error_line

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Personalised reward modelling (MiCRo): embed once, fit mixture heads, route per user.")
data_app = typer.Typer(no_args_is_help=True, help="Prepare preference data into the canonical pair table.")
app.add_typer(data_app, name="data")


# --- data prepare -------------------------------------------------------------------------------

def _parse_opt(text: str) -> tuple[str, object]:
    """'KEY=VALUE' -> (key, bool | int | float | str)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise MicroError(f"--opt expects KEY=VALUE, got {text!r}")
    low = raw.strip().lower()
    if low in ("true", "false"):
        return key.strip().replace("-", "_"), low == "true"
    for cast in (int, float):
        try:
            return key.strip().replace("-", "_"), cast(raw)
        except ValueError:
            pass
    return key.strip().replace("-", "_"), raw


@data_app.command("prepare")
def data_prepare(
    recipe: str = typer.Argument(..., help="generic, hh-rlhf, hh-relabeled, dsp, pandalm, helpsteer2 or rpr"),
    inputs: List[Path] = typer.Argument(..., help="input files (JSONL[.gz], JSON, Parquet, CSV)"),
    out: Path = typer.Option(..., "-o", "--out", help="output pair table (.parquet)"),
    test_size: float = typer.Option(0.2, help="fraction of prompts in the test split (grouped by prompt)"),
    seed: int = typer.Option(0, help="seed of the prompt-hash split"),
    strict: bool = typer.Option(False, "--strict", help="stop at the first bad row instead of skipping it"),
    prompt_col: Optional[str] = typer.Option(None, help="generic: prompt column"),
    chosen_col: Optional[str] = typer.Option(None, help="generic: chosen column"),
    rejected_col: Optional[str] = typer.Option(None, help="generic: rejected column"),
    group_col: Optional[str] = typer.Option(None, help="generic: group column"),
    context_col: Optional[str] = typer.Option(None, help="generic: context column"),
    split_col: Optional[str] = typer.Option(None, help="generic: split column (kept instead of hashing)"),
    a_col: Optional[str] = typer.Option(None, help="generic: first response column (two responses + label)"),
    b_col: Optional[str] = typer.Option(None, help="generic: second response column"),
    label_col: Optional[str] = typer.Option(None, help="generic: label column"),
    label_a: Optional[str] = typer.Option(None, help="generic: label value meaning 'a better' (default a)"),
    label_b: Optional[str] = typer.Option(None, help="generic: label value meaning 'b better' (default b)"),
    label_tie: Optional[str] = typer.Option(None, help="generic: label value meaning a tie (default tie)"),
    opt: List[str] = typer.Option([], "--opt", help="recipe option KEY=VALUE, e.g. min_gap=2 (repeatable)"),
) -> None:
    """Prepare preference data into the canonical pair table (one row per pair, train/test split)."""
    from pipeline.data.prepare import check_inputs, get_recipe, prepare

    C.number(test_size, "--test-size", low=0, high=1)
    C.integer(seed, "--seed", minimum=0)
    C.out_file(out, "--out", suffixes=(".parquet",))
    columns = dict(prompt_col=prompt_col, chosen_col=chosen_col, rejected_col=rejected_col, group_col=group_col,
                   context_col=context_col, split_col=split_col, a_col=a_col, b_col=b_col, label_col=label_col,
                   label_a=label_a, label_b=label_b, label_tie=label_tie)
    options = {k: v for k, v in columns.items() if v is not None}
    options.update(_parse_opt(o) for o in opt)
    get_recipe(recipe, options)
    check_inputs(inputs)
    prepare(recipe, inputs, out, test_size=test_size, seed=seed, strict=strict, **options)


# --- embed --------------------------------------------------------------------------------------
def _progress_factory(console):
    """A rich progress bar (texts, texts/s, ETA) that the embed loop advances."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    holder = {}

    def factory(total: int):
        if total == 0:
            return None
        prog = Progress(TextColumn("embedding"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[rate]} texts/s"), TimeRemainingColumn(), console=console,
                        transient=False)
        prog.start()
        task = prog.add_task("embed", total=total, rate="-")
        holder["prog"], holder["t0"], holder["done"] = prog, __import__("time").perf_counter(), 0

        def advance(n: int) -> None:
            holder["done"] += n
            rate = holder["done"] / max(1e-9, __import__("time").perf_counter() - holder["t0"])
            prog.update(task, advance=n, rate=f"{rate:.1f}")
            if holder["done"] >= total:
                prog.stop()

        return advance

    return factory, holder


@app.command()
def embed(
    pairs: Path = typer.Argument(..., help="Pair table from `micro data prepare`."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder to write (pairs, cache keys, run.json)."),
    backend: str = typer.Option("sentence-transformers", help="sentence-transformers | transformers | vllm"),
    model: Optional[str] = typer.Option(None, help="Local model folder (default: bundled all-MiniLM-L6-v2)."),
    batch_size: Optional[int] = typer.Option(None, help="sentence-transformers: texts per forward pass (default "
                                             "32); transformers: at most this many texts in a token-budget batch."),
    max_batch_tokens: Optional[int] = typer.Option(None, help="transformers: padded tokens per forward pass (default: "
                                                   "what free GPU memory holds; 8192 on CPU); halved on out-of-memory."),
    device: str = typer.Option("auto", help="auto (CUDA when present) | cpu | cuda | cuda:N, every backend."),
    attn_implementation: Optional[str] = typer.Option(None, help="transformers: sdpa (default) | eager | "
                                                      "flash_attention_2 (packed batches without padding)."),
    max_length: Optional[int] = typer.Option(None, help="Max tokens per text (default: the model's)."),
    dtype: Optional[str] = typer.Option(None, help="Model compute dtype (default: fp32 on CPU, bf16 on GPU)."),
    cache_dir: Optional[Path] = typer.Option(None, help="Embedding cache root (default ~/.cache/micro/embeddings)."),
    cache_dtype: str = typer.Option("float32", help="Stored vector dtype: float32 | float16."),
    overlong: str = typer.Option("truncate", help="Texts over max length: truncate | skip (counted either way)."),
    truncation: str = typer.Option("left", help="Texts over --max-length: keep the last (left) or first (right) tokens, or history: drop the oldest turns, then cut the response's end."),
    tensor_parallel_size: int = typer.Option(1, help="vLLM: GPUs per model replica."),
    gpu_memory_utilization: Optional[float] = typer.Option(None, help="vLLM: fraction of GPU memory the engine takes "
                                                           "(default 0.9)."),
    max_model_len: Optional[int] = typer.Option(None, help="vLLM: engine context length (default: the max length)."),
    max_num_batched_tokens: Optional[int] = typer.Option(None, help="vLLM: tokens per engine step."),
    enforce_eager: bool = typer.Option(False, "--enforce-eager", help="vLLM: no CUDA graphs / compilation "
                                       "(faster start, slower steps)."),
    trust_remote_code: bool = typer.Option(False, help="transformers/vLLM: run the model repo's own code."),
    workers: int = typer.Option(1, help="Worker processes embedding the missing texts in parallel (data parallel; "
                                "GPU backends: one GPU, or vLLM one tensor-parallel group, per worker)."),
    ray: bool = typer.Option(False, "--ray", help="Run the --workers shards as Ray tasks (needs the ray extra); "
                             "the cache must be on a filesystem shared by every node."),
    address: Optional[str] = typer.Option(None, help="--ray: cluster to join (default RAY_ADDRESS, else a local Ray)."),
) -> None:
    """Stage 0: embed every unique prompt+response, prompt and context+prompt once into the cache."""
    from rich.console import Console

    from cache.store import DTYPES
    from pipeline.embed.backends import BACKENDS, check_options, get_backend
    from pipeline.embed.backends.chat import TRUNCATION_SIDES
    from pipeline.embed.backends.hf import _DTYPES as COMPUTE_DTYPES
    from pipeline.embed.embed import embed_pairs
    from pipeline.data.schema import read_pairs

    C.choice(backend, "--backend", (*BACKENDS, "st"))
    C.integer(batch_size, "--batch-size", optional=True)
    C.integer(max_length, "--max-length", optional=True)
    C.choice(dtype, "--dtype", (*COMPUTE_DTYPES, "auto"), optional=True)
    C.choice(cache_dtype, "--cache-dtype", DTYPES)
    C.choice(overlong, "--overlong", ("truncate", "skip"))
    C.choice(truncation, "--truncation", TRUNCATION_SIDES)
    C.integer(tensor_parallel_size, "--tensor-parallel-size")
    C.integer(workers, "--workers")
    if address and not ray:
        raise MicroError("--address is the Ray cluster to join: it needs --ray")
    C.out_dir(out, "--out")
    C.cache_dir(cache_dir)
    read_pairs(pairs)  # a bad pair table fails here, before any model is loaded
    console = Console(stderr=True)
    decoder = backend in ("transformers", "vllm")
    kw = check_options(  # before any model loads
        backend, batch_size=batch_size, max_length=max_length, truncation=truncation,
        dtype=COMPUTE_DTYPES[dtype] if dtype and dtype != "auto" else None,
        device=device, max_batch_tokens=max_batch_tokens, attn_implementation=attn_implementation,
        trust_remote_code=True if decoder and trust_remote_code else None,
        tensor_parallel_size=tensor_parallel_size if backend == "vllm" else None,
        gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
        max_num_batched_tokens=max_num_batched_tokens, enforce_eager=True if enforce_eager else None)
    embed_fn = None
    if workers != 1 or ray or address:
        from pipeline.embed.workers import BackendSpec, ParallelEmbedder, parent_backend

        spec = BackendSpec(backend, model, kw, get_backend)  # each worker builds its own backend from this
        embed_fn = ParallelEmbedder(spec, workers, use_ray=ray, address=address)
        be = parent_backend(spec)  # plans only: transformers/vLLM models load in the workers, not here
    else:
        be = get_backend(backend, model, **kw)
    factory, holder = _progress_factory(console)
    try:
        s = embed_pairs(pairs, out, be, cache_dir=cache_dir, dtype=cache_dtype, overlong=overlong,
                        progress_factory=factory, embed_fn=embed_fn,
                        log=lambda m: console.print(m, highlight=False, soft_wrap=True))
    except KeyboardInterrupt:
        if "prog" in holder:
            holder["prog"].stop()
        raise Interrupted(f"interrupted: {holder.get('done', 0)} new texts were saved to the cache; "
                          "rerun the same command to resume") from None
    except MicroError:  # e.g. a parallel worker died: end the bar before the one-line error
        if "prog" in holder:
            holder["prog"].stop()
        raise
    finally:
        be.close()
    console.print(
        f"pairs {s.pairs} (kept {s.pairs_kept}, skipped {s.skipped_pairs}) | unique texts {s.unique_texts} | "
        f"cache hits {s.cache_hits} | newly embedded {s.embedded} | truncated {s.truncated} | "
        f"skipped texts {s.skipped_texts} | {s.seconds:.1f} s"
        + (f" ({s.texts_per_second:.1f} texts/s, {s.tokens_embedded / max(s.embed_seconds, 1e-9):,.0f} tokens/s)"
           if s.embedded else ""), soft_wrap=True)
    console.print(f"run folder: {out}", soft_wrap=True)


# --- fit ----------------------------------------------------------------------------------------
def _print_fit_report(console, report) -> None:
    """Closing table: mixture log-likelihood/accuracy per split, then head × group accuracy (Table 7/8 shape)."""
    from rich.table import Table

    sel = report.selection
    if sel.get("path"):
        console.print(f"selection on {sel['val_pairs']} held-out pairs ({sel['holdout']:.0%} of the train prompts, "
                      f"{sel['seconds']:.1f} s): " + "  ".join(
                          f"{p['c']:.3g}→{p['val_loglik']:.4f}" for p in sorted(sel["path"], key=lambda p: p["c"]))
                      + " (relative L2 → held-out log-lik)", highlight=False, soft_wrap=True)
    cal = sel.get("calibration")
    console.print(f"chosen: l2 {sel['l2']:.3g}, gate l2 {sel['gate_l2']:.3g}, width {sel['dim']} (gate {sel['gate_dim']}),"
                  f" temperature {sel['temperature']:.3f}"
                  + (f" (held-out NLL {cal['val_nll_before']:.4f} → {cal['val_nll_after']:.4f})" if cal else ""),
                  highlight=False, soft_wrap=True)
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
        h.add_column(f"{g} (n={n})", justify="right")
    best = report.head_group_accuracy.argmax(axis=0)
    for k, row in enumerate(report.head_group_accuracy):
        h.add_row(str(k), *[(f"[bold]{v:.3f}[/]" if best[j] == k else f"{v:.3f}") for j, v in enumerate(row)])
    console.print(h)
    for note in report.notes:
        console.print(f"note: {note}")
    for p in report.plots:
        console.print(f"written: {p}")
    console.print(f"gate input: {report.gate_input} | {report.seconds:.1f} s"
                  + (f" | bundle: {report.bundle}" if report.bundle else ""))



@app.command()
def fit(
    run_dir: Path = typer.Argument(..., help="Run folder from `micro embed`."),
    k: str = typer.Option("10", "--k", help="Number of reward heads K, or 'auto' (K sweep on held-out train prompts, "
                          "one-SE rule; see --k-range)."),
    k_range: str = typer.Option("1..16", "--k-range", help="--k auto: K range LOW..HIGH (≤ 8 values: all; else "
                                "1, 2, 4, 6, 8, 10, 12, 16, … within it), 3 seeds."),
    gate: str = typer.Option("context", help="context (prompt-dependent gate) | static (one global mixture)."),
    gate_input: str = typer.Option("auto", help="What the gate reads: prompt | context | auto (context if present)."),
    gate_hidden: Optional[int] = typer.Option(None, help="Hidden units of an MLP gate (paper: 128); default linear."),
    alpha: float = typer.Option(0.0, help="Weight of the per-row gate-entropy term (paper: 0.5; collapses heads here)."),
    l2: str = typer.Option("auto", help="L2 penalty on the heads, or auto: chosen on held-out train prompts "
                           "(a path in units of the features' scale; early stopping; refit on all pairs)."),
    gate_l2: Optional[float] = typer.Option(None, help="L2 penalty on the gate weights (default: --l2)."),
    holdout: float = typer.Option(0.2, help="Fraction of the train prompts held out for --l2 auto and calibration."),
    patience: int = typer.Option(10, help="EM iterations without a better held-out log-likelihood before a "
                                 "selection fit stops."),
    calibrate: str = typer.Option("auto", help="Temperature on the mixture logit fitted on the held-out prompts: "
                                  "auto (when selecting, if it lowers the held-out NLL) | on | off."),
    n_init: int = typer.Option(4, help="EM restarts (best objective kept)."),
    max_iter: int = typer.Option(200, help="Max EM iterations per restart."),
    tol: float = typer.Option(1e-6, help="Stop when the relative objective change is below this."),
    seed: int = typer.Option(0, help="Random seed."),
    dim: str = typer.Option("auto", help="PCA width of the response features (fitted on train): auto (full up to "
                            "512 features, else 256) | none (full width) | N."),
    gate_dim: str = typer.Option("auto", help="The same for the gate's input features."),
    init: str = typer.Option("gate-kmeans", help="gate-kmeans | kmeans | random | split."),
    optimizer: str = typer.Option("em", help="em (fast EM) | adamw (the paper's minibatch recipe)."),
    epochs: int = typer.Option(1, help="adamw: epochs."),
    baseline: Optional[str] = typer.Option(None, help="single (one BT head) | static (Static Mixture)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Model bundle folder (default RUN_DIR/model)."),
    quiet: bool = typer.Option(False, help="No per-iteration progress."),
) -> None:
    """Stage 1: fit K Bradley-Terry heads and a gate by EM on cached features; write a model bundle."""
    import time as _time

    from rich.console import Console

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
    C.number(alpha, "--alpha", low=0)
    sel_kw = dict(l2=C.auto_number(l2, "--l2"), gate_l2=C.number(gate_l2, "--gate-l2", low=0, optional=True),
                  dim=C.auto_number(dim, "--dim", int, none=True),
                  gate_dim=C.auto_number(gate_dim, "--gate-dim", int, none=True),
                  holdout=C.number(holdout, "--holdout", low=0, high=1, high_open=True),
                  patience=C.integer(patience, "--patience"),
                  calibrate={"auto": "auto", "on": True, "off": False}[C.choice(calibrate, "--calibrate",
                                                                             ("auto", "on", "off"))])
    C.integer(n_init, "--n-init")
    C.integer(max_iter, "--max-iter", minimum=0)
    C.number(tol, "--tol", low=0)
    C.integer(seed, "--seed", minimum=0)
    C.choice(init, "--init", INITS)
    C.choice(optimizer, "--optimizer", ("em", "adamw"))
    C.integer(epochs, "--epochs")
    C.choice(baseline, "--baseline", BASELINES, optional=True)
    if auto and optimizer != "em":
        raise MicroError("--k auto fits with --optimizer em")
    if auto and baseline == "single":
        raise MicroError("--k auto: the single baseline has one head")
    read_run(run_dir)
    C.out_dir(out or Path(run_dir) / "model", "--out")
    console = Console(stderr=True)
    state = {"t": _time.perf_counter(), "prev": None}

    def on_iter(it: int, obj: float) -> None:
        if quiet:
            return
        prev, state["prev"] = state["prev"], obj
        rel = "" if prev is None else f"  rel.change {abs(prev - obj) / max(abs(prev), 1e-12):.2e}"
        console.print(f"  iter {it:4d}  objective {obj:.6f}{rel}  {_time.perf_counter() - state['t']:.1f} s",
                      highlight=False)

    out = out or Path(run_dir) / "model"
    extra_meta = None
    if auto:
        from pipeline.sweep.runner import auto_k

        sel = auto_k(run_dir, k_range, dict(gate="static" if baseline == "static" else gate, gate_input=gate_input,
                                            gate_hidden=gate_hidden, alpha=alpha, l2=sel_kw["l2"], n_init=n_init,
                                            max_iter=max_iter, tol=tol, dim=sel_kw["dim"], init=init),
                     out_dir=out / "k_selection", log=lambda m: console.print(m, highlight=False, soft_wrap=True))
        console.print(f"chose {sel.reason}", highlight=False, soft_wrap=True)
        console.print(f"K selection: {out / 'k_selection'} | fitting the final model with K={sel.chosen_k}")
        k, extra_meta = str(sel.chosen_k), {"k_selection": sel.to_dict()}
    report = fit_run(run_dir, k=int(k), gate=gate, gate_input=gate_input, baseline=baseline,
                     out=out, on_iter=on_iter, extra_meta=extra_meta, alpha=alpha, n_init=n_init,
                     max_iter=max_iter, tol=tol, random_state=seed, init=init,
                     solver=AdamWSolver(epochs=epochs) if optimizer == "adamw" else "em", gate_hidden=gate_hidden,
                     **sel_kw)
    _print_fit_report(console, report)


# --- route / eval / score -----------------------------------------------------------------------
def _seeds(seeds: int) -> tuple:
    return tuple(range(C.integer(seeds, "--seeds")))


def _router_options(tau: float, epochs: int, budget: int, seeds: int, lr: float) -> tuple:
    """Checked router options (route and eval); returns the seeds."""
    C.number(tau, "--tau", low=0, low_open=True)
    C.integer(epochs, "--epochs")
    C.integer(budget, "--budget-per-group")
    C.number(lr, "--lr", low=0, low_open=True)
    return _seeds(seeds)


def _print_route(console, res) -> None:
    from rich.table import Table

    t = Table(title=f"held-out accuracy per group: Stage-1 gate vs routed (B={res.budget}/group, "
                    f"mean ± std over {len(res.seeds)} seeds)")
    for c in ("group", "n", "before", "after"):
        t.add_column(c, justify="right")
    for j, g in enumerate(res.groups):
        t.add_row(str(g), str(res.counts[j]), f"{res.before[j]:.4f}",
                  f"{res.after_mean[j]:.4f} ± {res.after_std[j]:.4f}")
    macro = res.after.mean(axis=1)
    t.add_row("macro", str(sum(res.counts)), f"{np.nanmean(res.before):.4f}", f"{macro.mean():.4f} ± {macro.std():.4f}")
    console.print(t)
    for note in res.notes:
        console.print(f"note: {note}")


@app.command()
def route(
    model: Path = typer.Argument(..., help="Stage-1 model bundle from `micro fit`."),
    user_data: Path = typer.Option(..., "--user-data", help="User pairs with contexts (any `data prepare` format)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Routed bundle folder (default MODEL-routed)."),
    tau: float = typer.Option(1.0, help="Temperature of the soft labels ω ∝ f·exp(−L/τ) (paper: 1e-3)."),
    epochs: int = typer.Option(10, help="Router epochs."),
    budget_per_group: int = typer.Option(50, help="Labelled pairs per group used to route (B)."),
    seeds: int = typer.Option(5, help="Random draws of the B pairs (results are mean ± std)."),
    lr: float = typer.Option(3e-2, help="Router learning rate (Adam)."),
    user: Optional[str] = typer.Option(None, help="Only this user (group): an adapted profile (or, with --online, "
                                       "the online profile) of that user alone."),
    online: bool = typer.Option(False, help="Build a per-user profile updated pair by pair instead of training."),
    hedge_tau: float = typer.Option(1.0, help="--online: Hedge temperature (1 = Bayesian posterior over heads)."),
    adapt: str = typer.Option("auto", help="auto | mixture | residual: mixture = routing only (and the Hedge profile "
                              "with --online); auto also fits per-user residuals, kept where cross-validation on the "
                              "user's pairs prefers them; residual always keeps them."),
) -> None:
    """Stage 2: route mixture weights to user contexts from a few labelled pairs (paper Alg. 1), and adapt per user."""
    from rich.console import Console

    from heads.user import ADAPT
    from pipeline.route import route as R
    from pipeline.core.bundle import read_meta

    seed_list = _router_options(tau, epochs, budget_per_group, seeds, lr)
    C.number(hedge_tau, "--hedge-tau", low=0, low_open=True)
    C.choice(adapt, "--adapt", ADAPT)
    if online and not user:
        raise MicroError("--online needs --user NAME (the group in the user data whose profile to build)")
    read_meta(model)
    C.existing_file(user_data, "--user-data")
    C.out_dir(out or (model.parent / "profiles" if user else model.parent / f"{model.name}-routed"), "--out")
    console = Console(stderr=True)
    log = lambda msg: console.print(msg, highlight=False)  # noqa: E731
    if online:
        if adapt == "mixture":
            from pipeline.route.profiles import build_profile

            _print_profile(console, build_profile(model, user_data, user, out or model.parent / "profiles",
                                                  tau=hedge_tau, log=log))
        else:
            from pipeline.route.adapt import build_online

            _print_online(console, build_online(model, user_data, user, out or model.parent / "profiles",
                                                adapt=adapt, tau=hedge_tau, log=log))
        return
    if user is None:
        routed = out or model.parent / f"{model.name}-routed"
        res = R.route(model, user_data, routed, tau=tau, epochs=epochs, budget=budget_per_group,
                      seeds=seed_list, lr=lr, log=log)
        _print_route(console, res)
        console.print(f"routed bundle: {routed}")
    if adapt != "mixture" or user is not None:
        from pipeline.route.adapt import adapt_users

        users_dir = (out or model.parent / f"{model.name}-routed") / "users" if user is None else \
            (out or model.parent / "profiles")
        _print_adapt(console, adapt_users(model, user_data, users_dir, adapt=adapt, budget=budget_per_group,
                                          seeds=seed_list, user=user,
                                          router={"tau": tau, "epochs": epochs, "lr": lr}, log=log))


def _print_adapt(console, res) -> None:
    from rich.table import Table

    t = Table(title=f"held-out accuracy per user: Stage-1 gate, routing, adapted (B={res.budget}, mean ± std over "
                    f"{len(res.seeds)} seeds)")
    for c in ("user", "n", "stage-1 gate", "routing", "adapted", "residual chosen"):
        t.add_column(c, justify="right")
    for j, u in enumerate(res.users):
        r, a = res.routing[:, j], res.adapted[:, j]
        t.add_row(str(u), str(res.counts[j]), f"{res.before[j]:.4f}", f"{r.mean():.4f} ± {r.std():.4f}",
                  f"{a.mean():.4f} ± {a.std():.4f}", f"{res.choices[j]:.0%}")
    console.print(t)
    for note in res.notes:
        console.print(f"note: {note}", soft_wrap=True)
    for p in res.paths:
        console.print(f"profile saved: {p}", soft_wrap=True)


def _print_online(console, res) -> None:
    console.print(f"profile of '{res.user}' after {res.n_stream} pairs: serving '{res.served}' (prequential "
                  "log-loss " + ", ".join(f"{k} {v:.2f}" for k, v in res.losses.items()) + ")", soft_wrap=True)
    if len(res.curve):
        marks = sorted({0, 1, 2, 5, 10, 20, 50, len(res.curve) - 1} & set(range(len(res.curve))))
        console.print(f"learning curve, accuracy on {res.n_heldout} held-out pairs after n pairs seen (prior alone): "
                      + "  ".join(f"n={n}: {res.curve[n]:.3f} ({res.prior_curve[n]:.3f})" for n in marks),
                      soft_wrap=True)
    console.print(f"profile saved: {res.path}", soft_wrap=True)


def _print_profile(console, prof) -> None:
    w = ", ".join(f"{v:.3f}" for v in prof.weights)
    console.print(f"profile of '{prof.user}' after {prof.n_stream} pairs (prior: {prof.prior}): weights [{w}]")
    if len(prof.curve):
        marks = sorted({0, 1, 2, 5, 10, 20, 50, len(prof.curve) - 1} & set(range(len(prof.curve))))
        console.print(f"learning curve, accuracy on {prof.n_heldout} held-out pairs after n pairs seen: "
                      + "  ".join(f"n={n}: {prof.curve[n]:.3f}" for n in marks))
    console.print(f"profile saved: {prof.path}")


@app.command()
def score(
    model: Path = typer.Argument(..., help="Model bundle (Stage-1 or routed)."),
    input: Path = typer.Option(..., "--input", "-i", help="Rows with 'prompt' and 'response' (jsonl/json/csv/parquet)."),
    out: Path = typer.Option(Path("rewards.parquet"), "--out", "-o", help="Output .parquet or .jsonl."),
    context: Optional[str] = typer.Option(None, help="User criterion the gate reads (context+prompt)."),
    user: Optional[Path] = typer.Option(None, help="A profile JSON from `micro route --online` or `micro route` "
                                        "(OUT/users/NAME.json): its weights, and its residual v·φ when adapted."),
) -> None:
    """Rewards per head and mixed (Σ_k f_k r_k, + v·φ with an adapted profile) for (prompt, response) rows."""
    from pipeline.core.bundle import read_meta
    from pipeline.route.score import score_file

    if context and user:
        raise MicroError("give either --context or --user, not both")
    if context is not None and not context.strip():
        raise MicroError("--context is empty")
    read_meta(model)
    C.existing_file(input, "--input")
    if user is not None:
        C.existing_file(user, "--user")
    C.out_file(out, "--out", suffixes=(".parquet", ".jsonl"))
    path = score_file(model, input, out, context=context, profile_path=user)
    print(f"rewards written: {path}", file=sys.stderr)


@app.command("eval")
def eval_cmd(
    model: Path = typer.Argument(..., help="Stage-1 model bundle from `micro fit`."),
    run_dir: Path = typer.Argument(..., help="Run folder from `micro embed` (train split fits, test split scores)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write results.csv/.parquet/.md and figures here."),
    protocol: str = typer.Option("seen", help="seen (the paper's tables: every group seen in Stage 1) | "
                                 "leave-group-out (each group in turn is a new user: Stage 1 refitted without it)."),
    budget_per_group: int = typer.Option(50, help="Labelled train pairs per group for the MiCRo router (B)."),
    seeds: Optional[int] = typer.Option(None, help="Seeds of the HyRe draws and router budgets (mean ± std); "
                                        "default 5 (seen) / 3 (leave-group-out)."),
    hyre_n: int = typer.Option(16, help="Labelled test pairs per group that (MiCRo-)HyRe adapts on."),
    budgets: Optional[str] = typer.Option(None, help="Budgets B: of the accuracy-vs-budget figure (seen, default "
                                          "5,10,25,50,100,150) / of the new users' adaptation (default 50,200)."),
    tau: float = typer.Option(1.0, help="Router soft-label temperature (paper: 1e-3)."),
    epochs: int = typer.Option(10, help="Router epochs."),
    lr: float = typer.Option(3e-2, help="Router learning rate (Adam)."),
    adapt: str = typer.Option("auto", help="leave-group-out: the 'adapted' row's --adapt (auto | mixture | residual)."),
    jobs: Optional[int] = typer.Option(None, help="leave-group-out: folds in parallel (default: CPU cores)."),
) -> None:
    """Paper Table 2/3 (seen groups), or new users by leave-one-group-out (--protocol leave-group-out)."""
    from heads.user import ADAPT
    from pipeline.core.bundle import read_meta
    from pipeline.evaluate.evaluate import _parse_budgets
    from pipeline.core.run import read_run

    lgo = C.choice(protocol, "--protocol", ("seen", "leave-group-out")) == "leave-group-out"
    seed_list = _router_options(tau, epochs, budget_per_group, (3 if lgo else 5) if seeds is None else seeds, lr)
    C.integer(hyre_n, "--hyre-n", minimum=0)
    C.choice(adapt, "--adapt", ADAPT)
    C.integer(jobs, "--jobs", optional=True)
    budgets = budgets or ("50,200" if lgo else "5,10,25,50,100,150")
    _parse_budgets(budgets)
    read_meta(model)
    read_run(run_dir)
    if report is not None:
        C.out_dir(report, "--report")
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    if lgo:
        from pipeline.evaluate.lgo import leave_group_out

        res = leave_group_out(model, run_dir, budgets=budgets, seeds=seed_list, adapt=adapt, report=report,
                              jobs=jobs, tau=tau, epochs=epochs, lr=lr, log=log)
    else:
        from pipeline.evaluate.evaluate import evaluate

        res = evaluate(model, run_dir, report=report, budget=budget_per_group, seeds=seed_list, hyre_n=hyre_n,
                       budgets=budgets, tau=tau, epochs=epochs, lr=lr, log=log)
    print(res.markdown())
    for note in res.notes:
        print(f"note: {note}", file=sys.stderr)
    for p in [*res.files, *res.plots]:
        print(f"written: {p}", file=sys.stderr)
    print(f"eval: {res.seconds:.1f} s", file=sys.stderr)


# --- sweep --------------------------------------------------------------------------------------
@app.command()
def sweep(
    run_dir: Path = typer.Argument(..., help="Run folder from `micro embed` (features are loaded once, never re-embedded)."),
    grid: List[str] = typer.Option(..., "--grid", help="Search space, e.g. 'k=1,2,5,10; alpha=0,0.5; l2=1e-4,1e-3'; "
                                   "with --samples also ranges: alpha=0..1, tau=log:1e-4..1e-2, k=int:1..16."),
    seeds: int = typer.Option(3, help="Seeds per configuration (fit random_state, validation draw, router draw)."),
    stage: str = typer.Option("fit", help="fit (Stage 1) | route / all (Stage 1 + one router per trial)."),
    backend: str = typer.Option("local", help="local (process pool) | ray."),
    jobs: Optional[int] = typer.Option(None, help="Trials in parallel (default: CPU cores)."),
    samples: Optional[int] = typer.Option(None, help="Random search: draw N configurations from the space."),
    sample_seed: int = typer.Option(0, help="Seed of the random-search draws."),
    holdout: float = typer.Option(0.2, help="Fraction of the train prompts held out for val_* metrics / K selection."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Results Parquet (default RUN_DIR/sweep/results.parquet)."),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (default $RAY_ADDRESS, else a local Ray)."),
    rank_by: Optional[str] = typer.Option(None, help="Leaderboard column (default test_acc_macro; routed_acc_macro "
                                          "with routing); e.g. test_loglik, val_loglik."),
    top: int = typer.Option(10, help="Leaderboard rows."),
    retry_errors: bool = typer.Option(False, help="Rerun trials that recorded an error."),
) -> None:
    """Grid / random hyperparameter search of fit (and route) on cached features; resumable Parquet results."""
    from rich.console import Console

    from pipeline.core.run import read_run
    from pipeline.sweep.runner import STAGES, run_sweep, search_space
    from pipeline.sweep.report import print_leaderboard

    C.integer(seeds, "--seeds")
    C.choice(stage, "--stage", STAGES)
    C.choice(backend, "--backend", ("local", "ray"))
    C.integer(jobs, "--jobs", optional=True)
    C.integer(samples, "--samples", optional=True)
    C.integer(sample_seed, "--sample-seed", minimum=0)
    C.number(holdout, "--holdout", low=0, high=1, high_open=True)
    C.integer(top, "--top")
    if address and backend != "ray":
        raise MicroError("--address is the Ray cluster to join: it needs --backend ray")
    search_space(grid, stage, samples, sample_seed)
    read_run(run_dir)
    C.out_file(out or Path(run_dir) / "sweep" / "results.parquet", "--out", suffixes=(".parquet",))
    console = Console(stderr=True)
    res = run_sweep(run_dir, grid, seeds=seeds, stage=stage, backend=backend, jobs=jobs, samples=samples,
                    sample_seed=sample_seed, out=out or Path(run_dir) / "sweep" / "results.parquet", address=address,
                    holdout=holdout, rank_by=rank_by, retry_errors=retry_errors,
                    log=lambda m: console.print(m, highlight=False, soft_wrap=True))
    if res.frame is not None and res.frame.height:
        print_leaderboard(console, res.frame, res.rank_by, top)
        n_err = res.frame["error"].is_not_null().sum()
        if n_err:
            console.print(f"{n_err} trial(s) failed (see the 'error' column)")
    if res.k_selection is not None:
        console.print(f"K selection (validation log-lik, one-SE rule): {res.k_selection.reason}", highlight=False)
    for p in res.plots:
        console.print(f"written: {p}")
    console.print(f"results: {res.path} ({res.new} new, {res.skipped} already there) | {res.seconds:.1f} s")


# --- demo ---------------------------------------------------------------------------------------
@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Folder for every stage's output."),
    k: int = typer.Option(10, "--k", help="Number of reward heads."),
    seeds: int = typer.Option(3, help="Router / HyRe seeds."),
    cache_dir: Optional[Path] = typer.Option(None, help="Embedding cache root (default ~/.cache/micro/embeddings)."),
) -> None:
    """The whole pipeline on the bundled DSP sample (CPU, bundled model): prepare → embed → fit → route → eval."""
    from rich.console import Console

    from pipeline.demo import run_demo

    C.integer(k, "--k")
    C.integer(seeds, "--seeds")
    C.out_dir(out, "--out")
    C.cache_dir(cache_dir)
    console = Console(stderr=True)
    factory, _ = _progress_factory(console)
    res = run_demo(out, k=k, seeds=seeds, cache_dir=cache_dir, progress_factory=factory,
                   log=lambda m: console.print(m, highlight=False))
    print(res["eval"].markdown())
    console.print(f"query: {res['prompt'][:100]!r}")
    for domain, text in res["picks"].items():
        console.print(f"  best response for a user who says they are into {domain}: {text[:100]!r}…", highlight=False)
    for p in [*res["eval"].files, *res["eval"].plots]:
        console.print(f"written: {p}")
    console.print(f"demo finished in {res['seconds']:.0f} s; outputs in {res['out']}")


DEBUG_HELP = "Show the Python traceback of an error (for bug reports); also MICRO_DEBUG=1."


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP)) -> None:
    """Personalised reward modelling (MiCRo): embed once, fit mixture heads, route per user."""


def _debug(argv: list[str]) -> bool:
    """True if MICRO_DEBUG is set (not 0) or --debug is anywhere on the command line (removed from argv)."""
    on = os.environ.get("MICRO_DEBUG", "").strip() not in ("", "0")
    while "--debug" in argv:
        argv.remove("--debug")
        on = True
    return on


def _one_line_warnings() -> None:
    """Warnings (damaged cache shards, convergence notes) as one 'warning: ...' line each."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {first_line(message) if isinstance(message, Exception) else message}", file=sys.stderr)

    warnings.showwarning = show


def _raised_in_heads(exc: BaseException) -> bool:
    """True if ``exc`` was raised by code in the ``heads`` package (whose ValueErrors are input checks)."""
    import heads

    tb, last = exc.__traceback__, None
    while tb is not None:
        last, tb = tb, tb.tb_next
    from sklearn.utils._param_validation import InvalidParameterError

    if isinstance(exc, InvalidParameterError):  # an estimator's parameter check (sklearn's own validation)
        return True
    root = Path(heads.__file__).resolve().parent
    return last is not None and root in Path(last.tb_frame.f_code.co_filename).resolve().parents


def main() -> None:
    """Entry point and the one error boundary: user and environment errors (MicroError, OSError, usage errors,
    a ValueError raised by the input checks of ``heads``) become one line ``error: ...`` on stderr and exit code 2,
    Ctrl-C exit code 130; anything else is a bug, reported in one line with exit code 1. MICRO_DEBUG=1 or --debug
    shows the traceback."""
    import traceback
    import warnings

    argv = sys.argv[1:]
    debug = _debug(argv)
    shown = warnings.showwarning
    if not debug:
        _one_line_warnings()
    code, line, error = 0, None, None
    try:
        rc = app(args=argv, prog_name="micro", standalone_mode=False)  # typer.Exit(code) is returned, not raised
        code = rc if isinstance(rc, int) else 0
        if code == 130:  # typer turns Ctrl-C into a silent return code
            line = "interrupted"
    except MicroError as exc:
        code, line, error = 2, f"error: {exc}", exc
    except Interrupted as exc:
        code, line = 130, str(exc)
    except (typer.Abort, KeyboardInterrupt):
        code, line = 130, "interrupted"
    except OSError as exc:  # the environment: permission denied, disk full, a folder in the way, ...
        code, line, error = 2, f"error: {os_error_line(exc)}", exc
    except Exception as exc:  # usage errors (typer vendors click: match by shape, not by class)
        error = exc
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            ctx = getattr(exc, "ctx", None)
            code = exc.exit_code or 2
            line = f"error: {exc.format_message()}" + (f" (see '{ctx.command_path} --help')" if ctx else "")
            if type(exc).__name__ == "NoArgsIsHelpError":  # `micro` alone: the help is the message
                line = None
                exc.show()
        elif type(exc).__name__ == "Exit" and hasattr(exc, "exit_code"):
            code = exc.exit_code
        elif isinstance(exc, ValueError) and _raised_in_heads(exc):  # the math refuses its input: a user error
            code, line = 2, f"error: {first_line(exc)}"
        else:
            code = 1
            line = (f"error: internal error ({type(exc).__name__}: {first_line(exc)}); this is a bug: rerun with "
                    "MICRO_DEBUG=1 for the traceback and report it")
    finally:
        warnings.showwarning = shown
    if line is not None:
        if debug and error is not None:
            traceback.print_exception(error)
        print(line, file=sys.stderr)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
