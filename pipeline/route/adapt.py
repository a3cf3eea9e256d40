"""``micro route --adapt auto|residual`` and adapted user profiles (Stage 2 beyond the span of the heads).

Every user (a group of the user data, or one ``--user``) gets a :class:`heads.user.UserAdapter` fitted on B of
their train pairs: routing, or the heads plus a per-user residual, chosen by cross-validation on those pairs. The
result is saved as a profile ``OUT/<user>.json`` + ``OUT/<user>.safetensors`` (the gate it mixes with, the residual
vector v) that ``micro score MODEL --user OUT/<user>.json`` applies:

    reward(x, a) = sum_k (g f_k(x, c) + omega_k) r_k(x, a) + v . phi(x, a)

with f the profile's own gate on the user's context + prompt (the router's for ``rule = mixture``, the Stage-1
gate's for ``rule = logit``), c the user's context saved in the profile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from heads.defaults import BUDGET, HEDGE_TAU, ROUTER_EPOCHS, ROUTER_LR, SEEDS, TAU
from pipeline.core.run import Run
from pipeline.errors import MicroError
from pipeline.route.profiles import as_model, safe_name
from pipeline.route.users import UserModel, save_user

ROUTER = {"tau": TAU, "epochs": ROUTER_EPOCHS, "lr": ROUTER_LR}  # the router of `micro route` (heads.defaults)


def prompt_ids(run: Run) -> np.ndarray:
    """(N,) integer id of each pair's prompt, numbered in the order of the prompts' text (pairs of one prompt share a
    cross-validation fold)."""
    texts = [str(p) for p in run.pairs.column("prompt").to_pylist()]
    return np.unique(np.array(texts, dtype=object), return_inverse=True)[1]


def population_basis(meta: dict, fallback: np.ndarray | None, dim: int = 16):
    """PCA basis (r, d) of the population's pair differences: the bundle's training run when it is still there,
    else ``fallback`` (the user data's train pairs); (basis, where it came from)."""
    from heads.adapt import pca_basis

    run = meta.get("train_run")
    if run and (Path(run) / "run.json").exists():
        try:
            pop = Run.load(run)
            if pop.fingerprint_id == meta.get("fingerprint_id"):
                return pca_basis(pop.part("train").delta, dim), f"training run {run}"
        except MicroError:
            pass
    if fallback is None or len(fallback) < 2:
        return None, "none"
    return pca_basis(fallback, dim), "the user data's train pairs"


def user_context(run: Run) -> str | None:
    """The most common context of the pairs (None when they have none)."""
    ctx = [c for c in run.pairs.column("context").to_pylist() if c]
    return max(set(ctx), key=ctx.count) if ctx else None


@dataclass
class AdaptResult:
    """Per user: held-out accuracy of the Stage-1 gate, routing and the adapted model (mean ± std over seeds)."""

    users: list
    counts: list
    before: np.ndarray  # (U,)
    routing: np.ndarray  # (S, U)
    adapted: np.ndarray  # (S, U)
    choices: list  # per user: fraction of seeds choosing the residual
    paths: list
    budget: int
    seeds: list
    notes: list = field(default_factory=list)


def adapt_users(
    bundle,
    user_data,
    out,
    *,
    adapt: str = "auto",
    budget: int = BUDGET,
    seeds=tuple(range(SEEDS)),
    user: str | None = None,
    router: dict | None = None,
    log=print,
    run: Run | None = None,
) -> AdaptResult:
    """Fit a UserAdapter per user (``user`` only, or every group) on ``budget`` of their train pairs per seed,
    score on their test pairs, and save the seed-0 model of each user as a profile in ``out``. ``router``:
    Router keyword arguments (default :data:`ROUTER`). ``bundle``: a bundle folder or a loaded :class:`Model`;
    ``run``: the user data (``user``'s pairs if given) already embedded with it (default: embedded into
    ``out/work``)."""
    from pipeline.route.methods import get

    method = get(adapt)
    bundle_model = as_model(bundle)
    model, meta = bundle_model.estimator, bundle_model.meta
    out = Path(out)
    if run is None:
        run = bundle_model.embed_user_data(user_data, out / "work", log=log, user=user)
    groups, names = run.groups, run.group_names
    pca, source = population_basis(meta, run.delta[run.mask("train")])
    notes = [f"residual basis: population principal directions from {source}"]
    static = model.gate_kind_ == "static"
    pids = prompt_ids(run)
    counts, paths, choices, before, routing, adapted = [], [], [], [], [], []
    for name in names:
        mine = run.take(groups == name)
        tr, te = np.flatnonzero(mine.mask("train")), np.flatnonzero(mine.mask("test"))
        if tr.size < 2:
            raise MicroError(f"{user_data}: user '{name}' has {tr.size} train pairs; adapting needs at least 2")
        if te.size == 0:
            raise MicroError(f"{user_data}: user '{name}' has no held-out pairs (split == 'test') to score on")
        if tr.size < budget:
            notes.append(f"{name}: {tr.size} train pairs, fewer than the budget {budget}: used all")
        gx = None if static else bundle_model.gate_features(mine)
        rx = None if static else mine.context
        take = lambda X, rows: None if X is None else X[rows]  # noqa: E731
        D, W = mine.delta, model.coef_
        before.append(float(np.mean(model.predict_proba(D[te], take(gx, te)) > 0.5)))
        acc_r, acc_a, chose = [], [], []
        for s in seeds:
            idx = np.sort(np.random.default_rng([int(s), 7]).choice(tr, min(budget, tr.size), replace=False))
            fitted = method.fit(
                D[idx],
                W,
                model.gate_params_,
                take(gx, idx),
                take(rx, idx),
                pca=pca,
                fold_groups=pids[groups == name][idx],
                router=router or ROUTER,
                seed=int(s),
            )
            acc_r.append(float(np.mean(fitted.router.predict_proba(D[te] @ W.T, take(rx, te)) > 0.5)))
            acc_a.append(float(np.mean(fitted.predict_proba(D[te], W, take(gx, te), take(rx, te)) > 0.5)))
            chose.append(fitted.choice == "residual")
            if s == seeds[0]:
                um = fitted.user_model(meta.get("gate_input", "prompt"), static, context=user_context(mine), user=name)
                path = save_user(
                    out / f"{safe_name(name)}.json",
                    um,
                    meta,
                    bundle_model.path,
                    {
                        "source": "route --adapt",
                        "adapt": adapt,
                        "choice": fitted.choice,
                        "budget": int(idx.size),
                        "seed": int(s),
                        "cv_loglik": {k: float(v.mean()) for k, v in fitted.adapter.cv_.items()},
                    },
                )
        counts.append(int(te.size))
        paths.append(path)
        choices.append(float(np.mean(chose)))
        routing.append(acc_r)
        adapted.append(acc_a)
    return AdaptResult(
        users=list(names),
        counts=counts,
        before=np.array(before),
        routing=np.array(routing).T,
        adapted=np.array(adapted).T,
        choices=choices,
        paths=paths,
        budget=budget,
        seeds=list(seeds),
        notes=notes,
    )


@dataclass
class OnlineResult:
    """The saved online profile and its learning curve (held-out accuracy of the served model per pair seen)."""

    user: str
    path: Path
    served: str
    curve: np.ndarray  # (T+1,) accuracy before any pair, after 1, ..., after T pairs
    prior_curve: np.ndarray  # (T+1,) the same for the prior alone (Hedge)
    losses: dict  # expert -> cumulative prequential log-loss
    n_stream: int
    n_heldout: int


def build_online(
    bundle, user_data, user: str, out_dir, *, adapt: str = "auto", tau: float = HEDGE_TAU, log=print
) -> OnlineResult:
    """Online profile of ``user`` (:class:`heads.online.OnlineProfile`) from their train pairs in stream order,
    scored on their test pairs after every pair; saved as an adapted profile."""
    from heads.adapt import block_features, block_scales
    from heads.online import OnlineProfile

    if adapt == "mixture":
        raise MicroError("--online --adapt mixture is the Hedge profile: use `micro route --online` without --adapt")
    bundle_model = as_model(bundle)
    model, meta = bundle_model.estimator, bundle_model.meta
    out_dir = Path(out_dir)
    run = bundle_model.embed_user_data(user_data, out_dir / "work" / safe_name(user), log=log, user=user)
    stream, held = run.part("train"), run.part("test")
    if stream.n == 0:
        raise MicroError(f"{user_data}: user '{user}' has no pairs to learn from (split == 'train')")
    gx = bundle_model.gate_features(stream)
    prior = model.gate_weights(gx).mean(axis=0) if gx is not None else None
    pca, _ = population_basis(meta, None)
    pop = stream.delta
    scales = block_scales(block_features(pop, np.zeros(len(pop)), None, pca))
    prof = OnlineProfile(
        prior, scales, pca, tau=tau, force="residual" if adapt == "residual" else None, n_heads=model.coef_.shape[0]
    )
    W = model.coef_
    z_s, z_h = stream.delta @ W.T, held.delta @ W.T
    curve, prior_curve = [], []
    for t in range(stream.n + 1):
        if held.n:
            curve.append(float(np.mean(prof.predict_proba(held.delta, z_h) > 0.5)))
            prior_curve.append(float(np.mean(prof.predict_proba(held.delta, z_h, "prior") > 0.5)))
        if t < stream.n:
            prof.update(stream.delta[t : t + 1], z_s[t : t + 1])
    served = prof.served_model()
    um = UserModel(
        "adapted",
        np.asarray(served["head_weights"], dtype=np.float64),
        v=served["v"],
        context=user_context(stream),
        rule=served["rule"],
        user=user,
    )
    path = save_user(
        out_dir / f"{safe_name(user)}.json",
        um,
        meta,
        bundle_model.path,
        {
            "source": "route --online",
            "adapt": adapt,
            "online": prof.summary(),
            "profile": prof.hedge.to_dict(),  # the prior expert (Hedge over heads)
            "learning_curve": curve,
            "prior_learning_curve": prior_curve,
            "n_heldout": held.n,
        },
    )
    return OnlineResult(
        user=user,
        path=path,
        served=prof.served_,
        curve=np.array(curve),
        prior_curve=np.array(prior_curve),
        losses=prof.summary()["prequential_logloss"],
        n_stream=stream.n,
        n_heldout=held.n,
    )
