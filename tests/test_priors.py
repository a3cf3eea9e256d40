"""heads/priors.py: head-weight priors and their per-fold refits."""

from __future__ import annotations

import numpy as np
import pytest

from heads.hyre import hyre_weights
from heads.priors import fold_priors, prior_logits, prior_weights


def test_prior_weights_and_logits():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((30, 4))
    z[:, 2] += 2.0  # head 2 fits these pairs best
    np.testing.assert_array_equal(prior_weights("none", z), np.zeros(4))
    np.testing.assert_array_equal(prior_weights("best", z), np.eye(4)[2])
    np.testing.assert_allclose(prior_weights("hyre", z), hyre_weights(z))
    assert prior_weights("gate", z) is None
    f = rng.dirichlet(np.ones(4), size=30)
    np.testing.assert_allclose(prior_logits(z, None, f), (f * z).sum(axis=1))
    np.testing.assert_allclose(prior_logits(z, np.eye(4)[1]), z[:, 1])
    with pytest.raises(ValueError, match="unknown prior"):
        prior_weights("oracle", z)


def test_fold_priors_refit_without_each_fold():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((20, 3))
    folds = [np.arange(0, 10), np.arange(10, 20)]
    out = fold_priors(["hyre", "gate"], z, folds, gate=np.full((20, 3), 1 / 3))
    assert out["hyre"].shape == (3, 20)
    np.testing.assert_allclose(out["hyre"][0], z @ hyre_weights(z[10:]))  # fitted on the other fold
    np.testing.assert_allclose(out["hyre"][1], z @ hyre_weights(z[:10]))
    np.testing.assert_allclose(out["hyre"][2], z @ hyre_weights(z))
    np.testing.assert_allclose(out["gate"], np.tile(z.mean(axis=1), (3, 1)))
