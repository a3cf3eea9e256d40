"""``micro eval``: the paper's Table 2/3 rows on a run's test split, per group and macro-averaged.

Rows (fitted on the TRAIN split of the run; scored on its TEST split):

==================  ===========================================================================================
``single``          one Bradley-Terry head (``MixtureBT(n_components=1)``).
``static``          Static Mixture: K heads, one global mixture (``MixtureBT(gate="static")``, K of the bundle).
``shared-base-best`` SharedBase (HyRe architecture, K heads with frozen random priors); per group the best head,
                    picked on the test labels (as the paper does: an optimistic reference).
``stage1-best-head`` the bundle's own heads; per group the best single head picked on the test labels.
``hyre``            HyRe over the bundle's heads: ``hyre_n`` labelled test pairs per group reweight the heads
                    (uniform prior), scored on the group's remaining pairs; mean ± std over seeds.
``micro-hyre``      the same with the Stage-1 gate's mean weights on the adaptation pairs as the prior.
``micro``           the MiCRo router (Alg. 1) trained on B labelled pairs per group drawn from the train split,
                    reading context+prompt features; mean ± std over seeds (:func:`pipeline.route.route.route_seeds`).
``oracle``          one BT head per group fitted with the group labels (train), scored with the test group labels:
                    the upper bound of linear heads on these features.
==================  ===========================================================================================

Decision rule (every row): a pair is counted correct when the model's probability of the observed outcome,
``P(a_w ≻ a_l) = Σ_k f_k σ(w_k·Δ)`` with Δ = φ(x, a_w) − φ(x, a_l), is > 0.5 (a tie counts as wrong); a
"best head" row uses its one head, ``σ(w_k·Δ)``. This is the probability-mixture rule of the model the heads
were trained as. NOTE: the paper's released evaluation code differs (it scores the mixed reward
``Σ_k f_k w_k·φ`` of each response and compares the two rewards, i.e. the sign of ``Σ_k f_k w_k·Δ``), which
can disagree with this rule when heads disagree with different confidence.

Metrics per (method, group): ``accuracy``; ``accuracy_std`` (std over seeds, population std, for the seeded rows
hyre / micro-hyre / micro; empty otherwise); ``nll`` = −mean log P(chosen ≻ rejected) (lower is better);
``ece`` (heads.metrics.expected_calibration_error, symmetrised 10-bin ECE); ``n`` the number of pairs scored
(HyRe rows exclude the ``hyre_n`` adaptation pairs). Seeded rows average nll / ece over seeds. ``macro`` is
the mean over groups of the per-group accuracy (and nll / ece); its std is the std over seeds of the per-seed
macro accuracy.

With ``report=DIR``: ``DIR/results.csv`` (long form, exact columns ``method, group, accuracy, accuracy_std,
nll, ece, n``), ``DIR/results.parquet`` (same table), ``DIR/results.md`` and three PNG figures (see
:mod:`pipeline.evaluate.plots`); the budget curve trains ``len(seeds)`` routers for every budget in ``budgets``.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy.special import expit

from heads.defaults import BUDGET, BUDGETS, HYRE_N, ROUTER_EPOCHS, ROUTER_LR, SEEDS, TAU
from pipeline.core.model import Model
from pipeline.core.run import Run, per_group_accuracy
from pipeline.errors import MicroError
from pipeline.evaluate.results import (
    METHODS,
    SEEDED,
    EvalResult,
    fitted_l2,
    method_rows,
    metrics,
    parse_budgets,
    write_tables,
)

#: fitting settings of the baselines (kept small so that ``micro eval`` on ~10k pairs takes well under a minute)
SINGLE_MAX_ITER = 200
STATIC_N_INIT, STATIC_MAX_ITER = 1, 100
#: SharedBase: its objective averages the K heads' losses, so l2/K gives every head the bundle's per-head L2; a
#: prior scale of 0.3 keeps the random priors (logit std ~0.3) from swamping the data on sentence-embedding
#: deltas (scale 1.0 left every head near chance on DSP/MiniLM).
SHARED_PRIOR_SCALE, SHARED_MAX_ITER = 0.3, 300


def _by_group(p: np.ndarray, groups: np.ndarray, names: list) -> dict:
    return {g: p[groups == g] for g in names if (groups == g).any()}


def _best_head(z: np.ndarray, groups: np.ndarray, names: list) -> tuple[dict, dict, np.ndarray]:
    """Per group the head with the best test accuracy: ({group: σ(z_k*)}, {group: k*}, (K, G) accuracies)."""
    acc = per_group_accuracy(z, groups, names, threshold=0.0)
    probs, pick = {}, {}
    for j, g in enumerate(names):
        m = groups == g
        if m.any():
            k = int(np.argmax(acc[:, j]))
            pick[g], probs[g] = k, expit(z[m, k])
    return probs, pick, acc


def _hyre(z, groups, n, seeds, prior_fn, label, notes) -> list[dict]:
    """Per seed {group: probabilities of the pairs scored} of (MiCRo-)HyRe (:func:`heads.hyre.hyre_eval`)."""
    from heads.hyre import hyre_eval

    res = hyre_eval(z, groups, n_per_group=n, seeds=seeds, prior_fn=prior_fn)
    if res["skipped"]:
        notes.append(
            f"{label}: groups with <= {n} test pairs have nothing left to score after adaptation, "
            f"left out: " + ", ".join(f"{g} ({c})" for g, c in sorted(res["skipped"].items()))
        )
    return [{g: v["probs"][i] for g, v in res["per_group"].items()} for i in range(len(seeds))]


def evaluate(
    bundle: str | Path,
    run_dir: str | Path,
    *,
    report: str | Path | None = None,
    budget: int = BUDGET,
    seeds: Sequence[int] = tuple(range(SEEDS)),
    hyre_n: int = HYRE_N,
    budgets: Sequence[int] | str = BUDGETS,
    tau: float = TAU,
    epochs: int = ROUTER_EPOCHS,
    lr: float = ROUTER_LR,
    log: Callable[[str], None] = print,
) -> EvalResult:
    """Evaluate every method of the module docstring on the test split of ``run_dir``; see the module docstring.
    A step still running after :data:`HEARTBEAT` seconds says so every :data:`HEARTBEAT` seconds."""
    from pipeline.core.parallel import heartbeat

    options = dict(budget=budget, seeds=seeds, hyre_n=hyre_n, budgets=budgets, tau=tau, epochs=epochs, lr=lr)
    with heartbeat(log, HEARTBEAT) as begin:
        return _evaluate(bundle, run_dir, report=report, log=log, begin=begin, **options)


HEARTBEAT = 5.0  # seconds between the lines of a long eval step


def _evaluate(bundle, run_dir, *, report, budget, seeds, hyre_n, budgets, tau, epochs, lr, log, begin) -> EvalResult:
    from heads.baselines import OracleBT, SharedBase
    from heads.hyre import gate_prior_fn
    from heads.mixture import MixtureBT
    from heads.selection import prompt_groups
    from pipeline.core.run import read_run
    from pipeline.route.route import route_seeds

    t0 = time.perf_counter()
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise MicroError("--seeds must be >= 1")
    if int(budget) < 1:
        raise MicroError(f"--budget-per-group must be >= 1, got {budget}")
    if int(hyre_n) < 0:
        raise MicroError(f"--hyre-n must be >= 0, got {hyre_n}")
    budgets = parse_budgets(budgets)
    bundle_model = Model.load(bundle)
    model, meta = bundle_model.estimator, bundle_model.meta
    bundle_model.check_run(read_run(run_dir), str(run_dir))
    run = Run.load(run_dir)
    train, test = run.part("train"), run.part("test")
    if test.n == 0:
        raise MicroError(f"{run_dir}: the test split is empty (no pairs with split == 'test') — nothing to score")
    if train.n == 0:
        raise MicroError(
            f"{run_dir}: the train split is empty (no pairs with split == 'train') — the baselines "
            "and the router need training pairs"
        )
    K = bundle_model.n_heads
    params = meta.get("params", {})
    l2, alpha = fitted_l2(meta), float(params.get("alpha", 0.0))
    g_train, train_names = train.groups, train.present_groups()
    g_test, names = test.groups, test.present_groups()
    counts = [int((g_test == g).sum()) for g in names]
    notes: list[str] = []
    if names == ["all"]:
        notes.append("the run has no groups: every pair is scored as one group 'all'")
    if meta.get("routed_from"):
        notes.append(
            f"the bundle is a routed bundle (from {meta['routed_from']}): its gate stands in for the "
            "Stage-1 gate (micro-hyre prior, and micro re-routes starting from it)"
        )
    if meta.get("baseline"):
        notes.append(f"the bundle is the '{meta['baseline']}' baseline (K={K}): hyre / micro rows mix its heads")
    stage1_x = bundle_model.gate_features(test)
    if stage1_x is not None and stage1_x.shape[1] != model.n_prompt_features_in_:
        raise MicroError(
            f"{bundle}: the gate reads {model.n_prompt_features_in_}-dim features but {run_dir} has "
            f"{stage1_x.shape[1]}-dim {meta.get('gate_input')} features"
        )
    if test.delta.shape[1] != model.n_features_in_:
        raise MicroError(
            f"{bundle}: the heads read {model.n_features_in_}-dim features but {run_dir} has "
            f"{test.delta.shape[1]}-dim response features"
        )
    per_seed: dict[str, list[dict]] = {}
    timings: dict[str, float] = {}

    def tick(name: str, t: float) -> None:
        timings[name] = time.perf_counter() - t
        log(f"  {name}: {timings[name]:.1f} s")
        begin(None)

    log(f"eval: {train.n} train / {test.n} test pairs, {len(names)} group(s), K={K}, seeds {list(seeds)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence notes of the capped baseline fits
        t = begin("single")
        single = MixtureBT(n_components=1, gate="static", max_iter=SINGLE_MAX_ITER, random_state=0)
        single.fit(train.delta, groups=prompt_groups(train.prompt, train.n))
        per_seed["single"] = [_by_group(single.predict_proba(test.delta), g_test, names)]
        tick("single", t)
        t = begin("static")
        if K <= train.n:
            static = MixtureBT(
                n_components=K,
                gate="static",
                alpha=alpha,
                n_init=STATIC_N_INIT,
                max_iter=STATIC_MAX_ITER,
                random_state=0,
            )
            static.fit(train.delta, groups=prompt_groups(train.prompt, train.n))
            per_seed["static"] = [_by_group(static.predict_proba(test.delta), g_test, names)]
        else:
            per_seed["static"] = [{}]
            notes.append(f"static: K={K} is larger than the {train.n} train pairs, not fitted")
        tick("static", t)
        t = begin("shared-base")
        sb = SharedBase(
            n_components=min(K, train.n),
            prior_scale=SHARED_PRIOR_SCALE,
            l2=l2 / K,
            max_iter=SHARED_MAX_ITER,
            random_state=0,
        ).fit(train.delta)
        probs, pick_sb, _ = _best_head(test.delta @ sb.coef_.T, g_test, names)
        per_seed["shared-base-best"] = [probs]
        tick("shared-base", t)

    z_te = bundle_model.head_logits(test)
    probs, pick_s1, hg_acc = _best_head(z_te, g_test, names)
    per_seed["stage1-best-head"] = [probs]

    t = begin("hyre + micro-hyre")
    per_seed["hyre"] = _hyre(z_te, g_test, int(hyre_n), seeds, None, "hyre", notes)
    per_seed["micro-hyre"] = _hyre(
        z_te, g_test, int(hyre_n), seeds, gate_prior_fn(bundle_model.gate_weights(test)), "micro-hyre", []
    )
    tick("hyre + micro-hyre", t)

    t = begin("micro (routers)")
    res = route_seeds(bundle_model, train, test, tau=tau, epochs=epochs, budget=int(budget), seeds=seeds, lr=lr)
    notes += [f"micro: {n}" for n in res.notes]
    ctx = None if model.gate_kind_ == "static" else test.context
    micro_probs, weights = [], []
    for r in res.routers:
        micro_probs.append(_by_group(r.predict_proba(z_te, ctx), g_test, names))
        weights.append(r.gate_weights(ctx, n_rows=test.n))
    W = np.mean(weights, axis=0)
    router_w = np.stack([W[g_test == g].mean(axis=0) for g in names])
    per_seed["micro"] = micro_probs
    tick(f"micro (B={budget})", t)

    t = begin("oracle")
    oracle = OracleBT(l2=l2).fit(train.delta, g_train.astype(str))
    known = np.isin(g_test, np.asarray(train_names, dtype=object))
    p_or = np.full(test.n, np.nan)
    if known.any():
        p_or[known] = oracle.predict_proba(test.delta[known], g_test[known].astype(str))
    per_seed["oracle"] = [{g: p_or[g_test == g] for g in names if (g_test == g).any() and g in train_names}]
    if not known.all():
        notes.append(
            "oracle: test groups with no train pairs are left out: " + ", ".join(sorted(set(g_test[~known].tolist())))
        )
    tick("oracle", t)

    rows = []
    for m in METHODS:
        rows += method_rows(m, per_seed[m], names, seeded=m in SEEDED)
    macro_before = float(np.nanmean(res.before))
    T = float(getattr(model, "temperature_", 1.0))
    if T != 1.0:  # the Stage-1 mixture's calibration, before and after its temperature
        raw = metrics(expit(model.log_odds(test.delta, stage1_x)))
        cal = metrics(model.predict_proba(test.delta, stage1_x))
        notes.append(
            f"Stage-1 mixture on the test pairs, temperature {T:.3f} (fitted on held-out train prompts): "
            f"ECE {raw[2]:.3f} -> {cal[2]:.3f}, NLL {raw[1]:.3f} -> {cal[1]:.3f}"
        )
    notes.insert(
        0,
        f"Stage-1 gate without routing (for reference): macro accuracy {macro_before:.3f}; "
        + ", ".join(f"{g} {a:.3f}" for g, a in zip(names, res.before)),
    )
    result = EvalResult(
        rows=rows,
        groups=names,
        counts=counts,
        head_group_accuracy=hg_acc,
        best_heads={"shared-base-best": pick_sb, "stage1-best-head": pick_s1},
        stage1_accuracy=res.before,
        router_weights=router_w,
        notes=notes,
    )
    result.budget_curve[int(budget)] = res.after
    if report is not None:
        from pipeline.evaluate import plots

        report = Path(report)
        t = begin("budget sweep")
        for b in budgets:
            if b not in result.budget_curve:
                result.budget_curve[b] = route_seeds(
                    bundle_model, train, test, tau=tau, epochs=epochs, budget=b, seeds=seeds, lr=lr
                ).after
        tick(f"budget sweep {list(budgets)}", t)
        curve = np.stack([result.budget_curve[b] for b in budgets])  # (nB, S, G)
        t = begin("plots")
        report.mkdir(parents=True, exist_ok=True)
        result.plots = [
            plots.plot_head_group_accuracy(hg_acc, names, report / "head_group_accuracy.png", counts=counts),
            plots.plot_router_weights(
                router_w,
                names,
                report / "router_weights.png",
                title=f"Mean routed mixture weight per group (test prompts, B={budget}, {len(seeds)} seeds)",
            ),
            plots.plot_budget_curve(
                budgets,
                curve.mean(axis=1),
                curve.std(axis=1),
                names,
                report / "accuracy_vs_budget.png",
                reference=res.before,
            ),
        ]
        tick("plots", t)
    result.seconds = time.perf_counter() - t0
    if report is not None:
        result.files = write_tables(result.frame(), result.markdown(), result.notes, Path(report))
    return result
