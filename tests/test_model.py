"""pipeline.core.model.Model on a bundle fitted on AttrBackend features: what every stage asks of a fitted model.
(Embedding new user data with the bundle's embedder: tests/test_route.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from _stage2 import make_bundle, synthetic_rows
from pipeline.errors import MicroError


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("model")
    rows = synthetic_rows(n_per_group=40)
    return (
        root,
        make_bundle(root, rows, gate_input="context"),
        make_bundle(root, rows, name="static", baseline="static"),
    )


def test_model_on_a_run(bundles):
    from pipeline.core.model import Model
    from pipeline.core.run import Run

    root, gated, _ = bundles
    model = Model.load(gated)
    run = Run.load(root / "bundle_run")
    est = model.estimator
    assert model.gate_input == "context" and not model.static and model.n_heads == 3 == len(model.coef)
    np.testing.assert_allclose(model.head_logits(run), run.delta @ est.coef_.T)
    np.testing.assert_array_equal(model.gate_features(run), run.context)
    np.testing.assert_allclose(model.gate_weights(run), est.gate_weights(run.context))
    np.testing.assert_allclose(model.predict_proba(run), est.predict_proba(run.delta, run.context))
    model.check_run(run, "here")  # same embedder: no error
    with pytest.raises(MicroError, match="embedder"):
        model.check_run({"fingerprint_id": "other"}, "there")


def test_static_model_and_save_round_trip(bundles, tmp_path):
    from pipeline.core.model import Model
    from pipeline.core.run import Run

    root, _, static = bundles
    model = Model.load(static)
    run = Run.load(root / "static_run")
    assert model.static and model.gate_input == "none" and model.gate_features(run) is None
    w = model.gate_weights(run)
    assert w.shape == (run.n, 3) and np.allclose(w, w[0]) and np.allclose(w.sum(axis=1), 1)
    again = Model.load(model.save(tmp_path / "copy"))
    np.testing.assert_allclose(again.predict_proba(run), model.predict_proba(run), rtol=1e-6)
    assert {k: v for k, v in again.meta.items() if k != "fitted"} == {
        k: v for k, v in model.meta.items() if k != "fitted"
    }
