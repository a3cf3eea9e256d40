"""Stage 2: adapt the mixture weights to users' contexts (paper Alg. 1) and per-user online profiles.

User data is any file ``micro data prepare`` reads (or a prepared pair table). Texts missing from the cache are
embedded with the embedder recorded in the bundle, so users never rerun Stage 0 by hand.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Router defaults (heads.defaults, README "Defaults"): the paper's tau = 1e-3 (near-hard labels: the single best head
# per pair) makes a router on frozen linear heads chase per-pair winners; tau = 1 uses the heads' posterior.
from heads.defaults import BUDGET, ROUTER_EPOCHS as EPOCHS, ROUTER_LR as LR, TAU
from pipeline.core.bundle import check_fingerprint, load_bundle, save_bundle
from pipeline.errors import MicroError
from pipeline.core.run import Features, load_features
from pipeline.data.schema import write_pairs



@dataclass
class RouteResult:
    """Held-out accuracy per group before (Stage-1 gate) and after routing (mean ± std over seeds)."""

    groups: list
    counts: list
    before: np.ndarray              # (G,) accuracy with the Stage-1 gate
    after: np.ndarray               # (S, G) accuracy per seed
    seeds: list
    budget: int
    short: dict = field(default_factory=dict)   # group -> pairs available when fewer than the budget
    routers: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def after_mean(self) -> np.ndarray:
        return self.after.mean(axis=0)

    @property
    def after_std(self) -> np.ndarray:
        return self.after.std(axis=0)


def head_logits(model, feats: Features) -> np.ndarray:
    """(N, K) per-head logits z_ik = w_k·Δ_i of the frozen heads."""
    return feats.delta @ model.coef_.T


def stage1_gate_input(meta: dict, feats: Features) -> np.ndarray | None:
    """The features the Stage-1 gate was trained on (prompt or context+prompt), None for a static gate."""
    kind = meta.get("gate_input", "prompt")
    return None if kind == "none" else (feats.context if kind == "context" else feats.prompt)


def group_names(groups: np.ndarray) -> tuple[np.ndarray, list]:
    """Groups with None mapped to 'all', and the sorted names."""
    g = np.array(["all" if x is None else x for x in groups], dtype=object)
    return g, sorted(set(g.tolist()))


def per_group_accuracy(p: np.ndarray, groups: np.ndarray, names: list) -> np.ndarray:
    """(G,) fraction of pairs with P(chosen ≻ rejected) > 0.5 in each group."""
    return np.array([float(np.mean(p[groups == g] > 0.5)) if (groups == g).any() else np.nan for g in names])


def route_seeds(model, meta: dict, train: Features, test: Features, *, tau: float = TAU, epochs: int = EPOCHS,
                budget: int = BUDGET, seeds=(0, 1, 2, 3, 4), lr: float = LR, batch_size: int = 32) -> RouteResult:
    """Train one router per seed on ``budget`` train pairs per group; score every router on ``test``."""
    from heads.router import Router, draw_budget

    if train.n == 0:
        raise MicroError("no user pairs to route on (the train split is empty)")
    g_train, _ = group_names(train.group)
    g_test, names = group_names(test.group)
    notes = []
    if not train.has_context.any():
        notes.append("the user data has no context column: routing on the prompt alone")
    unseen = sorted(set(names) - set(g_train.tolist()))
    if unseen:
        notes.append(f"groups with no routing pairs (scored with the router trained on the others): {unseen}")
    z_tr, z_te = head_logits(model, train), head_logits(model, test)
    static = model.gate_kind_ == "static"
    before = per_group_accuracy(model.predict_proba(test.delta, stage1_gate_input(meta, test)), g_test, names)
    after, routers, short = [], [], {}
    for s in seeds:
        idx, short = draw_budget(g_train, budget, np.random.default_rng(s))
        r = Router(tau=tau, epochs=epochs, batch_size=batch_size, lr=lr, random_state=s)
        r.fit(z_tr[idx], None if static else train.context[idx], model.gate_params_, model.gate_kind_)
        p = r.predict_proba(z_te, None if static else test.context)
        after.append(per_group_accuracy(p, g_test, names))
        routers.append(r)
    if short:
        notes.append("budget larger than the available pairs, used all: "
                     + ", ".join(f"{g} ({n} pairs)" for g, n in sorted(short.items())))
    counts = [int((g_test == g).sum()) for g in names]
    return RouteResult(groups=names, counts=counts, before=before, after=np.array(after), seeds=list(seeds),
                       budget=budget, short=short, routers=routers, notes=notes)


def backend_from_meta(meta: dict):
    """Rebuild the bundle's embedder; error if it no longer gives the recorded fingerprint."""
    from pipeline.embed.backends import get_backend
    from pipeline.embed.backends.base import fingerprint_id

    emb = meta.get("embedder") or {}
    try:
        fp = meta.get("fingerprint") or {}
        extra = {k: fp[k] for k in ("truncation", "dtype") if fp.get(k)}
        backend = get_backend(emb["backend"], emb.get("model_path") or None, max_length=emb.get("max_length"), **extra)
    except MicroError as exc:
        raise MicroError(f"the bundle's embedder cannot be loaded: {exc}") from None
    fid = fingerprint_id(backend.fingerprint())
    if fid != meta["fingerprint_id"]:
        raise MicroError(f"the bundle's embedder {emb.get('backend')} at {emb.get('model_path')} now has fingerprint "
                         f"{fid}, not the recorded {meta['fingerprint_id']} (the model files changed); refit")
    return backend


def embed_user_data(meta: dict, user_data: str | Path, workdir: Path, test_size: float = 0.2,
                    log=print, user: str | None = None) -> Features:
    """Pair table of ``user_data`` (only group ``user``'s pairs if given) embedded with the bundle's embedder
    (cache reused), as Features."""
    import pyarrow as pa

    from pipeline.embed.embed import embed_pairs
    from pipeline.data.prepare import load_user_pairs

    table = load_user_pairs(user_data, test_size=test_size)
    if table.num_rows == 0:
        raise MicroError(f"{user_data}: no preference pairs in the user data")
    if user is not None:  # check the user before embedding anything, and embed only their pairs
        groups, names = group_names(np.array(table.column("group").to_pylist(), dtype=object))
        if user not in names:
            raise MicroError(f"{user_data}: user '{user}' not found in the 'group' column; users present: "
                             f"{', '.join(map(str, names[:20]))}")
        table = table.filter(pa.array(groups == user))
    workdir.mkdir(parents=True, exist_ok=True)
    write_pairs(table, workdir / "user_pairs.parquet")
    backend = backend_from_meta(meta)
    cache_root = Path(meta["embedder"]["cache_dir"]).parent
    try:
        s = embed_pairs(workdir / "user_pairs.parquet", workdir / "user_run", backend, cache_dir=cache_root,
                        dtype=meta["embedder"]["cache_dtype"])
    finally:
        backend.close()
    log(f"user data: {s.pairs} pairs, {s.unique_texts} unique texts, {s.cache_hits} cached, {s.embedded} embedded")
    feats = load_features(workdir / "user_run")
    check_fingerprint(meta, feats.run, str(user_data))
    return feats


def save_routed_bundle(model, meta: dict, router, out: Path, params: dict) -> Path:
    """A bundle whose gate is the trained router (it reads context+prompt features)."""
    routed = copy.copy(model)
    routed.gate_params_ = router.gate_params_
    routed.gate = "static" if router.gate_kind_ == "static" else "context"
    new_meta = {k: v for k, v in meta.items() if k not in ("format", "version", "class", "params", "fitted")}
    new_meta.update(gate_input="none" if router.gate_kind_ == "static" else "context",
                    routed_from=str(params.pop("bundle")), router=params)
    return save_bundle(routed, out, new_meta)


def route(bundle: str | Path, user_data: str | Path, out: str | Path, *, tau: float = TAU, epochs: int = EPOCHS,
          budget: int = BUDGET, seeds=(0, 1, 2, 3, 4), lr: float = LR, log=print) -> RouteResult:
    """``micro route``: fit routers on the user data, report held-out accuracy, save the seed-0 routed bundle."""
    model, meta = load_bundle(bundle)
    out = Path(out)
    feats = embed_user_data(meta, user_data, out / "work", log=log)
    train, test = feats.split_rows("train"), feats.split_rows("test")
    if test.n == 0:
        raise MicroError(f"{user_data}: no held-out pairs (split == 'test') to score the router on")
    res = route_seeds(model, meta, train, test, tau=tau, epochs=epochs, budget=budget, seeds=seeds, lr=lr)
    save_routed_bundle(model, meta, res.routers[0], out, {
        "bundle": str(Path(bundle).resolve()), "user_data": str(Path(user_data).resolve()), "tau": tau,
        "epochs": epochs, "budget_per_group": budget, "seed": int(seeds[0]), "lr": lr,
        "heldout_accuracy_before": dict(zip(res.groups, res.before.tolist())),
        "heldout_accuracy_after_mean": dict(zip(res.groups, res.after_mean.tolist())),
        "heldout_accuracy_after_std": dict(zip(res.groups, res.after_std.tolist()))})
    return res
