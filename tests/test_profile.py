"""Per-user Hedge profile (heads/profile.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from heads.profile import HedgeProfile


def _hand_loop(prior, Z, tau):
    w = np.asarray(prior, dtype=float) / np.sum(prior)
    out = []
    for z in Z:
        w = w * np.exp(-np.log1p(np.exp(-z)) / tau)  # w <- w exp(-L_k / tau), L = -log sigma(z)
        w = w / w.sum()
        out.append(w.copy())
    return out


def test_concentrates_on_the_head_that_gets_pairs_right():
    rng = np.random.default_rng(0)
    Z = rng.normal(scale=0.5, size=(12, 4)) - 2.0  # heads 0, 1, 3 wrong on every pair
    Z[:, 2] = 2.0 + rng.random(12)  # only head 2 right
    p = HedgeProfile()
    assert p.n_heads is None
    p.update(Z[:6])
    assert p.n_seen_ == 6 and p.weights_.argmax() == 2 and p.weights_[2] > 0.99
    np.testing.assert_allclose(p.weights_.sum(), 1.0)
    # a single pair moves but does not collapse the default profile
    q = HedgeProfile(n_heads=4).update(Z[0])
    assert 0.5 < q.weights_[2] < 0.999 and q.weights_.min() > 1e-3


def test_sequential_formula_matches_hand_loop_and_order():
    rng = np.random.default_rng(1)
    Z = rng.normal(scale=3.0, size=(25, 3))
    prior = np.array([0.2, 0.5, 0.3])
    for tau in (1.0, 0.3):
        p = HedgeProfile(tau=tau, prior=prior)
        ref = _hand_loop(prior, Z, tau)
        for t in range(len(Z)):  # one pair at a time: every intermediate state
            p.update(Z[t])
            np.testing.assert_allclose(p.weights_, ref[t], rtol=1e-10, atol=1e-300)
        batch = HedgeProfile(tau=tau, prior=prior).update(Z)  # rows processed in stream order
        np.testing.assert_allclose(batch.weights_, ref[-1], rtol=1e-10)
    # the state after a prefix depends on which pairs came first
    a = HedgeProfile(prior=prior).update(Z[:3]).weights_
    b = HedgeProfile(prior=prior).update(Z[::-1][:3]).weights_
    assert not np.allclose(a, b)


def test_prior_and_labels():
    p = HedgeProfile(prior=[2.0, 1.0, 1.0])
    np.testing.assert_allclose(p.weights_, [0.5, 0.25, 0.25])
    z = np.array([[1.0, -2.0, 0.5], [0.3, 3.0, -1.0]])
    a = HedgeProfile(n_heads=3).update(z, labels=[1, 0])
    b = HedgeProfile(n_heads=3).update(np.array([z[0], -z[1]]))
    np.testing.assert_allclose(a.weights_, b.weights_)
    np.testing.assert_allclose(p.predict_proba(z), (1 / (1 + np.exp(-z))) @ p.weights_)
    with pytest.raises(ValueError):
        HedgeProfile(tau=0)
    with pytest.raises(ValueError):
        HedgeProfile(prior=[1.0, -1.0])
    with pytest.raises(ValueError, match="K = 2"):
        p.update(np.zeros((1, 2)))
    with pytest.raises(ValueError, match="NaN"):
        p.update(np.array([np.nan, 0.0, 0.0]))
    with pytest.raises(ValueError):
        _ = HedgeProfile().weights_


def test_learning_curve():
    rng = np.random.default_rng(2)
    K = 3
    stream = rng.normal(size=(8, K)) - 1.0
    stream[:, 1] = 2.0
    held = rng.normal(size=(200, K)) - 1.0
    held[:, 1] = np.abs(rng.normal(size=200)) + 0.1
    p = HedgeProfile(n_heads=K)
    curve = p.learning_curve(stream, held)
    assert curve.shape == (9,) and p.n_seen_ == 0  # runs on a copy
    np.testing.assert_allclose(p.weights_, 1 / K)
    assert curve[0] < 0.5 and curve[-1] == 1.0
    # each point = accuracy of the profile after t pairs
    for t in (0, 1, 4, 8):
        q = HedgeProfile(n_heads=K).update(stream[:t]) if t else HedgeProfile(n_heads=K)
        assert curve[t] == np.mean(q.predict_proba(held) > 0.5)
    # labels: flipping a held-out pair and its label leaves accuracy unchanged
    flip = np.where(np.arange(200)[:, None] % 2 == 0, held, -held)
    lab = (np.arange(200) % 2 == 0).astype(int)
    np.testing.assert_allclose(p.learning_curve(stream, flip, heldout_labels=lab), curve)


def test_to_dict_from_dict_round_trip():
    rng = np.random.default_rng(3)
    p = HedgeProfile(tau=0.5, prior=[0.1, 0.6, 0.3])
    p.update(rng.normal(scale=2.0, size=(5, 3)))
    p.update(np.array([[900.0, -900.0, 0.0]]))  # head 1's weight underflows to 0
    d = json.loads(json.dumps(p.to_dict(), allow_nan=False))  # strictly JSON-able
    assert d["kind"] == "hedge" and d["n_seen"] == 6 and d["tau"] == 0.5 and len(d["weights"]) == 3
    q = HedgeProfile.from_dict(d)
    np.testing.assert_array_equal(q.log_weights_, p.log_weights_)
    np.testing.assert_array_equal(q.prior, p.prior)
    assert q.n_seen_ == p.n_seen_ and q.tau == p.tau
    z = rng.normal(size=(4, 3))
    p.update(z), q.update(z)
    np.testing.assert_array_equal(q.log_weights_, p.log_weights_)
    # a zero-prior head is excluded (-inf) and survives the round trip as null
    r = HedgeProfile(prior=[0.0, 1.0]).update(np.array([1.0, 2.0]))
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert d["log_weights"][0] is None
    np.testing.assert_array_equal(HedgeProfile.from_dict(d).weights_, r.weights_)
    # weights-only dict (hand-written profile)
    s = HedgeProfile.from_dict({"tau": 1.0, "weights": [1, 3], "n_seen": 0})
    np.testing.assert_allclose(s.weights_, [0.25, 0.75])
