"""One fold of ``micro eval --protocol leave-group-out`` (:mod:`pipeline.evaluate.lgo`): Stage 1 refitted without
the group, then every (budget, seed) adaptation scored on the group's test pairs; or the seen-group oracle."""

from __future__ import annotations

import warnings

import numpy as np

from pipeline.core.parallel import error_text
from pipeline.core.run import Run
from pipeline.evaluate.results import metrics

PCA_DIM = 16  # population principal directions offered to the residual (heads.adapt "pca")
USER_HEAD_GRID = {"pca": (0.0, 1.0, 3.0), "iso": (0.0, 0.1, 0.3, 1.0)}


def _metrics(p: np.ndarray) -> dict:
    return dict(zip(("accuracy", "nll", "ece", "n"), metrics(p)))


def fold_job(arrays: dict, meta: dict, job: dict) -> list[dict]:
    """One fold (``job["group"]``) or the oracle (``job["group"] is None``) on the run's shared arrays
    (:meth:`pipeline.core.run.Run.shared`); never raises (``error`` rows)."""
    try:
        run = Run.from_shared(arrays, meta)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence notes of the refits
            return _oracle(run, job) if job["group"] is None else _fold(run, job)
    except Exception as exc:  # noqa: BLE001 -- reported by the parent as one line
        return [{"group": job["group"], "error": error_text(exc)}]


def _oracle(run: Run, job: dict) -> list[dict]:
    from heads.baselines import OracleBT

    group, D = run.group, run.delta
    train = run.mask("train")
    oracle = OracleBT(l2=job["oracle_l2"]).fit(D[train], group[train])
    rows = []
    for gi, name in enumerate(run.group_names):
        test = run.mask("test") & (group == gi)
        rows.append({"method": "oracle", "group": name, **_metrics(oracle.predict_proba(D[test], group[test]))})
    return rows


def _fold(run: Run, job: dict) -> list[dict]:
    from heads.adapt import ResidualBT, kfold, pca_basis
    from heads.hyre import hyre_predict_proba, hyre_weights
    from heads.laplace import moderated_proba
    from heads.mixture import MixtureBT
    from pipeline.route.methods import get

    adaptation = get(job["adapt"])

    name, params = job["group"], job["params"]
    gi = run.group_names.index(name)
    train, group, D = run.mask("train"), run.group, run.delta
    pop = np.flatnonzero(train & (group != gi))
    user = np.flatnonzero(train & (group == gi))
    test = np.flatnonzero(run.mask("test") & (group == gi))
    gx = run.gate_features(job["gate_input"])
    rx = None if job["gate_input"] == "none" else run.context
    take = lambda X, rows: None if X is None else np.ascontiguousarray(X[rows])  # noqa: E731
    pid = run.prompt_id[pop]  # the held-out slice of the Stage-1 selection never splits a prompt
    model = MixtureBT(**params).fit(
        take(D, pop), take(gx, pop) if params.get("n_components", 10) > 1 else None, groups=pid
    )
    single = MixtureBT(**{**params, "n_components": 1, "gate": "static"}).fit(take(D, pop), groups=pid)
    Dt, gxt, rxt = take(D, test), take(gx, test), take(rx, test)
    rows = [
        {"method": "single", "group": name, **_metrics(single.predict_proba(Dt))},
        {"method": "stage1-gate", "group": name, **_metrics(model.predict_proba(Dt, gxt))},
    ]
    W, gate = model.coef_, model.gate_params_
    pca = pca_basis(take(D, pop), PCA_DIM)
    zt = Dt @ W.T
    for B in job["budgets"]:
        for seed in job["seeds"]:
            rng = np.random.default_rng([int(seed), int(B), gi])
            idx = np.sort(rng.choice(user, size=min(B, user.size), replace=False))
            Du, gxu, rxu, pid = take(D, idx), take(gx, idx), take(rx, idx), run.prompt_id[idx]
            ua = adaptation.fit(Du, W, gate, gxu, rxu, pca=pca, fold_groups=pid, router=job["router"], seed=int(seed))
            f = ua.router.gate_weights(rxt, n_rows=test.size)
            head = ResidualBT(grid=USER_HEAD_GRID, combine="average", random_state=int(seed)).fit(
                Du, {"none": np.zeros(len(idx))}, pca=pca, folds=kfold(len(idx), 5, int(seed), pid)
            )
            probs = {
                "routing": (f * moderated_proba(zt)).sum(axis=1),
                "hyre": hyre_predict_proba(zt, hyre_weights(Du @ W.T)),
                "user-head": head.predict_proba(Dt, {"none": np.zeros(test.size)}),
                "adapted": ua.predict_proba(Dt, W, gxt, rxt),
            }
            for method, p in probs.items():
                rows.append(
                    {
                        "method": method,
                        "group": name,
                        "budget": int(B),
                        "seed": int(seed),
                        "n_adapt": int(idx.size),
                        "residual": ua.choice == "residual",
                        **_metrics(p),
                    }
                )
    return rows
