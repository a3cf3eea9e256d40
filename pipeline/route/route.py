"""Stage 2 routing: adapt the mixture weights to users' contexts from a few labelled pairs (paper Alg. 1).

User data is any file ``micro data prepare`` reads (or a prepared pair table), embedded with the bundle's embedder
(:meth:`pipeline.core.model.Model.embed_user_data`). Profiles and adapted users: :mod:`pipeline.route.profiles`,
:mod:`pipeline.route.adapt`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Router defaults (heads.defaults, README "Defaults"): the paper's tau = 1e-3 (near-hard labels: the single best head
# per pair) makes a router on frozen linear heads chase per-pair winners; tau = 1 uses the heads' posterior.
from heads.defaults import BUDGET, ROUTER_BATCH, ROUTER_EPOCHS, ROUTER_LR, SEEDS, TAU
from pipeline.core.model import Model
from pipeline.core.run import Run
from pipeline.errors import MicroError


@dataclass
class RouteResult:
    """Held-out accuracy per group before (Stage-1 gate) and after routing (mean ± std over seeds)."""

    groups: list
    counts: list
    before: np.ndarray  # (G,) accuracy with the Stage-1 gate
    after: np.ndarray  # (S, G) accuracy per seed
    seeds: list
    budget: int
    short: dict = field(default_factory=dict)  # group -> pairs available when fewer than the budget
    routers: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def after_mean(self) -> np.ndarray:
        return self.after.mean(axis=0)

    @property
    def after_std(self) -> np.ndarray:
        return self.after.std(axis=0)


def route_seeds(
    model: Model,
    train: Run,
    test: Run,
    *,
    tau: float = TAU,
    epochs: int = ROUTER_EPOCHS,
    budget: int = BUDGET,
    seeds=tuple(range(SEEDS)),
    lr: float = ROUTER_LR,
    batch_size: int = ROUTER_BATCH,
) -> RouteResult:
    """Train one router per seed on ``budget`` train pairs per group; score every router on ``test``."""
    from heads.router import Router, draw_budget

    if train.n == 0:
        raise MicroError("no user pairs to route on (the train split is empty)")
    g_train = train.groups
    names = test.present_groups()
    notes = []
    if not train.has_context.any():
        notes.append("the user data has no context column: routing on the prompt alone")
    unseen = sorted(set(names) - set(g_train.tolist()))
    if unseen:
        notes.append(f"groups with no routing pairs (scored with the router trained on the others): {unseen}")
    z_tr, z_te = model.head_logits(train), model.head_logits(test)
    est, static = model.estimator, model.static
    cols = [test.group_names.index(g) for g in names]
    before = test.group_accuracy(model.predict_proba(test))[cols]
    after, routers, short = [], [], {}
    for s in seeds:
        idx, short = draw_budget(g_train, budget, np.random.default_rng(s))
        r = Router(tau=tau, epochs=epochs, batch_size=batch_size, lr=lr, random_state=s)
        r.fit(z_tr[idx], None if static else train.context[idx], est.gate_params_, est.gate_kind_)
        after.append(test.group_accuracy(r.predict_proba(z_te, None if static else test.context))[cols])
        routers.append(r)
    if short:
        notes.append(
            "budget larger than the available pairs, used all: "
            + ", ".join(f"{g} ({n} pairs)" for g, n in sorted(short.items()))
        )
    counts = [int((test.group == j).sum()) for j in cols]
    return RouteResult(
        groups=names,
        counts=counts,
        before=before,
        after=np.array(after),
        seeds=list(seeds),
        budget=budget,
        short=short,
        routers=routers,
        notes=notes,
    )


def save_routed_bundle(model: Model, router, out: Path, params: dict) -> Path:
    """A bundle whose gate is the trained router (it reads context+prompt features)."""
    routed = copy.copy(model.estimator)
    routed.gate_params_ = router.gate_params_
    routed.gate = "static" if router.gate_kind_ == "static" else "context"
    meta = {
        **model.meta,
        "gate_input": "none" if router.gate_kind_ == "static" else "context",
        "routed_from": str(params.pop("bundle")),
        "router": params,
    }
    return Model(routed, meta).save(out)


def route(
    bundle: str | Path,
    user_data: str | Path,
    out: str | Path,
    *,
    tau: float = TAU,
    epochs: int = ROUTER_EPOCHS,
    budget: int = BUDGET,
    seeds=tuple(range(SEEDS)),
    lr: float = ROUTER_LR,
    log=print,
    run: Run | None = None,
) -> RouteResult:
    """``micro route``: fit routers on the user data, report held-out accuracy, save the seed-0 routed bundle.
    ``bundle``: a bundle folder or a loaded :class:`Model`; ``run``: the user data already embedded with it (default:
    embedded into ``out/work``)."""
    model = bundle if isinstance(bundle, Model) else Model.load(bundle)
    out = Path(out)
    if run is None:
        run = model.embed_user_data(user_data, out / "work", log=log)
    train, test = run.part("train"), run.part("test")
    if test.n == 0:
        raise MicroError(f"{user_data}: no held-out pairs (split == 'test') to score the router on")
    res = route_seeds(model, train, test, tau=tau, epochs=epochs, budget=budget, seeds=seeds, lr=lr)
    save_routed_bundle(
        model,
        res.routers[0],
        out,
        {
            "bundle": str(model.path.resolve()),
            "user_data": str(Path(user_data).resolve()),
            "tau": tau,
            "epochs": epochs,
            "budget_per_group": budget,
            "seed": int(seeds[0]),
            "lr": lr,
            "heldout_accuracy_before": dict(zip(res.groups, res.before.tolist())),
            "heldout_accuracy_after_mean": dict(zip(res.groups, res.after_mean.tolist())),
            "heldout_accuracy_after_std": dict(zip(res.groups, res.after_std.tolist())),
        },
    )
    return res
