"""MixtureBT: K bias-free linear Bradley-Terry heads mixed by a gate on the prompt (MiCRo, paper Sec. 4.1).

Model: r_k(x, a) = w_k . phi(x, a); for a pair, Delta = phi(x, a_w) - phi(x, a_l) and
P(a_w > a_l | x) = sum_k f_k(x) sigma(w_k . Delta), with f(x) = softmax(gate(psi(x))); with a fitted
temperature T the reported probability is sigma(logit(P) / T) (same decisions, calibrated confidence).

Objective (minimised; exactly this scaling)::

    L = -(1/n) sum_i log sum_k f_k(x_i) sigma(w_k . Delta_i)
        + alpha * (1/n) sum_i sum_k f_ik log f_ik
        + (l2 / 2) ||W||_F^2 + (gate_l2 / 2) ||gate weight matrices||_F^2

(gate intercepts and static logits are not penalised; with a projection the L2 is on the projected parameters).
Fitted by generalised EM with an L-BFGS M-step (``optimizer="em"``, see :mod:`heads.em`) or by the paper's
minibatch AdamW recipe (``optimizer="adamw"``, see :mod:`heads.sgd`), from the same initialisation.

Defaults hold from 384-d sentence embeddings to 4,096-d LLM features (:mod:`heads.selection`): ``l2="auto"``
picks the L2 on a held-out slice of the prompts (a warm-started path in units of the features' scale, early
stopping on the held-out log-likelihood, refit on all pairs), ``dim="auto"`` fits features wider than 512 in
their top-256 PCA subspace, and ``calibrate="auto"`` fits a temperature on the held-out slice when it lowers
the held-out NLL.
"""

from __future__ import annotations

import time
import warnings
from numbers import Integral, Real
from typing import Callable, Dict, Optional

import numpy as np
from scipy.special import expit, log_expit, logsumexp
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from . import fitting as F
from . import gate as G
from .align import cosine_matrix
from .chunked import matmul_t
from .defaults import ALPHA, HOLDOUT, MAX_ITER, N_COMPONENTS, N_INIT, PATIENCE, TOL
from .em import thread_limit
from .initialise import INITS
from .objective import Problem
from .selection import C_START, prompt_groups
from .solvers import SOLVERS, EMSolver, make_solver
from .validation import as_matrix, check_rows, check_width, nonzero_rows

GATES = ("context", "static")


def collapsed_pairs(coef: np.ndarray, threshold: float = 0.99):
    """Pairs (i, j), i < j, of heads whose cosine similarity is >= threshold."""
    C = cosine_matrix(coef, coef)
    K = coef.shape[0]
    return [(i, j) for i in range(K) for j in range(i + 1, K) if C[i, j] >= threshold]


class MixtureBT(BaseEstimator):
    """Mixture of Bradley-Terry heads with a context (or static) gate (a scikit-learn estimator).

    Parameters: ``n_components`` K; ``gate`` "context" (linear softmax gate with intercept; ``gate_hidden=H``
    for the paper's one-hidden-layer ReLU MLP) or "static" (one global pi: the Static Mixture baseline);
    ``alpha`` entropy weight; ``l2`` the heads' L2 ("auto": selected on held-out prompts, see the module
    docstring); ``gate_l2`` the gate's (None: ``l2``; with ``l2="auto"`` both are selected together);
    ``n_init`` restarts; ``max_iter``; ``tol`` on the relative objective change; ``solver`` "em" (generalised EM),
    "adamw" (the paper's minibatch recipe) or a :class:`heads.solvers.EMSolver` / ``AdamWSolver`` object with the
    optimiser's internals; ``init`` one of "gate-kmeans" (falls back to "kmeans" without prompt features),
    "kmeans", "random", "split"; ``dim`` uncentred PCA width of Delta (``whiten`` optional), ``gate_dim`` the same
    for the prompt features ("auto": full width up to 512 features, else the better of 64 and 256 on the held-out
    slice; None: full width; the fit runs in the projected spaces, ``coef_`` and ``gate_params_`` are folded back
    to the original spaces); ``holdout`` the fraction of prompts held out for selection and calibration
    (``groups`` in :meth:`fit` say which pairs share a prompt); ``patience`` EM iterations without a better
    held-out log-likelihood before a selection fit stops; ``calibrate`` True / False / "auto" (a temperature when
    a held-out slice exists and it lowers the held-out NLL); ``on_iter(it, objective)`` callback. ``alpha=0``: the
    per-row entropy term rewards a flat gate, and at alpha=0.5 (the paper's value) the K=10 heads on DSP/MiniLM
    collapse into one (README "Defaults"). ``n_components=1`` is the single-reward BT model (its gate is static,
    and the fit is Newton-polished when d <= 1024).

    Fitted attributes: ``coef_`` (K, d), ``gate_params_``, ``gate_kind_``, ``mixture_weights_``, ``l2_``,
    ``gate_l2_``, ``dim_``, ``gate_dim_``, ``temperature_``, ``selection_`` (the path, chosen values, seconds),
    ``objective_``, ``objective_history_``, ``converged_``, ``n_iter_``, ``restart_objectives_``,
    ``n_identical_`` (pairs left out of the fit: a zero difference vector carries no preference), ...
    """

    _parameter_constraints: dict = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "gate": [StrOptions(set(GATES))],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "l2": [StrOptions({"auto"}), Interval(Real, 0, None, closed="left")],
        "gate_l2": [Interval(Real, 0, None, closed="left"), None],
        "n_init": [Interval(Integral, 1, None, closed="left")],
        "max_iter": [Interval(Integral, 0, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "solver": [StrOptions(set(SOLVERS)), EMSolver],
        "init": [StrOptions(set(INITS))],
        "dim": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left"), None],
        "whiten": ["boolean"],
        "gate_hidden": [Interval(Integral, 1, None, closed="left"), None],
        "gate_dim": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left"), None],
        "holdout": [Interval(Real, 0, 1, closed="left")],
        "patience": [Interval(Integral, 1, None, closed="left")],
        "calibrate": ["boolean", StrOptions({"auto"})],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "on_iter": [callable, None],
    }

    def __init__(
        self,
        n_components: int = N_COMPONENTS,
        gate: str = "context",
        alpha: float = ALPHA,
        l2="auto",
        gate_l2: Optional[float] = None,
        n_init: int = N_INIT,
        max_iter: int = MAX_ITER,
        tol: float = TOL,
        solver="em",
        init: str = "gate-kmeans",
        dim="auto",
        whiten: bool = False,
        gate_hidden: Optional[int] = None,
        gate_dim="auto",
        holdout: float = HOLDOUT,
        patience: int = PATIENCE,
        calibrate="auto",
        random_state=None,
        verbose: int = 0,
        on_iter: Optional[Callable[[int, float], None]] = None,
    ):
        self.n_components = n_components
        self.gate = gate
        self.alpha = alpha
        self.l2 = l2
        self.gate_l2 = gate_l2
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.solver = solver
        self.init = init
        self.dim = dim
        self.whiten = whiten
        self.gate_hidden = gate_hidden
        self.gate_dim = gate_dim
        self.holdout = holdout
        self.patience = patience
        self.calibrate = calibrate
        self.random_state = random_state
        self.verbose = verbose
        self.on_iter = on_iter

    def _check_fit_input(self, delta, prompt, groups):
        D = as_matrix(delta, "delta")
        X = None
        if prompt is not None:
            X = as_matrix(prompt, "prompt")
            check_rows(D, X, "delta", "prompt")
        elif self.gate == "context" and self.n_components > 1:
            raise ValueError("gate='context' needs prompt features: call fit(delta, prompt)")
        g = prompt_groups(X, D.shape[0]) if groups is None else np.asarray(groups).reshape(-1)
        if g.shape[0] != D.shape[0]:
            raise ValueError(f"delta has {D.shape[0]} rows but groups has {g.shape[0]}")
        keep = nonzero_rows(D)  # identical chosen/rejected features: no preference to learn, left out
        self.n_identical_ = int(D.shape[0] - keep.sum())
        if not keep.any():
            raise ValueError(
                f"all {D.shape[0]} pairs have identical chosen and rejected features (every difference vector "
                "is zero): nothing to learn from"
            )
        if self.n_identical_:
            D, X, g = D[keep], (X[keep] if X is not None else None), g[keep]
        if self.n_components > D.shape[0]:
            raise ValueError(f"n_components={self.n_components} is larger than the number of pairs ({D.shape[0]})")
        return D, X, g

    def _check_predict_input(self, delta, prompt, need_delta=True):
        check_is_fitted(self, "coef_")
        D = None
        if need_delta:
            D = as_matrix(delta, "delta")
            check_width(D, self.n_features_in_, "delta")
        X = None
        if self.gate_kind_ != "static":
            if prompt is None:
                raise ValueError("this model has a context gate: prompt features are required")
            X = as_matrix(prompt, "prompt")
            check_width(X, self.n_prompt_features_in_, "prompt")
            if D is not None:
                check_rows(D, X, "delta", "prompt")
        return D, X

    # ------------------------------------------------------------------ fit
    def fit(self, delta, prompt=None, groups=None) -> "MixtureBT":
        """Fit on pair differences ``delta`` (n, d) (winner - loser) and prompt features ``prompt`` (n, p);
        ``groups`` (n,) say which pairs share a prompt (default: identical prompt feature rows), so that the
        held-out slice never splits a prompt. float16 features are used as they are (computed in float32 chunks)."""
        self._validate_params()
        self.solver_ = make_solver(self.solver)
        t0 = time.perf_counter()
        D, X, g = self._check_fit_input(delta, prompt, groups)
        with thread_limit(D.size + (X.size if X is not None else 0)):
            self._fit(D, X, g)
        self.fit_time_ = time.perf_counter() - t0
        if self.collapsed_pairs_:
            warnings.warn(
                f"{len(self.collapsed_pairs_)} pair(s) of heads collapsed (cosine >= 0.99): "
                f"{self.collapsed_pairs_[:5]}; try init='gate-kmeans' or fewer components",
                UserWarning,
            )
        if not self.converged_ and self.max_iter > 0:
            warnings.warn("Best restart did not converge; increase max_iter or tol.", ConvergenceWarning)
        return self

    def _fit(self, D: np.ndarray, X: Optional[np.ndarray], groups: np.ndarray) -> None:
        K = int(self.n_components)
        kind = "static" if (self.gate == "static" or K == 1) else ("mlp" if self.gate_hidden else "linear")
        self.n_features_in_, self.n_prompt_features_in_ = D.shape[1], (X.shape[1] if X is not None else 0)
        prep = F.prepare(self, D, X if kind != "static" else None, kind)
        self.init_used_ = prep.method
        search = self.l2 == "auto" and self.solver_.name == "em"  # AdamW (the paper's recipe) runs as it is
        calibrate = self.calibrate is True or (self.calibrate == "auto" and search)
        fixed = self._l2_values({}, prep.restrict(prep.widths[-1]))
        sel = (
            F.select(self, prep, groups, calibrate, search, fixed) if (search or calibrate) and self.holdout > 0 else {}
        )
        prep = prep.restrict(sel.get("widths", prep.widths[-1]))
        self.projection_, self.prompt_projection_ = prep.projection, prep.prompt_projection
        self.dim_, self.gate_dim_ = prep.D.shape[1], (prep.X.shape[1] if prep.X is not None else 0)
        l2, gl2 = self._l2_values(sel, prep)
        prob = prep.problem(K, self, l2, gl2)
        if "theta" in sel:  # the held-out fit, refitted on every train pair from where it stopped
            res = self.solver_.resume(prob, sel["theta"], max_iter=self.max_iter, tol=self.tol, on_iter=self.on_iter)
            best = F.Best(
                res.theta,
                res.objective,
                res.history,
                res.converged,
                res.n_iter,
                sel.get("restart", 0),
                sel.get("restart_scores", []),
            )
        else:
            best = F.fit_restarts(self, prep, prob)
        self.l2_, self.gate_l2_ = l2, gl2
        self.temperature_ = float(sel.get("temperature", 1.0))
        self.selection_ = dict(sel.get("selection", {}), notes=prep.notes)
        self._store(prep, prob, best, kind)

    def _l2_values(self, sel: dict, prep) -> tuple:
        if "l2" in sel:
            return sel["l2"], sel["gate_l2"]
        if self.l2 == "auto":  # AdamW, or no held-out slice: the relative value the search starts from
            c = C_START
            return c * prep.scales[0], c * prep.scales[1]
        return float(self.l2), float(self.l2 if self.gate_l2 is None else self.gate_l2)

    def _store(self, prep, prob: Problem, best, kind: str) -> None:
        K = prob.K
        W, gp = prep.to_original(best.theta, prob)
        mix = G.gate_weights(gp, prep.X, n_rows=prep.D.shape[0]).mean(axis=0)
        order = np.argsort(-mix, kind="stable")
        W = W[order]
        for key in ("coef", "intercept", "logits"):
            if key in gp and gp[key].shape[0] == K:
                gp[key] = gp[key][order]
        self.coef_fit_, self.gate_params_fit_ = W, gp
        self.coef_ = W @ self.projection_ if self.projection_ is not None else W
        self.gate_params_, self.gate_kind_ = self._fold_gate(gp), kind
        self.mixture_weights_ = mix[order]
        self.objective_ = float(best.objective)
        self.objective_history_ = [float(v) for v in best.history]
        self.restart_objectives_ = [float(v) for v in best.restart_scores]
        self.converged_, self.n_iter_, self.best_init_ = bool(best.converged), int(best.n_iter), int(best.restart)
        self.collapsed_pairs_ = collapsed_pairs(self.coef_) if K > 1 else []

    def _fold_gate(self, gp: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Gate parameters on projected prompts -> the same gate on raw prompts (first layer @ projection)."""
        if self.prompt_projection_ is None:
            return gp
        out = dict(gp)
        first = "hidden_coef" if "hidden_coef" in gp else "coef"
        out[first] = gp[first] @ self.prompt_projection_
        return out

    # ------------------------------------------------------------------ inference (original feature space)
    def _logsig_heads(self, D: np.ndarray) -> np.ndarray:
        return log_expit(matmul_t(D, self.coef_))

    def log_odds(self, delta, prompt=None) -> np.ndarray:
        """(n,) log P(a_w > a_l) - log P(a_l > a_w) of the (uncalibrated) mixture."""
        D, X = self._check_predict_input(delta, prompt)
        z = matmul_t(D, self.coef_)
        logf = G.gate_log_weights(self.gate_params_, X, n_rows=D.shape[0])
        return logsumexp(logf + log_expit(z), axis=1) - logsumexp(logf + log_expit(-z), axis=1)

    def gate_weights(self, prompt=None) -> np.ndarray:
        """f(x) (n, K); for a static gate ``prompt`` may be None (returns one row)."""
        _, X = self._check_predict_input(None, prompt, need_delta=False)
        return G.gate_weights(self.gate_params_, X, n_rows=1 if prompt is None else np.asarray(prompt).shape[0])

    def predict_proba(self, delta, prompt=None) -> np.ndarray:
        """P(a_w > a_l) = sum_k f_k sigma(w_k . Delta), (n,), tempered by ``temperature_`` when it is not 1."""
        T = float(getattr(self, "temperature_", 1.0))
        if T != 1.0:
            return expit(self.log_odds(delta, prompt) / T)
        D, X = self._check_predict_input(delta, prompt)
        return np.exp(
            logsumexp(G.gate_log_weights(self.gate_params_, X, n_rows=D.shape[0]) + self._logsig_heads(D), axis=1)
        )

    def responsibilities(self, delta, prompt=None) -> np.ndarray:
        """Posterior over heads given the observed preference, (n, K)."""
        D, X = self._check_predict_input(delta, prompt)
        j = G.gate_log_weights(self.gate_params_, X, n_rows=D.shape[0]) + self._logsig_heads(D)
        return np.exp(j - logsumexp(j, axis=1, keepdims=True))

    def head_rewards(self, features) -> np.ndarray:
        """r_k(x, a) = w_k . phi(x, a) for single responses, (n, K)."""
        check_is_fitted(self, "coef_")
        F_ = as_matrix(features, "features")
        check_width(F_, self.n_features_in_, "features")
        return matmul_t(F_, self.coef_)

    def score(self, delta, prompt=None) -> float:
        """Mean log-likelihood (1/n) sum log P(a_w > a_l) (with the temperature)."""
        return float(np.mean(np.log(np.clip(self.predict_proba(delta, prompt), 1e-300, None))))

    def objective(self, delta, prompt=None) -> float:
        """The full penalised objective L (module docstring) at the fitted parameters."""
        D, X = self._check_predict_input(delta, prompt)
        logf = G.gate_log_weights(self.gate_params_, X, n_rows=D.shape[0])
        nll = -float(np.mean(logsumexp(logf + self._logsig_heads(D), axis=1)))
        ent = float(np.mean((np.exp(logf) * logf).sum(axis=1)))
        pen = 0.5 * (
            self.l2_ * float(np.sum(self.coef_fit_**2)) + self.gate_l2_ * G.gate_penalty(self.gate_params_fit_)
        )
        return nll + self.alpha * ent + pen
