"""heads/adapt.py: ResidualBT (prior logit + block-Gaussian residual, CV-chosen), kfold, pca_basis."""

from __future__ import annotations

import numpy as np
import pytest

from _users import P_CTX, World, accuracy, accuracy_logit
from heads.adapt import ResidualBT, block_features, kfold, pca_basis
from heads.laplace import logsig


def test_kfold_partitions_and_keeps_groups_together():
    folds = kfold(23, 5, seed=1)
    assert len(folds) == 5 and sorted(np.concatenate(folds).tolist()) == list(range(23))
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    groups = np.repeat(np.arange(8), 3)  # 8 prompts x 3 pairs
    folds = kfold(24, 5, seed=0, groups=groups)
    fold_of = np.empty(24, int)
    for j, f in enumerate(folds):
        fold_of[f] = j
    assert all(len(set(fold_of[groups == g])) == 1 for g in range(8))
    assert len(kfold(4, 5, seed=0, groups=np.array([0, 0, 1, 1]))) == 2  # never more folds than groups


def test_pca_basis_recovers_the_latent_subspace():
    w = World()
    P = pca_basis(w.population(2000), 16)
    assert P.shape == (16, 2048)
    np.testing.assert_allclose(P @ P.T, np.eye(16), atol=1e-8)
    # every basis vector lies in the r = 32 dimensional latent span of the pair differences
    assert np.linalg.norm(P @ w.B, axis=1).min() > 0.99


def primal(D, m, P, var):
    """Independent MAP of logit = (1 + c) m + theta_p . (P Delta) + theta_i . Delta with the block priors."""
    blocks = block_features(D, m, None, P)
    cs = {k: float(np.mean(np.sum(X * X, axis=1))) for k, X in blocks.items()}
    cs["scale"] = 1.0
    keys = [k for k in ("scale", "pca", "iso") if var.get(k)]
    X = np.hstack([blocks[k] for k in keys])
    prec = np.concatenate([np.full(blocks[k].shape[1], cs[k] / var[k]) for k in keys])

    t = np.zeros(X.shape[1])
    for _ in range(20):  # Newton in the primal (a few thousand dims)
        p = np.exp(logsig(m + X @ t))
        grad = X.T @ (1 - p) - prec * t
        H = (X * (p * (1 - p))[:, None]).T @ X + np.diag(prec)
        step = np.linalg.solve(H, grad)
        t = t + step
        if np.abs(step).max() < 1e-12:
            break
    return m + X @ t


def test_one_candidate_equals_the_primal_map_and_folds_into_v():
    w = World()
    P = pca_basis(w.population(1500), 8)
    D, _ = w.pairs(w.outside, 60, np.zeros(P_CTX), seed=3)
    m = D @ w.W[1] * 0.3
    var = {"scale": 1.0, "pca": 3.0, "iso": 0.3}
    est = ResidualBT(grid={k: (v,) for k, v in var.items()}, calibrate=False).fit(D, {"head1": m}, pca=P)
    assert est.prior_ == "head1" and est.variances_ == {**var, "heads": 0.0}
    np.testing.assert_allclose(est.decision_function(D, m), primal(D, m, P, var), atol=1e-4)
    assert est.coef_.shape == (2048,) and list(est.prior_weights_) == ["head1"]


def test_cv_choice_prefers_the_residual_only_when_it_predicts_better():
    w = World()
    D, _ = w.pairs(w.outside, 150, np.zeros(P_CTX), seed=4)
    Dt, _ = w.pairs(w.outside, 1000, np.zeros(P_CTX), seed=5)
    P = pca_basis(w.population(), 16)
    wrong = D @ w.W[0]  # a head that knows nothing about this user
    est = ResidualBT().fit(D, {"head0": wrong}, pca=P)
    assert any(v for k, v in est.variances_.items() if k != "scale")
    assert est.cv_loglik_ > est.cv_priors_["head0"].mean() + 0.1
    assert accuracy(est.predict_proba(Dt, Dt @ w.W[0])) > 0.75
    # a user the prior already describes: the residual adds nothing measurable on held-out pairs
    D2, _ = w.pairs(w.W[0], 150, np.zeros(P_CTX), seed=6)
    Dt2, _ = w.pairs(w.W[0], 1000, np.zeros(P_CTX), seed=7)
    est2 = ResidualBT().fit(D2, {"head0": D2 @ w.W[0]}, pca=P)
    assert accuracy(est2.predict_proba(Dt2, Dt2 @ w.W[0])) >= accuracy_logit(Dt2 @ w.W[0]) - 0.01


def test_table_average_and_errors():
    w = World()
    D, _ = w.pairs(w.outside, 40, np.zeros(P_CTX), seed=8)
    est = ResidualBT(grid={"iso": (0.0, 1.0)}, combine="average").fit(D, {"none": np.zeros(40), "h": D @ w.W[2]})
    names = [(p, v["iso"]) for p, v, _ in est.cv_table_]
    assert ("none", 0.0) not in names  # "0.5 everywhere" is no candidate
    assert ("h", 0.0) in names and ("h", 1.0) in names and ("none", 1.0) in names
    assert est.candidate_weights_.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no candidate model"):
        ResidualBT(grid={"iso": (0.0,)}).fit(D, {"none": np.zeros(40)})
    with pytest.raises(ValueError, match="must be"):
        ResidualBT().fit(D, {"h": np.zeros(39)})
    with pytest.raises(ValueError, match="combine"):
        ResidualBT(combine="vote").fit(D, {"h": np.zeros(40)})
