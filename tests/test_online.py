"""heads/online.py: the online profile is never worse than its prior beyond noise, and learns what the heads
cannot express (synthetic users, d = 2,048)."""

from __future__ import annotations

import numpy as np
import pytest

from _users import P_CTX, World, accuracy
from heads.adapt import block_features, block_scales, pca_basis
from heads.gate import gate_weights
from heads.online import OnlineProfile
from heads.profile import HedgeProfile


@pytest.fixture(scope="module")
def world():
    w = World()
    pop = w.population(2000)
    P = pca_basis(pop, 16)
    return w, P, block_scales(block_features(pop, np.zeros(len(pop)), None, P))


def stream(w, P, scales, head, context, n=120, checkpoints=(10, 30, 60, 120)):
    D, X = w.pairs(head, n, context, seed=21)
    Dt, _ = w.pairs(head, 1500, context, seed=22)
    zt = Dt @ w.W.T
    prof = OnlineProfile(gate_weights(w.gate, X).mean(axis=0), scales, P, n_heads=4)
    curve = []
    for t in range(n):
        prof.update(D[t], D[t] @ w.W.T)
        if t + 1 in checkpoints:
            curve.append(
                (accuracy(prof.predict_proba(Dt, zt)), accuracy(prof.predict_proba(Dt, zt, "prior")), prof.served_)
            )
    return prof, curve, (D, Dt)


def test_never_worse_than_the_prior_when_the_heads_fit_the_user(world):
    w, P, scales = world
    prof, curve, _ = stream(w, P, scales, w.W[2], w.C[2] / 2)
    for served_acc, prior_acc, served in curve:
        assert served_acc >= prior_acc - 0.01, curve
    assert prof.served_ == "prior"
    L = {k: float(np.sum(v)) for k, v in prof.losses_.items()}
    assert all(L["prior"] <= L[k] for k in prof.experts)  # the residuals only add variance here


def test_learns_a_user_outside_the_span_and_switches(world):
    w, P, scales = world
    prof, curve, (D, Dt) = stream(w, P, scales, w.outside, np.zeros(P_CTX))
    served_acc, prior_acc, served = curve[-1]
    assert served.startswith("residual") and served_acc > prior_acc + 0.15, curve
    assert curve[0][0] >= curve[0][1] - 0.05  # early on, not worse beyond noise
    # the served model exported for scoring: reward = head_weights . r + v . phi (MAP logits)
    model = prof.served_model()
    z = Dt @ w.W.T
    e = prof.experts[served]
    p_map = e.predict(Dt, prof.prior_logits(z), moderated=False)
    np.testing.assert_allclose(p_map, 1 / (1 + np.exp(-(z @ model["head_weights"] + Dt @ model["v"]))), rtol=1e-8)
    assert model["rule"] == "logit" and prof.n_seen_ == 120


def test_prequential_losses_are_predictions_before_each_update(world):
    w, P, scales = world
    D, X = w.pairs(w.outside, 4, np.zeros(P_CTX), seed=23)
    prior = gate_weights(w.gate, X).mean(axis=0)
    prof = OnlineProfile(prior, scales, P).update(D, D @ w.W.T)
    hedge = HedgeProfile(prior=prior)
    for t in range(4):
        z = (D[t] @ w.W.T)[None]
        assert prof.losses_["prior"][t] == pytest.approx(-np.log(hedge.predict_proba(z)[0]))
        hedge.update(z)
    np.testing.assert_allclose(prof.hedge.weights_, hedge.weights_)
    assert prof.losses_["residual-small"][0] == pytest.approx(-np.log(1 / (1 + np.exp(-(D[0] @ w.W.T @ prior)))))
    forced = OnlineProfile(prior, scales, P, force="residual").update(D, D @ w.W.T)
    assert forced.served_.startswith("residual")
