"""heads/user.py: UserAdapter on synthetic new users with a known truth (LLM width, d = 2,048)."""

from __future__ import annotations

import numpy as np
import pytest

from _users import P_CTX, World, accuracy, accuracy_logit
from heads.adapt import pca_basis
from heads.baselines import fit_single_bt
from heads.gate import gate_weights

ROUTER = {"tau": 1.0, "epochs": 10, "lr": 3e-2}


@pytest.fixture(scope="module")
def world():
    w = World()
    return w, pca_basis(w.population(), 16)


def fit(w, P, head, B, context, adapt="auto", seed=1):
    D, X = w.pairs(head, B, context, seed=seed)
    from heads.user import UserAdapter

    return UserAdapter(adapt=adapt, router=ROUTER).fit(D, w.W, w.gate, X, X, pca=P)


def test_user_in_the_span_is_served_as_well_as_by_routing(world):
    w, P = world
    for context in (w.C[2] / 2, np.zeros(P_CTX)):  # the gate already knows the user / is undecided
        Dt, Xt = w.pairs(w.W[2], 2000, context, seed=11)
        auto = fit(w, P, w.W[2], 50, context)
        routing = fit(w, P, w.W[2], 50, context, adapt="mixture")
        assert accuracy(auto.predict_proba(Dt, w.W, Xt, Xt)) >= accuracy(routing.predict_proba(Dt, w.W, Xt, Xt)) - 0.01
    assert fit(w, P, w.W[2], 50, w.C[2] / 2).choice_ == "mixture"  # nothing to gain: routing is kept


def test_user_outside_the_span_approaches_a_head_fitted_on_all_their_data(world):
    w, P = world
    ctx = np.zeros(P_CTX)
    Dt, Xt = w.pairs(w.outside, 2000, ctx, seed=12)
    Dall = w.pairs(w.outside, 4000, ctx, seed=13)[0]
    full = max(accuracy_logit(Dt @ fit_single_bt(Dall, l2)) for l2 in (1e-4, 1e-3, 1e-2, 1e-1))  # best L2 on test
    routing = accuracy(fit(w, P, w.outside, 50, ctx, adapt="mixture").predict_proba(Dt, w.W, Xt, Xt))
    accs = {}
    for B in (50, 300):
        ua = fit(w, P, w.outside, B, ctx)
        assert ua.choice_ == "residual"
        accs[B] = accuracy(ua.predict_proba(Dt, w.W, Xt, Xt))
    assert routing < 0.56 and full > 0.7, (routing, full)  # the heads cannot express this user; a head can
    assert routing + 0.05 < accs[50] < accs[300]
    gap = {B: full - a for B, a in accs.items()}
    assert gap[300] < gap[50] / 3 and gap[300] < 0.05, (accs, full)


def test_exported_user_model_is_the_decision_rule(world):
    w, P = world
    ctx = np.zeros(P_CTX)
    ua = fit(w, P, w.outside, 80, ctx, adapt="residual")
    Dt, Xt = w.pairs(w.outside, 50, ctx, seed=14)
    z = Dt @ w.W.T
    logit = ua.gate_multiplier_ * (gate_weights(ua.gate_params_, Xt) * z).sum(1) + z @ ua.head_weights_ + Dt @ ua.coef_
    np.testing.assert_allclose(ua.predict_proba(Dt, w.W, Xt, Xt), 1 / (1 + np.exp(-logit)), rtol=1e-10)
    assert ua.rule_ == "logit" and set(ua.cv_) == {"residual"}
    mix = fit(w, P, w.W[1], 40, w.C[1] / 2, adapt="mixture")
    f = gate_weights(mix.gate_params_, Xt)
    np.testing.assert_allclose(mix.predict_proba(Dt, w.W, Xt, Xt), (f / (1 + np.exp(-z))).sum(1), rtol=1e-10)
    assert mix.rule_ == "mixture" and not mix.coef_.size and mix.gate_multiplier_ == 1.0


def test_bad_parameters(world):
    w, P = world
    from heads.user import UserAdapter

    D, X = w.pairs(w.W[0], 10, np.zeros(P_CTX), seed=2)
    with pytest.raises(ValueError, match="adapt must be one of"):
        UserAdapter(adapt="span").fit(D, w.W, w.gate, X, X)
    with pytest.raises(ValueError, match="priors must be"):
        UserAdapter(priors=("oracle",)).fit(D, w.W, w.gate, X, X)
    with pytest.raises(ValueError, match="at least 2"):
        UserAdapter().fit(D[:1], w.W, w.gate, X[:1], X[:1])
