"""Stage-2 router (heads/router.py): soft labels, fit from the Stage-1 gate, synthetic routing, draw_budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import logsumexp, softmax

from heads.defaults import TAU_PAPER
from heads.gate import gate_weights as gate_weights_np
from heads.gate import init_gate_params
from heads.router import Router, draw_budget, per_head_losses, router_soft_labels


def _sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def make_routing_data(n_per_group=400, seed=0, K=3, d=8, s=3.0, c=0.8, feat="onehot", p=32, noise=0.3):
    """K orthogonal-ish heads; group g's pairs differ mainly along attribute g, and the other attributes
    trade off against it (c > 0), so only head g orders group g's pairs well and uniform mixing fails.
    Returns head logits z (N, K) with Delta = winner - loser, groups (N,), context features (N, p)."""
    rng = np.random.default_rng(seed)
    U = np.linalg.qr(rng.standard_normal((d, K)))[0].T
    W = s * (U + 0.05 * rng.standard_normal(U.shape))
    cents = rng.standard_normal((K, p))
    cents /= np.linalg.norm(cents, axis=1, keepdims=True)
    Z, G, C = [], [], []
    for g in range(K):
        a = 0.1 * rng.standard_normal((n_per_group, K))
        a[:, g] = rng.standard_normal(n_per_group)
        a[:, [k for k in range(K) if k != g]] -= c * a[:, [g]]
        delta = a @ U + 0.1 * rng.standard_normal((n_per_group, d))
        first_wins = rng.random(n_per_group) < _sig(10.0 * a[:, g])
        delta[~first_wins] *= -1.0
        Z.append(delta @ W.T)
        G.append(np.full(n_per_group, g))
        if feat == "onehot":  # one-hot group + noise
            x = np.eye(K)[np.full(n_per_group, g)] + noise * rng.standard_normal((n_per_group, K))
        else:  # unit-norm "sentence embedding" around a group centre
            x = cents[g] + 3 * noise * rng.standard_normal((n_per_group, p)) / np.sqrt(p)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
        C.append(x)
    return np.concatenate(Z), np.concatenate(G), np.concatenate(C)


# ------------------------------------------------------------------------------ soft labels


def test_soft_labels_match_direct_formula():
    rng = np.random.default_rng(0)
    z = rng.normal(scale=3.0, size=(50, 4))
    log_f = np.log(softmax(rng.normal(size=(50, 4)), axis=1))
    tau = 0.7  # moderate tau: the naive product formula is still representable
    naive = np.exp(log_f) * np.exp(-np.log1p(np.exp(-z)) / tau)
    naive /= naive.sum(1, keepdims=True)
    np.testing.assert_allclose(router_soft_labels(log_f, z, tau), naive, rtol=1e-10, atol=1e-14)


def test_soft_labels_stable_tiny_tau_large_losses():
    rng = np.random.default_rng(1)
    z = rng.normal(scale=40.0, size=(200, 5))
    z[0] = [-300.0, -250.0, -400.0, -260.0, -251.0]  # every head badly wrong: losses ~ 250..400
    log_f = np.log(softmax(rng.normal(size=(200, 5)), axis=1))
    tau = 1e-3
    om = router_soft_labels(log_f, z, tau)
    assert np.all(np.isfinite(om))
    np.testing.assert_allclose(om.sum(1), 1.0, atol=1e-12)
    # direct log-space formula
    L = np.logaddexp(0.0, -z)
    a = log_f - L / tau
    ref = np.exp(a - logsumexp(a, axis=1, keepdims=True))
    np.testing.assert_allclose(om, ref, rtol=1e-12, atol=1e-300)
    assert om[0].argmax() == 1  # smallest loss wins when tau is tiny
    # the naive product would underflow to 0/0 here
    with np.errstate(all="ignore"):
        naive = np.exp(log_f[0]) * np.exp(-L[0] / tau)
        assert not np.isfinite((naive / naive.sum())).all()
    np.testing.assert_allclose(per_head_losses(np.array([[-1000.0, 1000.0]])), [[1000.0, 0.0]])


# ------------------------------------------------------------------------------ fit mechanics


def _reference_fit(z, X, params, tau, epochs, bs, lr, seed):
    """Independent Algorithm-1 loop: labels from the current gate at each epoch start, Adam on minibatches."""
    rng = np.random.default_rng(seed)
    W = torch.tensor(params["coef"], requires_grad=True)
    b = torch.tensor(params["intercept"], requires_grad=True)
    opt = torch.optim.Adam([W, b], lr=lr)
    Xt = torch.tensor(X)
    L = np.logaddexp(0.0, -z)
    for _ in range(epochs):
        with torch.no_grad():
            logf = torch.log_softmax(Xt @ W.T + b, 1).numpy()
        a = logf - L / tau
        om = torch.tensor(np.exp(a - logsumexp(a, axis=1, keepdims=True)))
        perm = rng.permutation(len(z))
        for s in range(0, len(z), bs):
            i = torch.tensor(perm[s : s + bs])
            loss = -(om[i] * torch.log_softmax(Xt[i] @ W.T + b, 1)).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return W.detach().numpy(), b.detach().numpy()


def test_fit_matches_reference_algorithm():
    z, G, C = make_routing_data(n_per_group=30, seed=3, feat="emb", p=8)
    init = init_gate_params("linear", 3, 8, scale=0.5, rng=np.random.default_rng(1))
    threads = torch.get_num_threads()
    r = Router(tau=0.3, epochs=3, batch_size=16, lr=0.05, random_state=7).fit(z, C, init)
    assert torch.get_num_threads() == threads  # fit restores torch's thread setting
    torch.set_num_threads(1)  # tiny ops: threads only slow the reference down
    try:
        W, b = _reference_fit(z, C, init, 0.3, 3, 16, 0.05, 7)
        W1, _ = _reference_fit(z, C, init, 0.3, 1, 16, 0.05, 7)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(r.gate_params_["coef"], W, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(r.gate_params_["intercept"], b, rtol=1e-9, atol=1e-12)
    assert len(r.loss_history_) == 3 and r.gate_kind_ == "linear"
    assert not np.allclose(W, W1)


@pytest.mark.parametrize("kind", ["linear", "mlp", "static"])
def test_epochs0_returns_init_gate_exactly(kind):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(20, 4))
    X = rng.normal(size=(20, 6))
    init = init_gate_params(kind, 4, 6, hidden=5, scale=1.0, rng=rng)
    before = {k: v.copy() for k, v in init.items()}
    r = Router(epochs=0).fit(z, X, init, gate_kind=kind)
    np.testing.assert_array_equal(r.gate_weights(X), gate_weights_np(init, X, n_rows=20))
    assert r.loss_history_ == []
    # a copy: training does not touch the caller's dict
    r2 = Router(epochs=2).fit(z, X, init)
    for k in init:
        np.testing.assert_array_equal(init[k], before[k])
        assert r2.gate_params_[k] is not init[k]


def test_deterministic_given_random_state():
    z, G, C = make_routing_data(n_per_group=40, seed=1, feat="emb")
    init = init_gate_params("mlp", 3, C.shape[1], hidden=8, rng=np.random.default_rng(0))
    a = Router(random_state=5).fit(z, C, init).gate_params_
    b = Router(random_state=5).fit(z, C, init).gate_params_
    c = Router(random_state=6).fit(z, C, init).gate_params_
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert any(not np.array_equal(a[k], c[k]) for k in a)


def test_static_router_learns_global_frequency():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(300, 3))
    z[:240, 1] = 20.0  # head 1 is best on exactly 80 % of pairs
    z[240:, 1] = -20.0
    r = Router(epochs=30, lr=0.1, tau=TAU_PAPER).fit(z, None, {"logits": np.zeros(3)})
    w = r.gate_weights(None, n_rows=1)[0]
    assert abs(w[1] - 0.8) < 0.05
    assert r.predict_proba(z[:5], None).shape == (5,)


def test_validation_errors():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(10, 3))
    X = rng.normal(size=(10, 4))
    init = init_gate_params("linear", 3, 4)
    with pytest.raises(ValueError, match="rows"):
        Router().fit(z, X[:9], init)
    with pytest.raises(ValueError, match="NaN"):
        Router().fit(np.where(np.eye(10, 3) > 0, np.nan, z), X, init)
    with pytest.raises(ValueError, match="NaN"):
        Router().fit(z, np.where(np.eye(10, 4) > 0, np.inf, X), init)
    with pytest.raises(ValueError, match="empty"):
        Router().fit(np.zeros((0, 3)), np.zeros((0, 4)), init)
    with pytest.raises(ValueError, match="K = 2"):
        Router().fit(z[:, :2], X, init)
    with pytest.raises(ValueError, match="p = 4"):
        Router().fit(z, X[:, :3], init)
    with pytest.raises(ValueError, match="does not match"):
        Router().fit(z, X, init, gate_kind="mlp")
    with pytest.raises(ValueError, match="needs"):
        Router().fit(z, None, init)
    with pytest.raises(ValueError, match="tau"):
        Router(tau=0).fit(z, X, init)
    with pytest.raises(ValueError, match="not fitted"):
        Router().gate_weights(X)
    r = Router(epochs=1).fit(z, X, init)
    with pytest.raises(ValueError, match="K = 2"):
        r.predict_proba(z[:, :2], X)
    with pytest.raises(ValueError, match="rows"):
        r.predict_proba(z, X[:5])


# ------------------------------------------------------------------------------ synthetic routing


@pytest.mark.parametrize("feat,kind,epochs", [("emb", "linear", 10), ("emb", "mlp", 10), ("onehot", "linear", 30)])
def test_synthetic_routing_recovers_group_heads(feat, kind, epochs):
    K = 3
    # one-hot + noise (p = 3) needs more Adam steps at the default lr than embedding-like features (p = 32)
    z, G, C = make_routing_data(n_per_group=400, seed=0, feat=feat, noise=0.2 if feat == "onehot" else 0.3)
    idx, short = draw_budget(G, 50, np.random.default_rng(0))
    assert short == {} and len(idx) == 150
    held = np.setdiff1d(np.arange(len(G)), idx)
    init = init_gate_params(kind, K, C.shape[1], hidden=32, rng=np.random.default_rng(0))  # uniform gate
    np.testing.assert_allclose(gate_weights_np(init, C), 1.0 / K)
    lr = 1e-2 if kind == "mlp" else 3e-2
    r = Router(epochs=epochs, lr=lr, tau=TAU_PAPER).fit(z[idx], C[idx], init)
    assert r.loss_history_[-1] < r.loss_history_[0]
    zt, Gt, Ct = z[held], G[held], C[held]
    F = r.gate_weights(Ct)
    np.testing.assert_allclose(F.sum(1), 1.0)
    for g in range(K):
        m = Gt == g
        assert F[m, g].mean() >= 0.8, (g, F[m].mean(0))
        routed = (r.predict_proba(zt[m], Ct[m]) > 0.5).mean()
        best = max((zt[m, k] > 0).mean() for k in range(K))
        uniform = (_sig(zt[m]).mean(1) > 0.5).mean()
        assert routed >= best - 0.02, (g, routed, best)
        assert routed >= uniform + 0.3, (g, routed, uniform)


# ------------------------------------------------------------------------------ draw_budget


def test_draw_budget_counts_short_groups_and_determinism():
    groups = np.array(["a"] * 10 + ["b"] * 3 + ["c"] * 7 + ["d"] * 5)
    rng_groups = np.random.default_rng(0).permutation(groups)
    idx, short = draw_budget(rng_groups, 5, np.random.default_rng(1))
    assert short == {"b": 3}
    vals, counts = np.unique(rng_groups[idx], return_counts=True)
    assert dict(zip(vals.tolist(), counts.tolist())) == {"a": 5, "b": 3, "c": 5, "d": 5}
    assert len(np.unique(idx)) == len(idx) and np.all(np.diff(idx) > 0)
    idx2, _ = draw_budget(rng_groups, 5, np.random.default_rng(1))
    np.testing.assert_array_equal(idx, idx2)
    idx3, _ = draw_budget(rng_groups, 5, 1)  # int seed == Generator with that seed
    np.testing.assert_array_equal(idx, idx3)
    assert any(not np.array_equal(idx, draw_budget(rng_groups, 5, s)[0]) for s in range(2, 6))
    # budget above every group: everything, all short except the exact fit
    idx_all, short_all = draw_budget(rng_groups, 10, 0)
    np.testing.assert_array_equal(idx_all, np.arange(len(groups)))
    assert short_all == {"b": 3, "c": 7, "d": 5}
    with pytest.raises(ValueError):
        draw_budget(groups, 0, 0)
    with pytest.raises(ValueError):
        draw_budget(np.array([]), 3, 0)
    ig, s = draw_budget(np.array([2, 2, 1, 1, 1]), 2, 0)
    assert s == {} and len(ig) == 4 and isinstance(next(iter(draw_budget(np.array([2, 1]), 2, 0)[1])), int)
