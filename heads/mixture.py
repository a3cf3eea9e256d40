"""MixtureBT: K bias-free linear Bradley-Terry heads mixed by a gate on the prompt (MiCRo, paper Sec. 4.1).

Model: r_k(x, a) = w_k . phi(x, a); for a pair, Delta = phi(x, a_w) - phi(x, a_l) and
P(a_w > a_l | x) = sum_k f_k(x) sigma(w_k . Delta), with f(x) = softmax(gate(psi(x))).

Objective (minimised; exactly this scaling)::

    L = -(1/n) sum_i log sum_k f_k(x_i) sigma(w_k . Delta_i)
        + alpha * (1/n) sum_i sum_k f_ik log f_ik
        + (l2 / 2) * (||W||_F^2 + ||gate weight matrices||_F^2)

(gate intercepts and static logits are not penalised; with ``dim`` the L2 is on the projected heads).
Fitted by generalised EM with an L-BFGS M-step (``optimizer="em"``, see :mod:`heads.em`) or by the paper's
minibatch AdamW recipe (``optimizer="adamw"``, see :mod:`heads.sgd`), from the same initialisation.
"""
from __future__ import annotations

import time
import warnings
from typing import Callable, Dict, Optional

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from . import gate as G
from .em import Problem, newton_polish_single, run_em, thread_limit
from .initialise import INITS, initialise, normalised_rows, sketch
from .validation import as_matrix, check_rows, check_width

GATES = ("context", "static")


def _logsig(z: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -z)


def _lse(a: np.ndarray) -> np.ndarray:
    m = a.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=1, keepdims=True)))[:, 0]


def collapsed_pairs(coef: np.ndarray, threshold: float = 0.99):
    """Pairs (i, j), i < j, of heads whose cosine similarity is >= threshold."""
    nrm = np.linalg.norm(coef, axis=1)
    U = coef / np.where(nrm > 0, nrm, 1.0)[:, None]
    C = U @ U.T
    K = coef.shape[0]
    return [(i, j) for i in range(K) for j in range(i + 1, K) if C[i, j] >= threshold]


class MixtureBT:
    """Mixture of Bradley-Terry heads with a context (or static) gate.

    Parameters: ``n_components`` K; ``gate`` "context" (linear softmax gate with intercept; ``gate_hidden=H``
    for the paper's one-hidden-layer ReLU MLP) or "static" (one global pi: the Static Mixture baseline);
    ``alpha`` entropy weight; ``l2``; ``n_init`` restarts (best objective kept); ``max_iter``; ``tol`` on the
    relative objective change; ``optimizer`` "em" or "adamw"; ``init`` one of "gate-kmeans" (falls back to
    "kmeans" without prompt features), "kmeans", "random", "split"; ``dim`` optional uncentred PCA of Delta
    (``whiten`` optional) and ``gate_dim`` the same for the prompt features (the fit runs in the projected
    spaces; ``coef_`` and ``gate_params_`` are folded back to the original spaces, so prediction needs no
    projection; the L2 term applies to the projected parameters); ``accept`` line-search criterion
    ("L" or "Q", see :mod:`heads.em`); ``m_steps`` / ``init_m_steps`` L-BFGS steps per M-step (later / first);
    ``screen_iter``: with ``n_init > 1`` every restart runs this many EM iterations, and only the one with the
    lowest objective then runs to convergence (``restart_objectives_`` are the screened values; ``None`` runs every
    restart to convergence); ``on_iter(it, objective)`` callback; ``epochs``, ``batch_size``, ``lr`` for AdamW.
    Defaults ``alpha=0`` and ``l2=1e-4`` were chosen on real data (README "Defaults"): the per-row entropy term
    rewards a flat gate, and at alpha=0.5 (the paper's value) the K=10 heads on DSP/MiniLM collapse into one
    (macro accuracy 0.59 instead of 0.76); l2=1e-3 also penalises the gate enough to merge heads.
    ``n_components=1`` is the single-reward BT model (its gate is static, and the fit is Newton-polished
    when d <= 1024).
    """

    def __init__(self, n_components: int = 10, gate: str = "context", alpha: float = 0.0, l2: float = 1e-4,
                 n_init: int = 4, max_iter: int = 200, tol: float = 1e-6, optimizer: str = "em",
                 init: str = "gate-kmeans", dim: Optional[int] = None, whiten: bool = False,
                 gate_hidden: Optional[int] = None, gate_dim: Optional[int] = None, m_steps: int = 1,
                 init_m_steps: int = 50, memory: int = 10, accept: str = "L",
                 screen_iter: Optional[int] = 30, random_state=None, verbose: int = 0,
                 on_iter: Optional[Callable[[int, float], None]] = None,
                 epochs: int = 1, batch_size: int = 32, lr: float = 2e-3, max_kmeans_dim: int = 128):
        self.n_components, self.gate, self.alpha, self.l2 = n_components, gate, alpha, l2
        self.n_init, self.max_iter, self.tol, self.optimizer = n_init, max_iter, tol, optimizer
        self.init, self.dim, self.whiten, self.gate_hidden, self.gate_dim = init, dim, whiten, gate_hidden, gate_dim
        self.accept, self.screen_iter = accept, screen_iter
        self.m_steps, self.init_m_steps, self.memory = m_steps, init_m_steps, memory
        self.random_state, self.verbose, self.on_iter = random_state, verbose, on_iter
        self.epochs, self.batch_size, self.lr, self.max_kmeans_dim = epochs, batch_size, lr, max_kmeans_dim

    # ------------------------------------------------------------------ checks
    def _check_params(self) -> None:
        if not (isinstance(self.n_components, (int, np.integer)) and self.n_components >= 1):
            raise ValueError(f"n_components must be a positive integer, got {self.n_components!r}")
        if self.gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {self.gate!r}")
        if self.optimizer not in ("em", "adamw"):
            raise ValueError(f"optimizer must be 'em' or 'adamw', got {self.optimizer!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        for name in ("alpha", "l2", "tol", "lr"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float, np.integer, np.floating)) and np.isfinite(v)):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if self.alpha < 0 or self.l2 < 0:
            raise ValueError("alpha and l2 must be >= 0")
        if self.tol < 0 or self.lr <= 0:
            raise ValueError(f"tol must be >= 0 and lr > 0, got tol={self.tol!r}, lr={self.lr!r}")
        if int(self.n_init) < 1:
            raise ValueError(f"n_init must be >= 1, got {self.n_init}")

    def _check_fit_input(self, delta, prompt):
        D = as_matrix(delta, "delta")
        X = None
        if prompt is not None:
            X = as_matrix(prompt, "prompt")
            check_rows(D, X, "delta", "prompt")
        elif self.gate == "context" and self.n_components > 1:
            raise ValueError("gate='context' needs prompt features: call fit(delta, prompt)")
        if self.n_components > D.shape[0]:
            raise ValueError(f"n_components={self.n_components} is larger than the number of pairs ({D.shape[0]})")
        return D, X

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
    def fit(self, delta, prompt=None) -> "MixtureBT":
        """Fit on pair differences ``delta`` (n, d) (winner - loser) and prompt features ``prompt`` (n, p)."""
        self._check_params()
        t0 = time.perf_counter()
        D, X = self._check_fit_input(delta, prompt)
        with thread_limit(D.size + (X.size if X is not None else 0)):
            self._fit(D, X)
        self.fit_time_ = time.perf_counter() - t0
        if self.collapsed_pairs_:
            warnings.warn(f"{len(self.collapsed_pairs_)} pair(s) of heads collapsed (cosine >= 0.99): "
                          f"{self.collapsed_pairs_[:5]}; try init='gate-kmeans' or fewer components", UserWarning)
        if not self.converged_ and self.max_iter > 0:
            warnings.warn("Best restart did not converge; increase max_iter or tol.", ConvergenceWarning)
        return self

    def _fit(self, D: np.ndarray, X: Optional[np.ndarray]) -> None:
        n, d = D.shape
        K = int(self.n_components)
        kind = "static" if (self.gate == "static" or K == 1) else ("mlp" if self.gate_hidden else "linear")
        self.n_features_in_ = d
        self.n_prompt_features_in_ = X.shape[1] if X is not None else 0
        self.projection_ = None
        Dfit = D
        if self.dim is not None and int(self.dim) < d:
            self.projection_ = self._fit_projection(D, int(self.dim))
            Dfit = np.ascontiguousarray(D @ self.projection_.T.astype(D.dtype))
        self.prompt_projection_ = None
        Xp = X
        if X is not None and self.gate_dim is not None and int(self.gate_dim) < X.shape[1] and kind != "static":
            self.prompt_projection_ = self._fit_projection(X, int(self.gate_dim))
            Xp = X @ self.prompt_projection_.T.astype(X.dtype)
        Xfit = None if kind == "static" else np.ascontiguousarray(Xp, dtype=Dfit.dtype)
        prob = Problem(Dfit, Xfit, K, kind, self.alpha, self.l2, self.gate_hidden)
        ss = np.random.SeedSequence(self.random_state if self.random_state is not None else None)
        seeds = [int(s.generate_state(1)[0]) for s in ss.spawn(int(self.n_init))]

        method = self.init
        if method == "gate-kmeans" and X is None:
            method = "kmeans"
        rng = np.random.default_rng(seeds[0])
        sk_prompt = sketch(Xp, self.max_kmeans_dim, rng) if (method == "gate-kmeans" and K > 1) else None
        sk_delta = sketch(normalised_rows(Dfit), self.max_kmeans_dim, rng) if (method == "kmeans" and K > 1) else None
        delta_rms = float(np.sqrt(np.mean(np.einsum("ij,ij->i", Dfit[:2048], Dfit[:2048], dtype=np.float64))))
        single = None
        if method == "split" and K > 1:
            p1 = Problem(Dfit, None, 1, "static", 0.0, self.l2)
            single = p1.packer.unpack(run_em(p1, np.zeros(p1.packer.size), max_iter=self.max_iter, tol=self.tol).theta)[0][0]

        best = None
        self.restart_objectives_ = []
        for i, seed in enumerate(seeds):
            if self.verbose:
                print(f"restart {i + 1}/{len(seeds)} (init={method}, optimizer={self.optimizer})")
            W0, r0 = initialise(method, K, Dfit.shape[1], seed, delta_sketch=sk_delta, prompt_sketch=sk_prompt,
                                delta_rms=delta_rms, single_coef=single)
            g0 = G.init_gate_params(kind, K, prob.p, self.gate_hidden, np.random.default_rng(seed))
            theta0 = prob.packer.pack(W0, g0)
            screening = self.optimizer == "em" and self.screen_iter and len(seeds) > 1 and K > 1
            if self.optimizer == "em":
                iters = min(int(self.screen_iter), self.max_iter) if screening else self.max_iter
                res = run_em(prob, theta0, r0, max_iter=iters, tol=self.tol, m_steps=self.m_steps,
                             init_m_steps=self.init_m_steps, memory=self.memory, accept=self.accept,
                             on_iter=self.on_iter, verbose=self.verbose)
                theta, hist, conv, n_it = res.theta, res.history, res.converged, res.n_iter
                if K == 1:
                    theta = newton_polish_single(prob, theta)
                obj = prob.evaluate(theta, grads=()).L if K == 1 else res.objective
            else:
                from .sgd import run_adamw
                res = run_em(prob, theta0, r0, max_iter=0, init_m_steps=self.init_m_steps, memory=self.memory)
                cb = (lambda ep, th: self.on_iter(ep, prob.evaluate(th, grads=()).L)) if self.on_iter else None
                theta, hist = run_adamw(prob, res.theta, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                                        seed=seed, on_epoch=cb)
                hist = res.history + hist
                conv, n_it, obj = True, int(self.epochs), hist[-1]
            self.restart_objectives_.append(obj)
            if best is None or obj < best[0]:
                best = (obj, theta, hist, conv, n_it, i)

        obj, theta, hist, conv, n_it, bi = best
        if screening and not conv and self.max_iter > n_it:
            # only the restart that led after screen_iter iterations runs to convergence
            res = run_em(prob, theta, None, max_iter=self.max_iter - n_it, tol=self.tol, m_steps=self.m_steps,
                         init_m_steps=0, memory=self.memory, accept=self.accept, on_iter=self.on_iter,
                         verbose=self.verbose)
            theta, hist, conv = res.theta, hist + res.history, res.converged
            n_it, obj = n_it + res.n_iter, res.objective
        W, gp = prob.packer.unpack(theta)
        W, gp = W.copy(), {k: v.copy() for k, v in gp.items()}
        mix = G.gate_weights(gp, Xfit, n_rows=n).mean(axis=0)
        order = np.argsort(-mix, kind="stable")
        W = W[order]
        for key in ("coef", "intercept", "logits"):
            if key in gp and gp[key].shape[0] == K:
                gp[key] = gp[key][order]
        self.coef_fit_, self.gate_params_fit_ = W, gp
        self.coef_ = W @ self.projection_ if self.projection_ is not None else W
        self.gate_params_, self.gate_kind_ = self._fold_gate(gp), kind
        self.mixture_weights_ = mix[order]
        self.objective_ = float(obj)
        self.objective_history_ = [float(v) for v in hist]
        self.converged_, self.n_iter_, self.best_init_ = bool(conv), int(n_it), int(bi)
        self.init_used_ = method
        self.collapsed_pairs_ = collapsed_pairs(self.coef_) if K > 1 else []

    def _fold_gate(self, gp: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Gate parameters on projected prompts -> the same gate on raw prompts (first layer @ projection)."""
        if self.prompt_projection_ is None:
            return gp
        out = dict(gp)
        first = "hidden_coef" if "hidden_coef" in gp else "coef"
        out[first] = gp[first] @ self.prompt_projection_
        return out

    def _fit_projection(self, D: np.ndarray, dim: int) -> np.ndarray:
        """Uncentred PCA (heads are bias-free; no mean is stored): top right singular vectors of the rows, (dim, d),
        by randomized SVD on at most ``max(4 dim, 4096)`` random rows (the subspace of embedding-like features
        is well estimated from a subsample; the full SVD of 23,500 x 3,072 would dominate the fit). With
        ``whiten`` the rows are scaled so that projected coordinates have unit mean square."""
        from sklearn.utils.extmath import randomized_svd

        seed = self.random_state if isinstance(self.random_state, (int, np.integer)) else 0
        rng = np.random.default_rng(seed)
        m = min(D.shape[0], max(4 * dim, 4096))
        sub = D if m == D.shape[0] else D[np.sort(rng.choice(D.shape[0], m, replace=False))]
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):  # small QR/SVD calls: threads only add hand-off cost
            _, S, Vt = randomized_svd(np.asarray(sub, dtype=np.float32), dim, n_iter=2, random_state=seed)
        P = Vt.astype(np.float64)
        if self.whiten:
            P = P * (np.sqrt(m) / np.maximum(S, 1e-12))[:, None]
        return P

    # ------------------------------------------------------------------ inference (original feature space)
    def _joint(self, D: np.ndarray, X: Optional[np.ndarray]) -> np.ndarray:
        z = (D @ self.coef_.T.astype(D.dtype, copy=False)).astype(np.float64)
        return G.gate_log_weights(self.gate_params_, X, n_rows=D.shape[0]) + _logsig(z)

    def gate_weights(self, prompt=None) -> np.ndarray:
        """f(x) (n, K); for a static gate ``prompt`` may be None (returns one row)."""
        _, X = self._check_predict_input(None, prompt, need_delta=False)
        return G.gate_weights(self.gate_params_, X, n_rows=1 if prompt is None else np.asarray(prompt).shape[0])

    def predict_proba(self, delta, prompt=None) -> np.ndarray:
        """P(a_w > a_l) = sum_k f_k sigma(w_k . Delta), (n,). The projection (if any) is folded into coef_."""
        D, X = self._check_predict_input(delta, prompt)
        return np.exp(_lse(self._joint(D, X)))

    def responsibilities(self, delta, prompt=None) -> np.ndarray:
        """Posterior over heads given the observed preference, (n, K)."""
        D, X = self._check_predict_input(delta, prompt)
        j = self._joint(D, X)
        return np.exp(j - _lse(j)[:, None])

    def head_rewards(self, features) -> np.ndarray:
        """r_k(x, a) = w_k . phi(x, a) for single responses, (n, K)."""
        if not hasattr(self, "coef_"):
            raise ValueError("this MixtureBT is not fitted yet: call fit(delta, prompt) first")
        F_ = as_matrix(features, "features")
        check_width(F_, self.n_features_in_, "features")
        return (F_ @ self.coef_.T.astype(F_.dtype, copy=False)).astype(np.float64)

    def score(self, delta, prompt=None) -> float:
        """Mean log-likelihood (1/n) sum log P(a_w > a_l)."""
        D, X = self._check_predict_input(delta, prompt)
        return float(np.mean(_lse(self._joint(D, X))))

    def objective(self, delta, prompt=None) -> float:
        """The full penalised objective L (module docstring) at the fitted parameters."""
        D, X = self._check_predict_input(delta, prompt)
        logf = G.gate_log_weights(self.gate_params_, X, n_rows=D.shape[0])
        nll = -float(np.mean(_lse(self._joint(D, X))))
        ent = float(np.mean((np.exp(logf) * logf).sum(axis=1)))
        pen = 0.5 * self.l2 * (float(np.sum(self.coef_fit_ ** 2)) + G.gate_penalty(self.gate_params_fit_))
        return nll + self.alpha * ent + pen
