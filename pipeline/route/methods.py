"""The one registry of Stage-2 adaptation methods.

``micro route --adapt NAME`` (every user, or one ``--user``), ``micro route --online --adapt NAME`` and
``micro eval --protocol leave-group-out --adapt NAME`` all look the method up here, and every method's result is a
:class:`pipeline.route.users.UserModel` that ``micro score`` and the server apply. A :class:`Method` has

* ``fit(delta, heads, gate_params, gate_x, route_x, *, pca, fold_groups, router, seed) -> Fitted``: the batch fit
  on a user's B labelled pairs (``delta`` (n, d), ``heads`` (K, d); ``gate_x`` / ``route_x`` the Stage-1 gate's and
  the router's input features, None for a static gate);
* ``online``: "module:function" building the user's profile pair by pair (``(bundle, user_data, user, out_dir, *,
  adapt, tau, log) -> result``) and ``report`` "module:function" printing that result (``(console, result)``).

Adding a method: its module (the math in ``heads``), one :func:`register` call below, its tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Callable

import numpy as np

from pipeline.errors import MicroError
from pipeline.route.users import UserModel


@dataclass
class Fitted:
    """A user's fitted adaptation: ``adapter`` (``predict_proba(delta, heads, gate_x, route_x)``, ``choice_``,
    ``cv_``), ``router`` (the routing comparison, a :class:`heads.router.Router`) and its :class:`UserModel`."""

    adapter: object
    router: object
    choice: str

    def predict_proba(self, delta, heads, gate_x=None, route_x=None) -> np.ndarray:
        return self.adapter.predict_proba(delta, heads, gate_x, route_x)

    def user_model(self, stage1_gate_input: str, static: bool, **kw) -> UserModel:
        """The UserModel of this fit; ``stage1_gate_input`` what the bundle's gate reads; ``kw``: context, user."""
        ua = self.adapter
        gate_input = "none" if static else ("context" if ua.rule_ == "mixture" else stage1_gate_input)
        return UserModel(
            "adapted",
            np.asarray(ua.head_weights_, dtype=np.float64),
            float(ua.gate_multiplier_),
            ua.gate_params_ if ua.gate_multiplier_ else None,
            gate_input,
            ua.coef_ if ua.coef_.size else None,
            rule=ua.rule_,
            **kw,
        )


@dataclass(frozen=True)
class Method:
    name: str
    help: str
    fit: Callable[..., Fitted]
    online: str | None = None  # "module:function"
    report: str | None = None  # "module:function"


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    METHODS[method.name] = method
    return method


def get(name: str, option: str = "--adapt", online: bool = False) -> Method:
    """The method ``name``; MicroError naming ``option`` and the choices when unknown (or not online)."""
    names = [m for m, v in METHODS.items() if v.online or not online]
    if name not in names:
        raise MicroError(f"{option} must be one of {', '.join(names)}, got {name!r}")
    return METHODS[name]


def call(spec: str, *args, **kw):
    """Call the function named "module:function"."""
    module, fn = spec.split(":")
    return getattr(import_module(module), fn)(*args, **kw)


def _user_adapter(adapt: str):
    def fit(delta, heads, gate_params, gate_x, route_x, *, pca=None, fold_groups=None, router=None, seed=0) -> Fitted:
        from heads.user import UserAdapter

        ua = UserAdapter(adapt=adapt, router=router, random_state=int(seed))
        ua.fit(delta, heads, gate_params, gate_x, route_x, pca=pca, fold_groups=fold_groups)
        routed = getattr(ua, "router_", None)
        if routed is None:  # the routing comparison: the router alone on the same pairs
            routed = (
                UserAdapter(adapt="mixture", router=router, random_state=int(seed))
                .fit(delta, heads, gate_params, gate_x, route_x)
                .router_
            )
        return Fitted(ua, routed, ua.choice_)

    return fit


register(
    Method(
        "auto",
        "routing, or the heads + a per-user residual where cross-validation on the user's pairs prefers it",
        _user_adapter("auto"),
        online="pipeline.route.adapt:build_online",
        report="pipeline.route.command:print_online",
    )
)
register(
    Method(
        "mixture",
        "routing only (online: the Hedge profile over the heads)",
        _user_adapter("mixture"),
        online="pipeline.route.profiles:build_online_hedge",
        report="pipeline.route.command:print_profile",
    )
)
register(
    Method(
        "residual",
        "the heads + a per-user residual, always",
        _user_adapter("residual"),
        online="pipeline.route.adapt:build_online",
        report="pipeline.route.command:print_online",
    )
)
