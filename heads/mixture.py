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
from sklearn.exceptions import ConvergenceWarning

from . import fitting as F
from . import gate as G
from .chunked import matmul_t
from .em import run_em, thread_limit
from .initialise import INITS
from .objective import Problem
from .selection import prompt_groups
from .validation import as_matrix, check_rows, check_width

GATES = ("context", "static")
#: relative L2 (units of the features' scale, see heads.selection) used by optimizer="adamw" with l2="auto"
ADAMW_RELATIVE_L2 = 1e-2


def _logsig(z: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -z)


def _lse(a: np.ndarray) -> np.ndarray:
    return np.logaddexp.reduce(a, axis=1)


def collapsed_pairs(coef: np.ndarray, threshold: float = 0.99):
    """Pairs (i, j), i < j, of heads whose cosine similarity is >= threshold."""
    nrm = np.linalg.norm(coef, axis=1)
    U = coef / np.where(nrm > 0, nrm, 1.0)[:, None]
    C = U @ U.T
    K = coef.shape[0]
    return [(i, j) for i in range(K) for j in range(i + 1, K) if C[i, j] >= threshold]


def _finite_number(v, name: str, low: float = 0.0) -> None:
    if isinstance(v, bool) or not isinstance(v, Real) or not np.isfinite(v) or v < low:
        raise ValueError(f"{name} must be a finite number >= {low:g}, got {v!r}")


class MixtureBT:
    """Mixture of Bradley-Terry heads with a context (or static) gate.

    Parameters: ``n_components`` K; ``gate`` "context" (linear softmax gate with intercept; ``gate_hidden=H``
    for the paper's one-hidden-layer ReLU MLP) or "static" (one global pi: the Static Mixture baseline);
    ``alpha`` entropy weight; ``l2`` the heads' L2 ("auto": selected on held-out prompts, see the module
    docstring); ``gate_l2`` the gate's (None: ``l2``; with ``l2="auto"`` both are selected together);
    ``n_init`` restarts; ``max_iter``; ``tol`` on the relative objective change; ``optimizer`` "em" or "adamw";
    ``init`` one of "gate-kmeans" (falls back to "kmeans" without prompt features), "kmeans", "random", "split";
    ``dim`` uncentred PCA width of Delta (``whiten`` optional), ``gate_dim`` the same for the prompt features
    ("auto": full width up to 512 features, else 256; None: full width; the fit runs in the projected spaces,
    ``coef_`` and ``gate_params_`` are folded back to the original spaces); ``holdout`` the fraction of prompts
    held out for selection and calibration (``groups`` in :meth:`fit` say which pairs share a prompt);
    ``patience`` EM iterations without a better held-out log-likelihood before a selection fit stops;
    ``calibrate`` True / False / "auto" (a temperature when a held-out slice exists and it lowers the held-out
    NLL); ``accept`` line-search criterion ("L" or "Q", see :mod:`heads.em`); ``m_steps`` / ``init_m_steps``
    L-BFGS steps per M-step (later / first); ``screen_iter``: with ``n_init > 1`` every restart runs this many EM
    iterations and only the best then runs on (None: every restart to convergence); ``on_iter(it, objective)``
    callback; ``epochs``, ``batch_size``, ``lr`` for AdamW. ``alpha=0``: the per-row entropy term rewards a flat
    gate, and at alpha=0.5 (the paper's value) the K=10 heads on DSP/MiniLM collapse into one (README "Defaults").
    ``n_components=1`` is the single-reward BT model (its gate is static, and the fit is Newton-polished when
    d <= 1024).

    Fitted attributes: ``coef_`` (K, d), ``gate_params_``, ``gate_kind_``, ``mixture_weights_``, ``l2_``,
    ``gate_l2_``, ``dim_``, ``gate_dim_``, ``temperature_``, ``selection_`` (the path, chosen values, seconds),
    ``objective_``, ``objective_history_``, ``converged_``, ``n_iter_``, ``restart_objectives_``, ...
    """

    def __init__(self, n_components: int = 10, gate: str = "context", alpha: float = 0.0, l2="auto",
                 gate_l2: Optional[float] = None, n_init: int = 4, max_iter: int = 200, tol: float = 1e-6,
                 optimizer: str = "em", init: str = "gate-kmeans", dim="auto", whiten: bool = False,
                 gate_hidden: Optional[int] = None, gate_dim="auto", holdout: float = 0.2, patience: int = 10,
                 calibrate="auto", m_steps: int = 1, init_m_steps: int = 50, memory: int = 10, accept: str = "L",
                 screen_iter: Optional[int] = 30, random_state=None, verbose: int = 0,
                 on_iter: Optional[Callable[[int, float], None]] = None,
                 epochs: int = 1, batch_size: int = 32, lr: float = 2e-3, max_kmeans_dim: int = 128):
        self.n_components, self.gate, self.alpha, self.l2, self.gate_l2 = n_components, gate, alpha, l2, gate_l2
        self.n_init, self.max_iter, self.tol, self.optimizer = n_init, max_iter, tol, optimizer
        self.init, self.dim, self.whiten, self.gate_hidden, self.gate_dim = init, dim, whiten, gate_hidden, gate_dim
        self.holdout, self.patience, self.calibrate = holdout, patience, calibrate
        self.accept, self.screen_iter = accept, screen_iter
        self.m_steps, self.init_m_steps, self.memory = m_steps, init_m_steps, memory
        self.random_state, self.verbose, self.on_iter = random_state, verbose, on_iter
        self.epochs, self.batch_size, self.lr, self.max_kmeans_dim = epochs, batch_size, lr, max_kmeans_dim

    # ------------------------------------------------------------------ checks
    def _check_params(self) -> None:
        if not (isinstance(self.n_components, Integral) and self.n_components >= 1):
            raise ValueError(f"n_components must be a positive integer, got {self.n_components!r}")
        if self.gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {self.gate!r}")
        if self.optimizer not in ("em", "adamw"):
            raise ValueError(f"optimizer must be 'em' or 'adamw', got {self.optimizer!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        _finite_number(self.alpha, "alpha")
        if self.l2 != "auto":
            _finite_number(self.l2, "l2")
        if self.gate_l2 is not None:
            _finite_number(self.gate_l2, "gate_l2")
        _finite_number(self.tol, "tol")
        _finite_number(self.lr, "lr")
        if self.lr == 0:
            raise ValueError("lr must be a finite number > 0, got 0")
        for name in ("dim", "gate_dim"):
            v = getattr(self, name)
            if v not in ("auto", None) and not (isinstance(v, Integral) and v >= 1):
                raise ValueError(f"{name} must be 'auto', None or a positive integer, got {v!r}")
        if isinstance(self.holdout, bool) or not isinstance(self.holdout, Real) or not 0 <= self.holdout < 1:
            raise ValueError(f"holdout must be in [0, 1), got {self.holdout!r}")
        if self.calibrate not in (True, False, "auto"):
            raise ValueError(f"calibrate must be True, False or 'auto', got {self.calibrate!r}")
        for name in ("n_init", "max_iter", "patience"):
            v = getattr(self, name)
            if not isinstance(v, Integral) or v < (0 if name == "max_iter" else 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.accept not in ("L", "Q"):
            raise ValueError(f"accept must be 'L' or 'Q', got {self.accept!r}")

    def _check_fit_input(self, delta, prompt, groups):
        D = as_matrix(delta, "delta")
        X = None
        if prompt is not None:
            X = as_matrix(prompt, "prompt")
            check_rows(D, X, "delta", "prompt")
        elif self.gate == "context" and self.n_components > 1:
            raise ValueError("gate='context' needs prompt features: call fit(delta, prompt)")
        if self.n_components > D.shape[0]:
            raise ValueError(f"n_components={self.n_components} is larger than the number of pairs ({D.shape[0]})")
        g = prompt_groups(X, D.shape[0]) if groups is None else np.asarray(groups).reshape(-1)
        if g.shape[0] != D.shape[0]:
            raise ValueError(f"delta has {D.shape[0]} rows but groups has {g.shape[0]}")
        return D, X, g

    def _check_predict_input(self, delta, prompt, need_delta=True):
        if not hasattr(self, "coef_"):
            raise ValueError("this MixtureBT is not fitted yet: call fit(delta, prompt) first")
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
        self._check_params()
        t0 = time.perf_counter()
        D, X, g = self._check_fit_input(delta, prompt, groups)
        with thread_limit(D.size + (X.size if X is not None else 0)):
            self._fit(D, X, g)
        self.fit_time_ = time.perf_counter() - t0
        if self.collapsed_pairs_:
            warnings.warn(f"{len(self.collapsed_pairs_)} pair(s) of heads collapsed (cosine >= 0.99): "
                          f"{self.collapsed_pairs_[:5]}; try init='gate-kmeans' or fewer components", UserWarning)
        if not self.converged_ and self.max_iter > 0:
            warnings.warn("Best restart did not converge; increase max_iter or tol.", ConvergenceWarning)
        return self

    def _fit(self, D: np.ndarray, X: Optional[np.ndarray], groups: np.ndarray) -> None:
        K = int(self.n_components)
        kind = "static" if (self.gate == "static" or K == 1) else ("mlp" if self.gate_hidden else "linear")
        self.n_features_in_, self.n_prompt_features_in_ = D.shape[1], (X.shape[1] if X is not None else 0)
        prep = F.prepare(self, D, X if kind != "static" else None, kind)
        self.init_used_ = prep.method
        auto = self.l2 == "auto"
        search = auto and self.optimizer == "em"
        calibrate = self.calibrate is True or (self.calibrate == "auto" and search)
        fixed = self._l2_values({}, prep.restrict(prep.widths[-1]))
        sel = (F.select(self, prep, groups, calibrate, search, fixed)
               if (search or calibrate) and self.holdout > 0 else {})
        prep = prep.restrict(sel.get("widths", prep.widths[-1]))
        self.projection_, self.prompt_projection_ = prep.projection, prep.prompt_projection
        self.dim_, self.gate_dim_ = prep.D.shape[1], (prep.X.shape[1] if prep.X is not None else 0)
        l2, gl2 = self._l2_values(sel, prep)
        prob = prep.problem(K, self, l2, gl2)
        if "theta" in sel:  # the held-out fit, refitted on every train pair from where it stopped
            cap = min(self.max_iter, sel.get("refit_iter", self.max_iter))
            res = run_em(prob, sel["theta"], None, max_iter=cap, tol=self.tol, init_m_steps=0, memory=self.memory,
                         accept=self.accept, on_iter=self.on_iter)
            done = res.converged or cap < self.max_iter   # an early-stopped choice is refitted a few steps on purpose
            best = F.Best(res.theta, res.objective, res.history, done, res.n_iter, sel.get("restart", 0),
                          sel.get("restart_scores", []))
        else:
            best = F.fit_restarts(self, prep, prob)
        self.l2_, self.gate_l2_ = l2, gl2
        self.temperature_ = float(sel.get("temperature", 1.0))
        self.selection_ = dict(sel.get("selection", {}), notes=prep.notes)
        self._store(prep, prob, best, kind)

    def _l2_values(self, sel: dict, prep) -> tuple:
        if "l2" in sel:
            return sel["l2"], sel["gate_l2"]
        if self.l2 == "auto":   # adamw, or no held-out slice: a fixed relative value
            c = ADAMW_RELATIVE_L2
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
        return _logsig(matmul_t(D, self.coef_))

    def log_odds(self, delta, prompt=None) -> np.ndarray:
        """(n,) log P(a_w > a_l) - log P(a_l > a_w) of the (uncalibrated) mixture."""
        D, X = self._check_predict_input(delta, prompt)
        z = matmul_t(D, self.coef_)
        logf = G.gate_log_weights(self.gate_params_, X, n_rows=D.shape[0])
        return _lse(logf + _logsig(z)) - _lse(logf + _logsig(-z))

    def gate_weights(self, prompt=None) -> np.ndarray:
        """f(x) (n, K); for a static gate ``prompt`` may be None (returns one row)."""
        _, X = self._check_predict_input(None, prompt, need_delta=False)
        return G.gate_weights(self.gate_params_, X, n_rows=1 if prompt is None else np.asarray(prompt).shape[0])

    def predict_proba(self, delta, prompt=None) -> np.ndarray:
        """P(a_w > a_l) = sum_k f_k sigma(w_k . Delta), (n,), tempered by ``temperature_`` when it is not 1."""
        T = float(getattr(self, "temperature_", 1.0))
        if T != 1.0:
            return np.exp(_logsig(self.log_odds(delta, prompt) / T))
        D, X = self._check_predict_input(delta, prompt)
        return np.exp(_lse(G.gate_log_weights(self.gate_params_, X, n_rows=D.shape[0]) + self._logsig_heads(D)))

    def responsibilities(self, delta, prompt=None) -> np.ndarray:
        """Posterior over heads given the observed preference, (n, K)."""
        D, X = self._check_predict_input(delta, prompt)
        j = G.gate_log_weights(self.gate_params_, X, n_rows=D.shape[0]) + self._logsig_heads(D)
        return np.exp(j - _lse(j)[:, None])

    def head_rewards(self, features) -> np.ndarray:
        """r_k(x, a) = w_k . phi(x, a) for single responses, (n, K)."""
        if not hasattr(self, "coef_"):
            raise ValueError("this MixtureBT is not fitted yet: call fit(delta, prompt) first")
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
        nll = -float(np.mean(_lse(logf + self._logsig_heads(D))))
        ent = float(np.mean((np.exp(logf) * logf).sum(axis=1)))
        pen = 0.5 * (self.l2_ * float(np.sum(self.coef_fit_ ** 2)) + self.gate_l2_ * G.gate_penalty(self.gate_params_fit_))
        return nll + self.alpha * ent + pen
