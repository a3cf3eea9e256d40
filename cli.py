"""micro command line: a thin Typer layer. Each command declares its options (defaults and help from
``heads.defaults``) and calls one function of its stage; checks, work and printing live in ``pipeline``."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from heads.defaults import (
    ADAMW_EPOCHS,
    ALPHA,
    ALPHA_PAPER,
    BUDGET,
    BUDGETS,
    DEMO_SEEDS,
    HEDGE_TAU,
    HOLDOUT,
    HYRE_N,
    LGO_BUDGETS,
    LGO_SEEDS,
    MAX_ITER,
    N_COMPONENTS,
    N_INIT,
    PATIENCE,
    ROUTER_EPOCHS,
    ROUTER_LR,
    SEEDS,
    SWEEP_SEEDS,
    TAU,
    TAU_PAPER,
    TOL,
)
from pipeline.boundary import DEBUG_HELP
from pipeline.embed.backends.device import DEVICE, DEVICE_HELP
from pipeline.serve.command import serve

CACHE_HELP = "Embedding cache, a folder or s3://bucket/prefix (default: the bundle's if here, else ~/.cache/micro)."
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Personalised reward modelling (MiCRo): embed once, fit mixture heads, route per user.",
)
data_app = typer.Typer(no_args_is_help=True, help="Prepare preference data into the canonical pair table.")
app.add_typer(data_app, name="data")


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _call(target: str, options: dict, **extra):
    """Import ``module:function`` (lazily: ``--help`` stays fast) and call it with a command's options by name."""
    import importlib

    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)(**options, **extra)


@data_app.command("prepare")
def data_prepare(
    recipe: str = typer.Argument(..., help="generic, hh-rlhf, hh-relabeled, dsp, pandalm, helpsteer2 or rpr"),
    inputs: list[Path] = typer.Argument(..., help="input files (JSONL[.gz], JSON, Parquet, CSV)"),
    out: Path = typer.Option(..., "-o", "--out", help="output pair table (.parquet)"),
    test_size: float = typer.Option(0.2, help="fraction of prompts in the test split (grouped by prompt)"),
    seed: int = typer.Option(0, help="seed of the prompt-hash split"),
    strict: bool = typer.Option(False, "--strict", help="stop at the first bad row instead of skipping it"),
    prompt_col: str | None = typer.Option(None, help="generic: prompt column"),
    chosen_col: str | None = typer.Option(None, help="generic: chosen column"),
    rejected_col: str | None = typer.Option(None, help="generic: rejected column"),
    group_col: str | None = typer.Option(None, help="generic: group column"),
    context_col: str | None = typer.Option(None, help="generic: context column"),
    split_col: str | None = typer.Option(None, help="generic: split column (kept instead of hashing)"),
    a_col: str | None = typer.Option(None, help="generic: first response column (two responses + label)"),
    b_col: str | None = typer.Option(None, help="generic: second response column"),
    label_col: str | None = typer.Option(None, help="generic: label column"),
    label_a: str | None = typer.Option(None, help="generic: label value meaning 'a better' (default a)"),
    label_b: str | None = typer.Option(None, help="generic: label value meaning 'b better' (default b)"),
    label_tie: str | None = typer.Option(None, help="generic: label value meaning a tie (default tie)"),
    opt: list[str] = typer.Option([], "--opt", help="recipe option KEY=VALUE, e.g. min_gap=2 (repeatable)"),
) -> None:
    """Prepare preference data into the canonical pair table (one row per pair, train/test split)."""
    _call("pipeline.data.prepare:prepare_command", locals())


@app.command()
def embed(
    pairs: Path = typer.Argument(..., help="Pair table from `micro data prepare`."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder to write (pairs, cache keys, run.json)."),
    backend: str = typer.Option("sentence-transformers", help="sentence-transformers | transformers | vllm"),
    model: str | None = typer.Option(None, help="Local model folder (default: bundled all-MiniLM-L6-v2)."),
    batch_size: int | None = typer.Option(
        None,
        help="sentence-transformers: texts per forward pass (default "
        "32); transformers: at most this many texts in a token-budget batch.",
    ),
    max_batch_tokens: int | None = typer.Option(
        None,
        help="sentence-transformers, transformers: padded tokens per forward pass (default on CPU: 2048; on GPU: "
        "transformers what free GPU memory holds, sentence-transformers --batch-size rows alone); halved on "
        "out-of-memory (transformers).",
    ),
    device: str = typer.Option(DEVICE, help=DEVICE_HELP),
    attn_implementation: str | None = typer.Option(
        None, help="transformers: sdpa (default) | eager | flash_attention_2 (packed batches without padding)."
    ),
    max_length: int | None = typer.Option(None, help="Max tokens per text (default: the model's)."),
    dtype: str | None = typer.Option(None, help="Model compute dtype (default: fp32 on CPU, bf16 on GPU)."),
    cache_dir: str | None = typer.Option(None, help="Embedding cache root, a folder or s3://bucket/prefix."),
    cache_dtype: str = typer.Option("float32", help="Stored vector dtype: float32 | float16."),
    overlong: str = typer.Option("truncate", help="Texts over max length: truncate | skip (counted either way)."),
    truncation: str = typer.Option(
        "history",
        help="Texts over --max-length: history drops the oldest turns, then "
        "cuts the response's end (the template stays intact); left / right keep the "
        "last / first tokens.",
    ),
    tensor_parallel_size: int | None = typer.Option(None, help="vLLM: GPUs per model replica (default 1)."),
    gpu_memory_utilization: float | None = typer.Option(
        None, help="vLLM: fraction of GPU memory the engine takes (default 0.9)."
    ),
    max_model_len: int | None = typer.Option(None, help="vLLM: engine context length (default: the max length)."),
    max_num_batched_tokens: int | None = typer.Option(None, help="vLLM: tokens per engine step."),
    enforce_eager: bool = typer.Option(
        False, "--enforce-eager", help="vLLM: no CUDA graphs / compilation (faster start, slower steps)."
    ),
    trust_remote_code: bool = typer.Option(False, help="transformers/vLLM: run the model repo's own code."),
    workers: int = typer.Option(
        1,
        help="Worker processes embedding the missing texts in parallel (data parallel; "
        "GPU backends: one GPU, or vLLM one tensor-parallel group, per worker).",
    ),
    ray: bool = typer.Option(
        False,
        "--ray",
        help="Run the --workers shards as Ray tasks (needs the ray extra); "
        "the cache must be on a filesystem shared by every node.",
    ),
    address: str | None = typer.Option(None, help="--ray: cluster to join (default RAY_ADDRESS, else a local Ray)."),
) -> None:
    """Stage 0: embed every unique prompt+response, prompt and context+prompt once into the cache."""
    _call("pipeline.embed.command:embed_command", locals(), console=_console())


@app.command()
def fit(
    run_dir: Path = typer.Argument(..., help="Run folder from `micro embed`."),
    k: str = typer.Option(
        str(N_COMPONENTS),
        "--k",
        help="Number of reward heads K, or 'auto' (K sweep on held-out train prompts, one-SE rule; see --k-range).",
    ),
    k_range: str = typer.Option(
        "1..16",
        "--k-range",
        help="--k auto: K range LOW..HIGH (≤ 8 values: all; else 1, 2, 4, 6, 8, 10, 12, 16, … within it), "
        f"{SWEEP_SEEDS} seeds.",
    ),
    gate: str = typer.Option("context", help="context (prompt-dependent gate) | static (one global mixture)."),
    gate_input: str = typer.Option("auto", help="What the gate reads: prompt | context | auto (context if present)."),
    gate_hidden: int | None = typer.Option(None, help="Hidden units of an MLP gate (paper: 128); default linear."),
    alpha: float = typer.Option(
        ALPHA, help=f"Weight of the per-row gate-entropy term (paper: {ALPHA_PAPER}; collapses heads here)."
    ),
    l2: str = typer.Option(
        "auto",
        help="L2 penalty on the heads, or auto: chosen on held-out train prompts "
        "(a path in units of the features' scale; early stopping; refit on all pairs).",
    ),
    gate_l2: float | None = typer.Option(None, help="L2 penalty on the gate weights (default: --l2)."),
    holdout: float = typer.Option(
        HOLDOUT, help="Fraction of the train prompts held out for --l2 auto and calibration."
    ),
    patience: int = typer.Option(
        PATIENCE, help="EM iterations without a better held-out log-likelihood before a selection fit stops."
    ),
    calibrate: str = typer.Option(
        "auto",
        help="Temperature on the mixture logit fitted on the held-out prompts: "
        "auto (when selecting, if it lowers the held-out NLL) | on | off.",
    ),
    n_init: int = typer.Option(N_INIT, help="EM restarts (best objective kept)."),
    max_iter: int = typer.Option(MAX_ITER, help="Max EM iterations per restart."),
    tol: float = typer.Option(TOL, help="Stop when the relative objective change is below this."),
    seed: int = typer.Option(0, help="Random seed."),
    dim: str = typer.Option(
        "auto",
        help="PCA width of the response features (fitted on train): auto (full up to "
        "512 features, else 256, or with --l2 auto the better of 64 and 256 on held-out prompts) | none | N.",
    ),
    gate_dim: str = typer.Option("auto", help="The same for the gate's input features."),
    init: str = typer.Option("gate-kmeans", help="gate-kmeans | kmeans | random | split."),
    optimizer: str = typer.Option("em", help="em (fast EM) | adamw (the paper's minibatch recipe)."),
    epochs: int = typer.Option(ADAMW_EPOCHS, help="adamw: epochs."),
    baseline: str | None = typer.Option(None, help="single (one BT head) | static (Static Mixture)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Model bundle folder (default RUN_DIR/model)."),
    quiet: bool = typer.Option(False, help="No per-iteration progress."),
) -> None:
    """Stage 1: fit K Bradley-Terry heads and a gate by EM on cached features; write a model bundle."""
    _call("pipeline.fit.command:fit_command", locals(), console=_console())


@app.command()
def route(
    model: Path = typer.Argument(..., help="Stage-1 model bundle from `micro fit`."),
    user_data: Path = typer.Option(..., "--user-data", help="User pairs with contexts (any `data prepare` format)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Routed bundle folder (default MODEL-routed)."),
    tau: float = typer.Option(TAU, help=f"Temperature of the soft labels ω ∝ f·exp(−L/τ) (paper: {TAU_PAPER:g})."),
    epochs: int = typer.Option(ROUTER_EPOCHS, help="Router epochs."),
    budget: int = typer.Option(BUDGET, "--budget-per-group", help="Labelled pairs per group used to route (B)."),
    seeds: int = typer.Option(SEEDS, help="Random draws of the B pairs (results are mean ± std)."),
    lr: float = typer.Option(ROUTER_LR, help="Router learning rate (Adam)."),
    user: str | None = typer.Option(
        None,
        help="Only this user (group): an adapted profile (or, with --online, the online profile) of that user alone.",
    ),
    online: bool = typer.Option(False, help="Build a per-user profile updated pair by pair instead of training."),
    hedge_tau: float = typer.Option(HEDGE_TAU, help="--online: Hedge temperature (1 = Bayesian posterior over heads)."),
    adapt: str = typer.Option(
        "auto",
        help="auto | mixture | residual: mixture = routing only (and the Hedge profile "
        "with --online); auto also fits per-user residuals, kept where cross-validation on the "
        "user's pairs prefers them; residual always keeps them.",
    ),
    cache_dir: str | None = typer.Option(None, help=CACHE_HELP),
) -> None:
    """Stage 2: route mixture weights to user contexts from a few labelled pairs (paper Alg. 1), and adapt per user."""
    _call("pipeline.route.command:route_command", locals(), console=_console())


@app.command()
def score(
    model: Path = typer.Argument(..., help="Model bundle (Stage-1 or routed)."),
    input: Path = typer.Option(..., "--input", "-i", help="Rows with 'prompt', 'response' (jsonl/json/csv/parquet)."),
    out: Path = typer.Option(Path("rewards.parquet"), "--out", "-o", help="Output .parquet or .jsonl."),
    context: str | None = typer.Option(None, help="User criterion the gate reads (context+prompt)."),
    user: Path | None = typer.Option(None, help="A user: a profile JSON of `micro route` (or a routed bundle)."),
    cache_dir: str | None = typer.Option(None, help=CACHE_HELP),
    cache_writes: bool = typer.Option(False, "--cache-writes", help="Store new embeddings in the cache (default: no)."),
    device: str = typer.Option(DEVICE, help=DEVICE_HELP),
) -> None:
    """Rewards per head and mixed (Σ_k f_k r_k, + v·φ with an adapted profile) for (prompt, response) rows."""
    path = _call("pipeline.route.command:score_command", locals())
    print(f"rewards written: {path}", file=sys.stderr)


@app.command("eval")
def eval_cmd(
    model: Path = typer.Argument(..., help="Stage-1 model bundle from `micro fit`."),
    run_dir: Path = typer.Argument(..., help="Run folder from `micro embed` (train split fits, test split scores)."),
    report: Path | None = typer.Option(None, "--report", help="Write results.csv/.parquet/.md and figures here."),
    protocol: str = typer.Option(
        "seen",
        help="seen (the paper's tables: every group seen in Stage 1) | "
        "leave-group-out (each group in turn is a new user: Stage 1 refitted without it).",
    ),
    budget: int = typer.Option(
        BUDGET, "--budget-per-group", help="Labelled train pairs per group for the MiCRo router (B)."
    ),
    seeds: int | None = typer.Option(
        None,
        help="Seeds of the HyRe draws and router budgets (mean ± std); "
        f"default {SEEDS} (seen) / {LGO_SEEDS} (leave-group-out).",
    ),
    hyre_n: int = typer.Option(HYRE_N, help="Labelled test pairs per group that (MiCRo-)HyRe adapts on."),
    budgets: str | None = typer.Option(
        None,
        help="Budgets B: of the accuracy-vs-budget figure (seen, default "
        f"{','.join(map(str, BUDGETS))}) / of the new users' adaptation (default "
        f"{','.join(map(str, LGO_BUDGETS))}).",
    ),
    tau: float = typer.Option(TAU, help=f"Router soft-label temperature (paper: {TAU_PAPER:g})."),
    epochs: int = typer.Option(ROUTER_EPOCHS, help="Router epochs."),
    lr: float = typer.Option(ROUTER_LR, help="Router learning rate (Adam)."),
    adapt: str = typer.Option("auto", help="leave-group-out: the 'adapted' row's --adapt (auto | mixture | residual)."),
    jobs: int | None = typer.Option(None, help="leave-group-out: folds in parallel (default: CPU cores)."),
) -> None:
    """Paper Table 2/3 (seen groups), or new users by leave-one-group-out (--protocol leave-group-out)."""
    _call("pipeline.evaluate.command:eval_command", locals())


@app.command()
def sweep(
    run_dir: Path = typer.Argument(
        ..., help="Run folder from `micro embed` (features are loaded once, never re-embedded)."
    ),
    grid: list[str] = typer.Option(
        ...,
        "--grid",
        help="Search space, e.g. 'k=1,2,5,10; alpha=0,0.5; l2=1e-4,1e-3'; "
        "with --samples also ranges: alpha=0..1, tau=log:1e-4..1e-2, k=int:1..16.",
    ),
    seeds: int = typer.Option(SWEEP_SEEDS, help="Seeds per configuration (fit seed, validation draw, router draw)."),
    stage: str = typer.Option("fit", help="fit (Stage 1) | route / all (Stage 1 + one router per trial)."),
    backend: str = typer.Option("local", help="local (process pool) | ray."),
    jobs: int | None = typer.Option(None, help="Trials in parallel (default: CPU cores)."),
    samples: int | None = typer.Option(None, help="Random search: draw N configurations from the space."),
    sample_seed: int = typer.Option(0, help="Seed of the random-search draws."),
    holdout: float = typer.Option(
        HOLDOUT, help="Fraction of the train prompts held out for val_* metrics / K selection."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Results Parquet (default RUN_DIR/sweep/results.parquet)."
    ),
    address: str | None = typer.Option(None, help="Ray cluster address (default $RAY_ADDRESS, else a local Ray)."),
    rank_by: str | None = typer.Option(
        None,
        help="Leaderboard column (default test_acc_macro; routed_acc_macro "
        "with routing); e.g. test_loglik, val_loglik.",
    ),
    top: int = typer.Option(10, help="Leaderboard rows."),
    retry_errors: bool = typer.Option(False, help="Rerun trials that recorded an error."),
) -> None:
    """Grid / random hyperparameter search of fit (and route) on cached features; resumable Parquet results."""
    _call("pipeline.sweep.command:sweep_command", locals(), console=_console())


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Folder for every stage's output."),
    k: int = typer.Option(N_COMPONENTS, "--k", help="Number of reward heads."),
    seeds: int = typer.Option(DEMO_SEEDS, help="Router / HyRe seeds."),
    cache_dir: str | None = typer.Option(None, help="Embedding cache root, a folder or s3://bucket/prefix."),
) -> None:
    """The whole pipeline on the bundled DSP sample (CPU, bundled model): prepare → embed → fit → route → eval."""
    _call("pipeline.demo:demo_command", locals(), console=_console())


app.command()(serve)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP)) -> None:
    """Personalised reward modelling (MiCRo): embed once, fit mixture heads, route per user."""


def main() -> None:
    """Entry point: the command inside the one error boundary (:mod:`pipeline.boundary`)."""
    from pipeline.boundary import run

    run(app, sys.argv[1:])


if __name__ == "__main__":
    main()
