"""The steps of a MixtureBT fit: projection to the fit space, initialisation state, restarts, the L2 path.

These are pure functions of an estimator's parameters (``est``, read only) and the data; :class:`heads.mixture.
MixtureBT` calls them and stores the results. Features stay in their stored dtype (see :mod:`heads.chunked`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
from scipy.special import log_expit

from . import gate as G
from .chunked import mean_sq_norm, project
from .em import EMResult, newton_polish_single, run_em
from .initialise import MAX_KMEANS_DIM, Sketch, initialise
from .objective import Problem
from .selection import best_point, dim_candidates, fit_temperature, holdout_rows, l2_path


def seed_of(random_state) -> int:
    return int(random_state) if isinstance(random_state, (int, np.integer)) else 0


def fit_projection(D: np.ndarray, dim: int, seed: int, whiten: bool = False) -> np.ndarray:
    """Uncentred PCA (heads are bias-free; no mean is stored): top right singular vectors of the rows, (dim, d),
    by randomized SVD on at most ``max(4 dim, 4096)`` random rows (the subspace of embedding-like features is well
    estimated from a subsample; the full SVD of 23,500 x 3,072 would dominate the fit). With ``whiten`` the rows
    are scaled so that projected coordinates have unit mean square."""
    from sklearn.utils.extmath import randomized_svd
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(seed)
    m = min(D.shape[0], max(4 * dim, 4096))
    sub = D if m == D.shape[0] else D[np.sort(rng.choice(D.shape[0], m, replace=False))]
    with threadpool_limits(1):  # small QR/SVD calls: threads only add hand-off cost
        _, S, Vt = randomized_svd(np.asarray(sub, dtype=np.float32), dim, n_iter=2, random_state=seed)
    P = Vt.astype(np.float64)
    if whiten:
        P = P * (np.sqrt(m) / np.maximum(S, 1e-12))[:, None]
    return P


@dataclass
class Prepared:
    """The data in the fit space and what every restart shares."""

    D: np.ndarray  # (n, d') Delta, projected or the input itself
    X: Optional[np.ndarray]  # (n, p') gate input (None for a static gate)
    kind: str  # gate kind
    projection: Optional[np.ndarray]  # (d', d) or None
    prompt_projection: Optional[np.ndarray]
    method: str  # initialisation actually used
    seeds: List[int]
    sk_prompt: Optional[Sketch] = None
    sk_delta: Optional[Sketch] = None
    delta_rms: float = 1.0
    scales: tuple = (1.0, 1.0)  # (s_D, s_X): mean squared row norm / width (relative L2 units)
    notes: list = field(default_factory=list)
    widths: list = field(default_factory=list)  # candidate (Delta width, gate width) pairs, None = full width

    @property
    def unit(self) -> tuple:
        """(a_D, a_X): the factors that give Delta and the gate input mean squared entries 1 (the fit's units)."""
        return tuple(1.0 / np.sqrt(max(v, 1e-300)) for v in self.scales)

    def problem(self, K: int, est, l2: float, gate_l2: float, rows: Optional[np.ndarray] = None) -> Problem:
        """The objective on this data in the fit's units; ``l2`` / ``gate_l2`` are absolute (original units)."""
        return Problem(
            self.D,
            self.X,
            K,
            self.kind,
            est.alpha,
            l2 / self.scales[0],
            est.gate_hidden,
            gate_l2=gate_l2 / self.scales[1],
            rows=rows,
            scale=self.unit,
        )

    def to_original(self, theta: np.ndarray, prob: Problem):
        """(W (K, d') and gate dict) in original units (still in the projected space) from a fit-unit theta."""
        W, gp = prob.packer.unpack(theta)
        gp = {k: v.copy() for k, v in gp.items()}
        first = "hidden_coef" if "hidden_coef" in gp else ("coef" if "coef" in gp else None)
        if first:
            gp[first] = gp[first] * self.unit[1]
        return W * self.unit[0], gp

    def restrict(self, widths: tuple) -> "Prepared":
        """The same data in the first (r_D, r_X) principal directions (nested subspaces: views, no new SVD)."""
        rd, rx = widths
        D = self.D if rd is None else self.D[:, :rd]
        X = self.X if (rx is None or self.X is None) else self.X[:, :rx]
        P = self.projection if rd is None else self.projection[:rd]
        Pp = self.prompt_projection if rx is None else self.prompt_projection[:rx]
        scales = (mean_sq_norm(D) / D.shape[1], mean_sq_norm(X) / X.shape[1] if X is not None else 1.0)
        return dataclasses.replace(self, D=D, X=X, projection=P, prompt_projection=Pp, scales=scales)


def prepare(est, D: np.ndarray, X: Optional[np.ndarray], kind: str) -> Prepared:
    """Projections to the widest candidate width (``dim`` / ``gate_dim``; "auto" by feature width), the candidate
    widths, init sketches and restart seeds. Restrict to one candidate with :meth:`Prepared.restrict`."""
    seed = seed_of(est.random_state)
    K = int(est.n_components)
    dims = dim_candidates(est.dim, D.shape[1])
    P = fit_projection(D, dims[-1], seed, est.whiten) if dims[-1] else None
    Dfit = project(D, P) if P is not None else D
    Pp, Xfit, gdims = None, None, [None]
    if kind != "static":
        gdims = dim_candidates(est.gate_dim, X.shape[1])
        Pp = fit_projection(X, gdims[-1], seed, False) if gdims[-1] else None
        Xfit = project(X, Pp) if Pp is not None else X
    tied = est.dim == est.gate_dim == "auto" and len(dims) == len(gdims)  # both projected by width: same r
    widths = list(zip(dims, gdims)) if tied else [(rd, gdims[-1]) for rd in dims]
    ss = np.random.SeedSequence(est.random_state if est.random_state is not None else None)
    seeds = [int(s.generate_state(1)[0]) for s in ss.spawn(int(est.n_init))]
    method = "kmeans" if (est.init == "gate-kmeans" and Xfit is None) else est.init
    rng = np.random.default_rng(seeds[0])
    prep = Prepared(Dfit, Xfit, kind, P, Pp, method, seeds, widths=widths)
    if K > 1 and method == "gate-kmeans":
        prep.sk_prompt = Sketch(Xfit, MAX_KMEANS_DIM, rng)
    if K > 1 and method == "kmeans":
        prep.sk_delta = Sketch(Dfit, MAX_KMEANS_DIM, rng, normalise=True)
    prep.delta_rms = float(np.sqrt(mean_sq_norm(Dfit, max_rows=2048)))
    return prep.restrict(widths[-1]) if len(widths) == 1 or P is None else prep


@dataclass
class Best:
    theta: np.ndarray
    objective: float
    history: list
    converged: bool
    n_iter: int
    restart: int
    restart_scores: list
    result: Optional[EMResult] = None


def _start(est, prep: Prepared, prob: Problem, seed: int):
    K = int(est.n_components)
    single = None
    if prep.method == "split" and K > 1:
        p1 = Problem(prep.D, None, 1, "static", 0.0, prob.l2, rows=prob.rows, scale=prob.scale)
        single = p1.packer.unpack(run_em(p1, np.zeros(p1.packer.size), max_iter=est.max_iter, tol=est.tol).theta)[0][0]
    rows = np.arange(prob.n) if prob.rows is None else prob.rows
    W0, r0 = initialise(
        prep.method,
        K,
        prep.D.shape[1],
        seed,
        rows=rows,
        delta_sketch=prep.sk_delta,
        prompt_sketch=prep.sk_prompt,
        delta_rms=prep.delta_rms * prob.scale[0],
        single_coef=single,
    )
    g0 = G.init_gate_params(prep.kind, K, prob.p, est.gate_hidden, np.random.default_rng(seed))
    return prob.packer.pack(W0, g0), r0


def fit_restarts(
    est, prep: Prepared, prob: Problem, val: Optional[Problem] = None, seeds: Optional[List[int]] = None
) -> Best:
    """``n_init`` restarts from the initialisation, each optimised by the estimator's solver; with screening
    (:meth:`heads.solvers.EMSolver.screening`) only the leader after that many iterations runs on. Restarts are
    ranked by the objective, or by the validation negative log-likelihood when ``val`` is given (then every run
    stops early on it); ``Best.restart_scores`` are those values. ``seeds`` overrides the restarts' seeds."""
    K = int(est.n_components)
    seeds = prep.seeds if seeds is None else seeds
    solver = est.solver_
    kw = dict(tol=est.tol, val=val, patience=est.patience, on_iter=est.on_iter, verbose=est.verbose)
    screen = solver.screening(len(seeds), K)
    best, scores = None, []
    for i, seed in enumerate(seeds):
        if est.verbose:
            print(f"restart {i + 1}/{len(seeds)} (init={prep.method}, solver={solver.name})")
        theta0, r0 = _start(est, prep, prob, seed)
        res = solver.run(
            prob, theta0, r0, max_iter=min(screen, est.max_iter) if screen else est.max_iter, seed=seed, **kw
        )
        if K == 1:
            res.theta = newton_polish_single(prob, res.theta)
            res.objective = prob.evaluate(res.theta, grads=()).L
        score = -val.heldout_score(res.theta) if val is not None else res.objective  # lower is better
        scores.append(float(score))
        if best is None or score < best[0]:
            best = (score, Best(res.theta, res.objective, res.history, res.converged, res.n_iter, i, scores, res))
    b = best[1]
    b.restart_scores = scores
    if screen and not b.converged and est.max_iter > b.n_iter:
        res = solver.resume(prob, b.theta, max_iter=est.max_iter - b.n_iter, **kw)
        b.theta, b.history, b.converged = res.theta, b.history + res.history, res.converged
        b.n_iter, b.objective, b.result = b.n_iter + res.n_iter, res.objective, _merge(b.result, res)
    return b


def _merge(first: Optional[EMResult], second: EMResult) -> EMResult:
    """The continuation's result with the screening's validation history in front."""
    if first is None or not first.val_history:
        return second
    second.val_history = first.val_history + second.val_history[1:]
    second.best_iter = None if second.best_iter is None else first.n_iter + second.best_iter
    return second


def select(est, prep: Prepared, groups: np.ndarray, calibrate: bool, search: bool, fixed: tuple) -> dict:
    """Held-out selection on the train pairs: for every candidate width an L2 path (``search``; else the
    ``fixed`` (l2, gate_l2) at the widest candidate) and/or a temperature (``calibrate``). Returns {widths, theta
    (fit-space start for the refit), l2, gate_l2, temperature, restart_scores, selection (JSON-able)}."""
    fit_rows, val_rows = holdout_rows(groups, est.holdout, seed_of(est.random_state))
    if len(val_rows) == 0 or len(fit_rows) < int(est.n_components):
        prep.notes.append("too few prompts for a held-out slice: no selection, no calibration")
        return {}
    K = int(est.n_components)
    out = {"selection": {"holdout": est.holdout, "fit_pairs": int(len(fit_rows)), "val_pairs": int(len(val_rows))}}

    def problems(sub: Prepared, l2: float, gl2: float):
        return [sub.problem(K, est, l2, gl2, rows) for rows in (fit_rows, val_rows)]

    if search:
        points, thetas, seconds = [], {}, 0.0
        for widths in prep.widths:
            sub = prep.restrict(widths)
            fit, val = problems(sub, 0.0, 0.0)
            first = {}

            def run(c: float, sub=sub, fit=fit, val=val, first=first):
                fit.set_l2(c, c)  # relative L2 = L2 in the fit's units
                seeds = [sub.seeds[first["restart"]]] if first else None  # the first candidate's best restart
                b = fit_restarts(est, sub, fit, val, seeds=seeds)
                if not first:
                    first.update(restart_scores=b.restart_scores, restart=b.restart)
                return b.result

            path = l2_path(run, sub.scales)
            seconds += sum(p.seconds for p in path)
            for p in path:
                thetas[id(p)] = (widths, sub, val, dict(first))
            points += path
        best = best_point(points)  # ties go to the stronger L2, then to the narrower width (listed first)
        widths, sub, val, first = thetas[id(best)]
        # early stopping chose the L2; the model is its optimum: the chosen point runs on to convergence on the fit
        # pairs (what the temperature is fitted to), and the refit on every train pair starts from there
        fit = sub.problem(K, est, best.l2, best.gate_l2, fit_rows)
        theta = est.solver_.resume(fit, best.theta, max_iter=est.max_iter, tol=est.tol).theta
        out.update(widths=widths, theta=theta, l2=best.l2, gate_l2=best.gate_l2, **first)
        out["selection"].update(
            path=[dict(p.to_dict(), dim=thetas[id(p)][1].D.shape[1]) for p in points],
            chosen_c=best.c,
            seconds=float(seconds),
            scales=list(sub.scales),
        )
    else:
        widths = prep.widths[-1]
        sub = prep.restrict(widths)
        fit, val = problems(sub, *fixed)
        theta = fit_restarts(est, sub, fit).theta
        out.update(widths=widths, theta=theta)
    if calibrate:
        lo = val.log_odds(theta)
        t = fit_temperature(lo)
        nll = lambda T: -float(np.mean(log_expit(lo / T)))  # noqa: E731
        before, after = nll(1.0), nll(t)
        keep = est.calibrate is True or before - after > 1e-4
        out["temperature"] = t if keep else 1.0
        out["selection"]["calibration"] = {
            "temperature": t,
            "val_nll_before": before,
            "val_nll_after": after,
            "applied": bool(keep),
        }
    return out
