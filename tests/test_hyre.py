"""HyRe / MiCRo-HyRe baseline (heads/hyre.py)."""

from __future__ import annotations

import numpy as np
import pytest

from heads.hyre import gate_prior_fn, hyre_eval, hyre_predict_proba, hyre_weights


def _sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def make_group_data(n_per_group=120, K=3, seed=0, s=3.0, c=0.8):
    """Group g's pairs are ordered by head g (10 % label noise-ish); other heads trade off against it."""
    rng = np.random.default_rng(seed)
    Z, G = [], []
    for g in range(K):
        a = 0.4 * rng.standard_normal((n_per_group, K))
        a[:, g] = rng.standard_normal(n_per_group)
        a[:, [k for k in range(K) if k != g]] -= c * a[:, [g]]
        first_wins = rng.random(n_per_group) < _sig(5.0 * a[:, g])
        a[~first_wins] *= -1.0
        Z.append(s * a)
        G.append(np.full(n_per_group, g))
    return np.concatenate(Z), np.concatenate(G)


def test_weights_equal_closed_form_posterior():
    rng = np.random.default_rng(0)
    z = rng.normal(scale=2.0, size=(7, 4))
    prior = np.array([0.1, 0.2, 0.3, 0.4])
    for beta in (1.0, 0.5, 2.0):
        post = prior * np.prod(_sig(z), axis=0) ** beta
        np.testing.assert_allclose(hyre_weights(z, prior, beta), post / post.sum(), rtol=1e-10)
    u = np.prod(_sig(z), axis=0)
    np.testing.assert_allclose(hyre_weights(z), u / u.sum(), rtol=1e-10)
    np.testing.assert_allclose(hyre_weights(np.zeros((0, 4)), prior), prior)  # n = 0: the prior
    np.testing.assert_allclose(hyre_weights(z, prior, beta=0.0), prior)
    # stable with many confident pairs (the product underflows)
    big = rng.normal(scale=30.0, size=(5000, 4))
    w = hyre_weights(big)
    assert np.all(np.isfinite(w)) and abs(w.sum() - 1) < 1e-12
    np.testing.assert_allclose(hyre_predict_proba(z, w), _sig(z) @ w)
    with pytest.raises(ValueError):
        hyre_weights(z, prior[:3])
    with pytest.raises(ValueError):
        hyre_weights(np.full((2, 4), np.nan))


def test_picks_right_head_with_informative_pairs():
    z, G = make_group_data(seed=1)
    rng = np.random.default_rng(0)
    for g in range(3):
        rows = np.flatnonzero(G == g)
        hits = sum(hyre_weights(z[rng.choice(rows, 16, replace=False)]).argmax() == g for _ in range(20))
        assert hits >= 18, (g, hits)
    res = hyre_eval(z, G, n_per_group=16, seeds=range(5))
    assert set(res["per_group"]) == {0, 1, 2} and res["skipped"] == {}
    for g, v in res["per_group"].items():
        m = G == g
        best = (z[m, g] > 0).mean()
        uniform = (_sig(z[m]).mean(1) > 0.5).mean()
        assert v["n_eval"] == 120 - 16 and len(v["accs"]) == 5
        assert v["mean"] >= best - 0.03 and v["mean"] > uniform + 0.2, (g, v, best, uniform)
        assert v["std"] == pytest.approx(np.std(v["accs"]))


def test_micro_hyre_informative_prior_beats_uniform_at_small_n():
    z, G = make_group_data(seed=2, s=1.5)  # softer heads: 2 pairs alone leave the posterior spread
    rng = np.random.default_rng(5)
    # a Stage-1 gate that is right on average but noisy per row: 0.6 on the group's head
    F = np.full((len(G), 3), 0.2)
    F[np.arange(len(G)), G] = 0.6
    F = F * np.exp(0.3 * rng.standard_normal(F.shape))
    F /= F.sum(1, keepdims=True)
    seeds = range(10)
    uni = hyre_eval(z, G, n_per_group=2, seeds=seeds)
    mic = hyre_eval(z, G, n_per_group=2, seeds=seeds, prior_fn=gate_prior_fn(F))
    assert mic["macro_mean"] > uni["macro_mean"] + 0.02, (mic["macro_mean"], uni["macro_mean"])
    # a misleading prior (on the wrong head) must hurt: the prior is really used
    bad = hyre_eval(z, G, n_per_group=2, seeds=seeds, prior_fn=gate_prior_fn(np.roll(F, 1, axis=1)))
    assert bad["macro_mean"] < uni["macro_mean"]


def test_eval_same_adaptation_sets_and_skips_small_groups():
    z, G = make_group_data(n_per_group=30, seed=3)
    G = G.astype(object)
    G[:] = np.where(G == 0, "a", np.where(G == 1, "b", "c"))
    G[np.flatnonzero(G == "c")[3:]] = "b"  # group c keeps 3 pairs
    seen = []

    def prior_fn(idx):
        seen.append(np.asarray(idx).copy())
        return np.ones(3) / 3

    r1 = hyre_eval(z, G, n_per_group=4, seeds=(0, 1), prior_fn=prior_fn)
    first = list(seen)
    seen.clear()
    r2 = hyre_eval(z, G, n_per_group=4, seeds=(0, 1), prior_fn=prior_fn)
    for a, b in zip(first, seen):
        np.testing.assert_array_equal(a, b)
    assert all(len(a) == 4 for a in first) and len(first) == 4  # 2 groups x 2 seeds
    assert r1["skipped"] == {"c": 3} and set(r1["per_group"]) == {"a", "b"}
    assert r1["per_group"]["b"]["n_eval"] == 57 - 4
    # uniform prior given explicitly == no prior
    r3 = hyre_eval(z, G, n_per_group=4, seeds=(0, 1))

    def scalars(r):
        return {g: {k: v for k, v in d.items() if k not in ("probs", "rows")} for g, d in r["per_group"].items()}

    assert scalars(r3) == scalars(r1) == scalars(r2)
    # the probabilities of the scored pairs come back: their accuracy is "accs", their rows the group minus the
    # adaptation pairs (what micro eval's nll / ece use, without redoing the draws)
    for g, d in r1["per_group"].items():
        for i, (p, rows) in enumerate(zip(d["probs"], d["rows"])):
            np.testing.assert_array_equal(p, r3["per_group"][g]["probs"][i])
            assert float(np.mean(p > 0.5)) == d["accs"][i] and len(p) == len(rows) == d["n_eval"]
            adapt = first[list(r1["per_group"]).index(g) * 2 + i]
            assert sorted(set(rows) | set(adapt)) == np.flatnonzero(G == g).tolist() and not set(rows) & set(adapt)
    with pytest.raises(ValueError):
        hyre_eval(z, G[:-1])


def test_eval_scores_only_the_remaining_pairs():
    # 3 pairs, n = 2: exactly one pair is scored per seed, so each seed's accuracy is 0 or 1
    z = np.array([[5.0, 4.0], [5.0, 4.0], [-5.0, -4.0]])
    res = hyre_eval(z, np.zeros(3, dtype=int), n_per_group=2, seeds=range(8))
    v = res["per_group"][0]
    assert v["n_eval"] == 1 and set(v["accs"]) <= {0.0, 1.0} and 0.0 < v["mean"] < 1.0
