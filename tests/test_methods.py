"""The registry of adaptation methods (pipeline/route/methods.py): route, route --online and leave-group-out
eval dispatch through it, so a method registered there (and nowhere else) is usable by all of them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _stage2 import make_bundle, patch_backend, route_cli, synthetic_rows, write_table
from pipeline.errors import MicroError
from pipeline.route import methods as M


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    rows = [r for r in synthetic_rows(n_per_group=60, topic=True) if r["group"] != "g1"]
    bundle = make_bundle(root, rows, gate_input="context", k=2, n_init=1, max_iter=40)
    user = write_table(synthetic_rows(n_per_group=30, seed=3, prefix="u", test_frac=0.5), root / "user.parquet")
    return root, bundle, user


def test_registry_lists_the_methods():
    assert set(M.METHODS) >= {"auto", "mixture", "residual"}
    assert all(M.get(n, online=True).online for n in ("auto", "mixture", "residual"))
    with pytest.raises(MicroError, match="--adapt must be one of auto, mixture, residual.*got 'nope'"):
        M.get("nope")


def test_a_registered_method_reaches_route_and_score(setup, tmp_path, monkeypatch, capsys):
    """A new method (here: the residual fit with its head weights halved), registered in the registry only, is
    accepted by `micro route --adapt`, saved as a UserModel and applied by `micro score`."""
    from pipeline.route.score import RewardModel

    root, bundle, user = setup
    base = M.METHODS["residual"].fit

    def halved(*a, **kw):
        f = base(*a, **kw)
        f.adapter.head_weights_ = f.adapter.head_weights_ / 2
        return f

    monkeypatch.setitem(M.METHODS, "halved", M.Method("halved", "test", halved))
    patch_backend(monkeypatch)
    outs = {}
    for name in ("residual", "halved"):
        code, out, err = route_cli(
            monkeypatch,
            capsys,
            bundle,
            user,
            tmp_path / name,
            "--adapt",
            name,
            "--user",
            "g1",
            "--seeds",
            "1",
            "--budget-per-group",
            "20",
        )
        assert code == 0, err
        outs[name] = json.loads((tmp_path / name / "g1.json").read_text())
    assert outs["halved"]["adapt"] == "halved" and outs["halved"]["version"] == 2
    np.testing.assert_allclose(
        np.array(outs["halved"]["head_weights"]) * 2, outs["residual"]["head_weights"], rtol=1e-12
    )
    rm = RewardModel.load(bundle, cache_dir=root / "cache")
    u = rm.load_user(tmp_path / "halved" / "g1.json")
    assert u.kind == "adapted" and u.v is not None
    # the online form is looked up in the same registry: a method without one is refused by name
    code, _, err = route_cli(
        monkeypatch, capsys, bundle, user, tmp_path / "on", "--adapt", "halved", "--online", "--user", "g1"
    )
    assert code == 2 and "--online: the method 'halved' has no online form" in err


def test_fit_matches_user_adapter(setup):
    """The registry's batch fit is heads.user.UserAdapter (the same numbers), its routing twin the mixture fit."""
    from heads.user import UserAdapter
    from pipeline.core.model import Model
    from pipeline.core.run import Run

    root, bundle, _ = setup
    model = Model.load(bundle)
    run = Run.load(root / "bundle_run").part("train")
    D, W, gp = run.delta[:30], model.coef, model.estimator.gate_params_
    gx, rx = model.gate_features(run)[:30], run.context[:30]
    for name in ("auto", "mixture", "residual"):
        f = M.get(name).fit(D, W, gp, gx, rx, router={"epochs": 20}, seed=3)
        ua = UserAdapter(adapt=name, router={"epochs": 20}, random_state=3).fit(D, W, gp, gx, rx)
        np.testing.assert_allclose(f.predict_proba(D, W, gx, rx), ua.predict_proba(D, W, gx, rx), rtol=1e-12)
        mix = UserAdapter(adapt="mixture", router={"epochs": 20}, random_state=3).fit(D, W, gp, gx, rx).router_
        np.testing.assert_allclose(f.router.gate_weights(rx), mix.gate_weights(rx), rtol=1e-12)
        um = f.user_model("context", False)
        assert um.kind == "adapted" and um.rule == ua.rule_ and um.gate_multiplier == ua.gate_multiplier_
