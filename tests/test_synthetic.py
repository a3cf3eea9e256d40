"""The synthetic mixture generator."""

import numpy as np

from heads import bayes_accuracy, make_mixture
from heads.gate import gate_weights
from heads.synthetic import split


def test_shapes_and_consistency():
    d = make_mixture(n=5000, d=7, p=4, k=3, seed=0)
    assert d["delta"].shape == (5000, 7) and d["prompt"].shape == (5000, 4)
    assert d["true_coef"].shape == (3, 7) and d["true_gate_params"]["coef"].shape == (3, 4)
    assert set(np.unique(d["groups"])) <= {0, 1, 2}
    f = gate_weights(d["true_gate_params"], d["prompt"])
    z = d["delta"] @ d["true_coef"].T
    np.testing.assert_allclose(d["bayes_proba"], np.sum(f / (1 + np.exp(-z)), axis=1))
    assert d["bayes_accuracy"] == bayes_accuracy(d) > 0.7
    # heads have norm `separation`; the generator is deterministic in the seed
    np.testing.assert_allclose(np.linalg.norm(d["true_coef"], axis=1), 4.0)
    e = make_mixture(n=5000, d=7, p=4, k=3, seed=0)
    np.testing.assert_array_equal(d["delta"], e["delta"])


def test_delta_is_winner_minus_loser():
    # with a near-deterministic single head, the winner is almost always the higher-reward side
    d = make_mixture(n=4000, d=5, p=2, k=1, seed=1, separation=50.0)
    z = d["delta"] @ d["true_coef"][0]
    assert np.mean(z > 0) > 0.97
    # the group's head predicts the label far better than the other heads
    d = make_mixture(n=8000, d=8, p=4, k=2, seed=2, shared=0.0, cluster_sep=6.0)
    own = np.einsum("ij,ij->i", d["delta"], d["true_coef"][d["groups"]])
    other = np.einsum("ij,ij->i", d["delta"], d["true_coef"][1 - d["groups"]])
    assert np.mean(own > 0) > np.mean(other > 0) + 0.2


def test_rank_mode_and_split():
    d = make_mixture(n=3000, d=40, p=30, k=3, seed=0, rank=5, dtype=np.float32)
    assert d["delta"].dtype == np.float32 and d["delta"].shape == (3000, 40)
    s = np.linalg.svd(d["delta"][:1000].astype(np.float64), compute_uv=False)
    assert s[4] > 5 * s[5]  # a 5-d signal plus small noise
    assert abs(bayes_accuracy(d) - d["bayes_accuracy"]) < 1e-12
    tr, te = split(d, 2000)
    assert tr["delta"].shape[0] == 2000 and te["groups"].shape[0] == 1000
    assert tr["true_coef"] is d["true_coef"]
