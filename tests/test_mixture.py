"""MixtureBT: recovery, equivalences, monotone EM, gradients vs autograd, determinism, input checks."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.utils._param_validation import InvalidParameterError

from heads import MixtureBT, accuracy, collapsed_pairs, make_mixture, mean_aligned_cosine, objective_and_grad
from heads import gate as G
from heads.solvers import AdamWSolver, EMSolver
from heads.synthetic import split


@pytest.fixture(scope="module")
def data():
    return split(make_mixture(n=30000, d=16, p=8, k=3, seed=1), 20000)


@pytest.fixture(scope="module")
def small():
    return make_mixture(n=3000, d=6, p=4, k=3, seed=5)


def test_em_recovers_heads_and_bayes_accuracy(data):
    tr, te = data
    m = MixtureBT(n_components=3, alpha=0.0, l2=1e-4, n_init=1, random_state=0).fit(tr["delta"], tr["prompt"])
    assert m.converged_
    assert mean_aligned_cosine(tr["true_coef"], m.coef_) >= 0.95
    acc = accuracy(m.predict_proba(te["delta"], te["prompt"]))
    assert abs(acc - te["bayes_accuracy"]) <= 0.01, (acc, te["bayes_accuracy"])
    # canonical order: descending mixture mass
    assert np.all(np.diff(m.mixture_weights_) <= 1e-12)
    np.testing.assert_allclose(m.mixture_weights_, m.gate_weights(tr["prompt"]).mean(0), atol=1e-9)
    assert m.collapsed_pairs_ == []


def test_single_head_equals_sklearn_logistic_regression(small):
    D = small["delta"]
    n, l2 = D.shape[0], 1e-2
    m = MixtureBT(n_components=1, l2=l2, n_init=1, tol=1e-12, max_iter=500).fit(D)
    # ours: (1/n) sum -log s(w.D) + l2/2 |w|^2; sklearn on 2n rows (+D,1), (-D,0):
    # C * 2 * sum -log s(w.D) + 1/2 |w|^2  ->  same minimiser when C = 1 / (2 n l2)
    X2, y = np.vstack([D, -D]), np.r_[np.ones(n), np.zeros(n)]
    lr = LogisticRegression(fit_intercept=False, C=1.0 / (2 * n * l2), tol=1e-12, max_iter=10000).fit(X2, y)
    rel = np.abs(m.coef_[0] - lr.coef_[0]).max() / np.abs(lr.coef_[0]).max()
    assert rel < 1e-4, rel
    assert m.gate_kind_ == "static"


@pytest.mark.parametrize("alpha,accept", [(0.0, "L"), (0.0, "Q"), (0.5, "L")])
def test_objective_monotone(small, alpha, accept):
    m = MixtureBT(
        n_components=3,
        alpha=alpha,
        l2=1e-3,
        n_init=1,
        max_iter=60,
        tol=0.0,
        init="random",
        random_state=3,
        solver=EMSolver(accept=accept),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.fit(small["delta"], small["prompt"])
    h = np.asarray(m.objective_history_)
    assert len(h) > 10
    inc = (h[1:] - h[:-1]) / np.abs(h[:-1])
    assert inc.max() <= 1e-9, inc.max()
    assert abs(h[-1] - m.objective(small["delta"], small["prompt"])) < 1e-9


def _torch_objective(D, X, W, gp, alpha, l2):
    """Independent evaluation of L with autograd: returns loss and the leaf tensors."""
    Wt = torch.tensor(W, requires_grad=True)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in gp.items()}
    Dt = torch.tensor(D)
    if "logits" in tp:
        a = tp["logits"].expand(D.shape[0], -1)
    elif "hidden_coef" in tp:
        a = torch.relu(torch.tensor(X) @ tp["hidden_coef"].T + tp["hidden_intercept"]) @ tp["coef"].T + tp["intercept"]
    else:
        a = torch.tensor(X) @ tp["coef"].T + tp["intercept"]
    f = torch.softmax(a, dim=1)
    p = (f * torch.sigmoid(Dt @ Wt.T)).sum(1)
    loss = -torch.log(p).mean() + alpha * (f * torch.log(f)).sum(1).mean()
    loss = loss + 0.5 * l2 * ((Wt**2).sum() + sum((tp[k] ** 2).sum() for k in ("coef", "hidden_coef") if k in tp))
    loss.backward()
    return loss.item(), Wt.grad.numpy(), {k: v.grad.numpy() for k, v in tp.items()}


@pytest.mark.parametrize("kind,hidden", [("linear", None), ("mlp", 5), ("static", None)])
def test_objective_and_gradient_match_autograd(small, kind, hidden):
    rng = np.random.default_rng(0)
    D, X = small["delta"][:500], small["prompt"][:500]
    K = 3
    W = rng.standard_normal((K, D.shape[1]))
    gp = G.init_gate_params(kind, K, X.shape[1], hidden, rng, scale=1.0)
    if kind == "static":
        gp["logits"] = rng.standard_normal(K)
    L, gW, gg = objective_and_grad(D, X, W, gp, alpha=0.5, l2=0.1)
    L_t, gW_t, gg_t = _torch_objective(D, X, W, gp, 0.5, 0.1)
    assert abs(L - L_t) < 1e-10
    np.testing.assert_allclose(gW, gW_t, atol=1e-10)
    for k in gp:
        np.testing.assert_allclose(gg[k], gg_t[k], atol=1e-10, err_msg=k)


def test_fitted_objective_matches_autograd(small):
    m = MixtureBT(n_components=3, alpha=0.5, l2=1e-3, n_init=1, max_iter=30, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.fit(small["delta"], small["prompt"])
    L_t, _, _ = _torch_objective(small["delta"], small["prompt"], m.coef_, m.gate_params_, 0.5, 1e-3)
    assert abs(m.objective(small["delta"], small["prompt"]) - L_t) < 1e-10
    assert abs(m.objective_ - L_t) < 1e-9


@pytest.mark.parametrize("screen_iter", [None, 10])
def test_same_seed_identical_and_best_restart(small, screen_iter):
    kw = dict(
        n_components=3,
        n_init=3,
        max_iter=40,
        random_state=7,
        init="random",
        l2=1e-4,
        solver=EMSolver(screen_iter=screen_iter),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = MixtureBT(**kw).fit(small["delta"], small["prompt"])
        b = MixtureBT(**kw).fit(small["delta"], small["prompt"])
    np.testing.assert_array_equal(a.coef_, b.coef_)
    for k in a.gate_params_:
        np.testing.assert_array_equal(a.gate_params_[k], b.gate_params_[k])
    assert a.objective_history_ == b.objective_history_
    assert len(set(np.round(a.restart_objectives_, 12))) > 1  # the restarts differ
    assert a.restart_objectives_[a.best_init_] == min(a.restart_objectives_)
    if screen_iter is None:  # every restart ran to the end: the kept one has the lowest objective
        assert a.objective_ == min(a.restart_objectives_)
    else:  # the screened leader continued from its screened state: never worse
        assert a.objective_ <= min(a.restart_objectives_) + 1e-12
        assert len(a.objective_history_) > screen_iter


@pytest.mark.parametrize("init", ["gate-kmeans", "kmeans", "random", "split"])
def test_inits_run(small, init):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = MixtureBT(n_components=3, n_init=1, max_iter=20, init=init, random_state=0)
        m.fit(small["delta"], small["prompt"])
    assert m.coef_.shape == (3, 6) and np.isfinite(m.objective_)


def test_predict_api_shapes(small):
    D, X = small["delta"], small["prompt"]
    seen = []
    m = MixtureBT(
        n_components=3, n_init=1, max_iter=15, random_state=0, l2=1e-4, on_iter=lambda i, o: seen.append((i, o))
    )
    with pytest.warns(ConvergenceWarning):
        m.fit(D, X)
    assert seen and seen[0][0] == 1 and len(seen) == m.n_iter_
    p = m.predict_proba(D, X)
    assert p.shape == (3000,) and np.all((p > 0) & (p < 1))
    r = m.responsibilities(D, X)
    np.testing.assert_allclose(r.sum(1), 1.0)
    assert m.gate_weights(X).shape == (3000, 3)
    np.testing.assert_allclose(m.head_rewards(D), D @ m.coef_.T)
    assert abs(m.score(D, X) - np.mean(np.log(p))) < 1e-12
    assert m.n_features_in_ == 6 and m.gate_kind_ == "linear" and m.projection_ is None and m.fit_time_ > 0


def test_static_and_mlp_gates(small):
    D, X = small["delta"], small["prompt"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = MixtureBT(n_components=3, gate="static", n_init=1, max_iter=30, random_state=0).fit(D, X)
        s2 = MixtureBT(n_components=3, gate="static", n_init=1, max_iter=30, random_state=0).fit(D)
        mlp = MixtureBT(n_components=3, gate_hidden=8, n_init=1, max_iter=30, random_state=0).fit(D, X)
    assert s.gate_kind_ == "static" and s.gate_weights(None).shape == (1, 3)
    assert s2.init_used_ == "kmeans"
    np.testing.assert_allclose(s.predict_proba(D), s.predict_proba(D, X))
    assert mlp.gate_kind_ == "mlp" and mlp.gate_params_["hidden_coef"].shape == (8, 4)


def test_projection(small):
    D, X = small["delta"], small["prompt"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = MixtureBT(n_components=2, dim=3, n_init=1, max_iter=30, random_state=0).fit(D, X)
    assert m.projection_.shape == (3, 6) and m.coef_.shape == (2, 6)
    np.testing.assert_allclose(m.coef_, m.coef_fit_ @ m.projection_)
    np.testing.assert_allclose(m.projection_ @ m.projection_.T, np.eye(3), atol=1e-5)  # rows orthonormal


def test_collapse_detected():
    # one true head, static gate, entropy bonus keeps pi uniform: small random initial heads give near-uniform
    # responsibilities and both heads converge to the single-BT solution (the failure mode to detect)
    d = make_mixture(n=4000, d=5, p=3, k=1, seed=0)
    m = MixtureBT(n_components=2, gate="static", alpha=0.5, l2=1e-3, n_init=1, init="random", random_state=0)
    with pytest.warns(UserWarning, match="collapsed"):
        m.fit(d["delta"])
    assert m.collapsed_pairs_ == [(0, 1)]
    assert collapsed_pairs(np.array([[1.0, 0, 0], [0.0, 1, 0], [2.0, 0.01, 0]])) == [(0, 2)]


def test_adamw_lowers_objective(small):
    D, X = small["delta"], small["prompt"]
    m = MixtureBT(n_components=3, solver=AdamWSolver(epochs=2, init_m_steps=2), n_init=1, random_state=0)
    m.fit(D, X)
    h = m.objective_history_
    assert h[-1] < h[0] - 1e-3
    assert abs(m.objective_ - m.objective(D, X)) < 1e-9


def test_bad_inputs(small):
    D, X = small["delta"], small["prompt"]
    m = MixtureBT(n_components=3, n_init=1, max_iter=5)
    bad = D.copy()
    bad[17, 2] = np.nan
    with pytest.raises(ValueError, match="first bad row: 17"):
        m.fit(bad, X)
    bad[17, 2] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        m.fit(bad, X)
    with pytest.raises(ValueError, match="prompt features"):
        m.fit(D)
    with pytest.raises(ValueError, match="rows"):
        m.fit(D, X[:-1])
    with pytest.raises(ValueError, match="empty"):
        m.fit(np.zeros((0, 6)), np.zeros((0, 4)))
    with pytest.raises(ValueError, match="larger than the number of pairs"):
        MixtureBT(n_components=5).fit(D[:3], X[:3])
    with pytest.raises(NotFittedError):
        m.predict_proba(D, X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.fit(D, X)
    with pytest.raises(ValueError, match="7 features but the model was fitted with 6"):
        m.predict_proba(np.zeros((2, 7)), X[:2])
    with pytest.raises(ValueError, match="prompt has 5 features"):
        m.predict_proba(D[:2], np.zeros((2, 5)))
    with pytest.raises(ValueError, match="features"):
        m.head_rewards(np.zeros((2, 7)))
    with pytest.raises(InvalidParameterError, match="'gate' parameter of MixtureBT must be"):
        MixtureBT(gate="nope").fit(D, X)


@pytest.mark.parametrize(
    "param",
    [
        {"alpha": float("nan")},
        {"l2": float("inf")},
        {"tol": float("nan")},
        {"alpha": float("-inf")},
        {"n_components": 0},
        {"alpha": -1.0},
        {"solver": "sgd"},
        {"solver": AdamWSolver(lr=0.0)},
        {"solver": EMSolver(accept="x")},
        {"dim": 0},
        {"holdout": 1.0},
        {"calibrate": "maybe"},
        {"l2": "strong"},
    ],
)
def test_invalid_parameters_are_refused_at_fit(small, param):
    """alpha=nan used to fit a NaN model that reported converged_ = True; accept="x" silently acted as "L".
    Solver fields fail like the estimator's own parameters (one error class for the CLI boundary and callers)."""
    with pytest.raises(InvalidParameterError, match="must be"):
        MixtureBT(**{"n_components": 3, "n_init": 1, "max_iter": 5, **param}).fit(small["delta"], small["prompt"])


def test_scikit_learn_estimator_protocol(small):
    m = MixtureBT(n_components=3, l2=1e-3, solver=EMSolver(screen_iter=5))
    c = clone(m)
    assert c is not m and c.get_params()["l2"] == 1e-3 and c.solver == m.solver and c.solver is not m.solver
    c.set_params(n_components=2, alpha=0.1)
    assert c.n_components == 2 and c.alpha == 0.1 and m.n_components == 3
    with pytest.raises(InvalidParameterError):
        MixtureBT(n_components=0).fit(small["delta"], small["prompt"])
    for method in ("predict_proba", "responsibilities", "score", "log_odds"):
        with pytest.raises(NotFittedError):
            getattr(MixtureBT(), method)(small["delta"], small["prompt"])
    with pytest.raises(NotFittedError):
        MixtureBT().gate_weights(small["prompt"])


def test_non_finite_objective_is_an_error_not_convergence(small, monkeypatch):
    """Even past the parameter checks, EM never reports a NaN objective as converged."""
    m = MixtureBT(n_components=3, n_init=1, max_iter=20, alpha=float("nan"), random_state=0)
    monkeypatch.setattr(m, "_validate_params", lambda: None)
    with pytest.raises(ValueError, match=r"the objective became non-finite \(nan\)"):
        m.fit(small["delta"], small["prompt"])


def test_pairs_with_a_zero_difference_are_left_out_of_the_fit(small):
    """Pairs whose chosen and rejected features are identical carry no preference: the fit with them equals the
    fit without them (counted in n_identical_), for the default L2 search and a fixed L2."""
    D, X = small["delta"][:600], small["prompt"][:600]
    g = np.arange(600)
    Dz = np.vstack([D[:300], np.zeros((7, D.shape[1])), D[300:]])
    Xz = np.vstack([X[:300], X[:7], X[300:]])
    gz = np.concatenate([g[:300], 1000 + np.arange(7), g[300:]])
    for kw in ({}, {"l2": 1e-3}):
        ref = MixtureBT(n_components=3, n_init=1, max_iter=30, random_state=0, **kw).fit(D, X, groups=g)
        m = MixtureBT(n_components=3, n_init=1, max_iter=30, random_state=0, **kw).fit(Dz, Xz, groups=gz)
        assert m.n_identical_ == 7 and ref.n_identical_ == 0
        np.testing.assert_allclose(m.coef_, ref.coef_, atol=1e-6)
        np.testing.assert_allclose(m.predict_proba(D, X), ref.predict_proba(D, X), atol=1e-6)
        np.testing.assert_allclose(m.predict_proba(Dz[300:307], Xz[300:307]), 0.5, atol=1e-12)


def test_all_zero_differences_are_an_error_naming_the_cause(small):
    X = small["prompt"][:50]
    for K in (1, 3):
        with pytest.raises(ValueError, match="all 50 pairs have identical chosen and rejected features"):
            MixtureBT(n_components=K, n_init=1, max_iter=5).fit(np.zeros((50, 6)), X)
