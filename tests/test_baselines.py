"""SharedBase (HyRe-style) and OracleBT baselines."""

import warnings

import numpy as np
import pytest

from heads import MixtureBT, OracleBT, SharedBase, accuracy, fit_single_bt, make_mixture
from heads.synthetic import split


@pytest.fixture(scope="module")
def data():
    return split(make_mixture(n=12000, d=10, p=6, k=3, seed=3, shared=0.0), 8000)


def test_shared_base_fits(data):
    tr, te = data
    m = SharedBase(n_components=4, prior_scale=1.0, l2=1e-3, random_state=0).fit(tr["delta"])
    assert m.coef_.shape == (4, 10)
    np.testing.assert_allclose(m.coef_, m.trainable_coef_ + m.prior_)
    p = m.predict_proba(te["delta"])
    assert p.shape == (4000,) and accuracy(p) > 0.55
    z = te["delta"] @ m.coef_.T
    np.testing.assert_allclose(p, np.mean(1 / (1 + np.exp(-z)), axis=1), atol=1e-12)
    np.testing.assert_allclose(m.head_rewards(te["delta"]), z)
    np.testing.assert_allclose(m.responsibilities(te["delta"]).sum(1), 1.0)
    assert m.gate_weights(None).shape == (1, 4)
    # with a strong L2 on the trainable part, the frozen priors keep the effective heads apart
    m2 = SharedBase(n_components=4, prior_scale=1.0, l2=0.1, random_state=0).fit(tr["delta"])
    U = m2.coef_ / np.linalg.norm(m2.coef_, axis=1, keepdims=True)
    assert (U @ U.T)[np.triu_indices(4, 1)].min() < 0.99
    with pytest.raises(ValueError, match="features"):
        m.predict_proba(np.zeros((2, 3)))


def test_oracle_beats_single_bt(data):
    tr, te = data
    o = OracleBT(l2=1e-3).fit(tr["delta"], tr["groups"])
    assert o.coef_.shape == (3, 10) and list(o.groups_) == [0, 1, 2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = MixtureBT(n_components=1, l2=1e-3).fit(tr["delta"])
    acc_o = accuracy(o.predict_proba(te["delta"], te["groups"]))
    acc_s = accuracy(s.predict_proba(te["delta"]))
    assert acc_o > acc_s + 0.05, (acc_o, acc_s)
    # each oracle head is the single BT fit on its group
    g0 = tr["groups"] == 0
    np.testing.assert_allclose(o.coef_[0], fit_single_bt(tr["delta"][g0], 1e-3), rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="unknown group"):
        o.predict_proba(te["delta"][:2], [0, 7])
    with pytest.raises(ValueError, match="rows"):
        o.fit(tr["delta"], tr["groups"][:-1])


def test_static_mixture_is_a_baseline(data):
    tr, te = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = MixtureBT(n_components=3, gate="static", n_init=1, max_iter=50, random_state=0).fit(tr["delta"])
    assert m.gate_kind_ == "static" and set(m.gate_params_) == {"logits"}
    assert m.predict_proba(te["delta"]).shape == (4000,)
