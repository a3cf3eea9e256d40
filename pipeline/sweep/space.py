"""The search space of ``micro sweep``: parameters, ``--grid`` parsing, grid and random configurations.

Search space: ``"k=1,2,5,10; alpha=0,0.5; l2=1e-4,1e-3"`` (lists: grid = the cartesian product). With
``samples=N`` (random search) entries may be ranges: ``alpha=0..1`` (uniform), ``tau=log:1e-4..1e-2``
(log-uniform), ``k=int:1..16`` (uniform integer); lists are then uniform choices. Integer ranges in a grid
expand to every integer. Parameters (default): fit ``k`` (10), ``alpha``, ``l2``, ``n_init``, ``max_iter``,
``tol``, ``init``, ``dim``, ``gate_dim``, ``gate_hidden`` (MixtureBT defaults), ``gate`` (context),
``gate_input`` (auto); route ``tau``, ``epochs``, ``lr``, ``budget`` (heads.defaults).
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import math
from dataclasses import dataclass

import numpy as np

from heads.defaults import BUDGET, ROUTER_EPOCHS, ROUTER_LR, TAU
from heads.mixture import MixtureBT
from heads.validation import validate_params
from pipeline import checks as C
from pipeline.errors import MicroError, OptionError, first_line

# kinds: int, float, str, optint (int or none), autofloat (float or auto), autoint (int, auto or none = full width)
FIT_PARAMS = {
    "k": ("int", 10),
    "alpha": ("float", None),
    "l2": ("autofloat", None),
    "n_init": ("int", None),
    "max_iter": ("int", None),
    "tol": ("float", None),
    "init": ("str", None),
    "dim": ("autoint", None),
    "gate_hidden": ("optint", None),
    "gate_dim": ("autoint", None),
    "gate": ("str", "context"),
    "gate_input": ("str", "auto"),
}
_MIXTURE_DEFAULTS = {n: p.default for n, p in inspect.signature(MixtureBT.__init__).parameters.items()}
FIT_PARAMS.update(
    {
        n: (kind, _MIXTURE_DEFAULTS[n])
        for n, (kind, d) in FIT_PARAMS.items()
        if n in ("alpha", "l2", "n_init", "max_iter", "tol", "init", "dim", "gate_dim")
    }
)  # MixtureBT's
ROUTE_PARAMS = {
    "tau": ("float", TAU),
    "epochs": ("int", ROUTER_EPOCHS),
    "lr": ("float", ROUTER_LR),
    "budget": ("int", BUDGET),
}
PARAMS = {**FIT_PARAMS, **ROUTE_PARAMS}
ALIASES = {"n_components": "k", "budget_per_group": "budget"}
STAGES = ("fit", "route", "all")
KINDS = {"optint": "integer or none", "autofloat": "number or auto", "autoint": "integer, auto or none"}


@dataclass
class Dim:
    """One entry of the search space: a list of ``values`` or a range [low, high] with a ``scale``."""

    name: str
    values: list | None = None
    low: float | None = None
    high: float | None = None
    scale: str = "linear"  # linear | log | int


def _cast(name: str, raw):
    kind = PARAMS[name][0]
    text = str(raw).strip()
    try:
        if kind in ("autofloat", "autoint") and text.lower() == "auto":
            return "auto"
        if kind in ("optint", "autoint") and text.lower() in ("none", "null", "", "full"):
            return None
        if kind in ("int", "optint", "autoint"):
            v = float(text)
            if not v.is_integer():
                raise ValueError
            return int(v)
        return float(text) if kind in ("float", "autofloat") else text
    except ValueError:
        raise MicroError(f"sweep: {name}={text!r} is not a valid {KINDS.get(kind, kind)}") from None


def parse_space(spec) -> dict[str, Dim]:
    """``"k=1,2; alpha=0..1; tau=log:1e-4..1e-2"`` (a string, a list of them, or a dict name -> values)."""
    if isinstance(spec, dict):
        items = [(k, v if isinstance(v, (list, tuple)) else [v]) for k, v in spec.items()]
    else:
        text = ";".join([spec] if isinstance(spec, str) else list(spec))
        items = []
        for part in text.replace("\n", ";").split(";"):
            if not part.strip():
                continue
            key, sep, val = part.partition("=")
            if not sep or not val.strip():
                raise MicroError(f"sweep: expected NAME=VALUES, got {part.strip()!r}")
            items.append((key, val.strip()))
    space: dict[str, Dim] = {}
    for key, val in items:
        name = ALIASES.get(key.strip().replace("-", "_"), key.strip().replace("-", "_"))
        if name not in PARAMS:
            raise MicroError(f"sweep: unknown hyperparameter {key.strip()!r}; known: {', '.join(PARAMS)}")
        if name in space:
            raise MicroError(f"sweep: {name} given twice")
        if isinstance(val, list):
            space[name] = Dim(name, values=[v if v is None else _cast(name, v) for v in val])
            continue
        prefix, colon, rest = val.partition(":")
        scale, body = (prefix.strip(), rest) if colon and prefix.strip() in ("log", "int") else ("linear", val)
        if ".." in body:
            lo, _, hi = body.partition("..")
            if PARAMS[name][0] == "str":
                raise MicroError(f"sweep: {name} takes a list of values, not a range")
            lo, hi = float(_cast("alpha", lo)), float(_cast("alpha", hi))
            if lo > hi or (scale == "log" and lo <= 0):
                raise MicroError(f"sweep: bad range {name}={val} (need low <= high, and low > 0 for log)")
            if scale == "linear" and PARAMS[name][0] not in ("float", "autofloat"):
                scale = "int"
            space[name] = Dim(name, low=lo, high=hi, scale=scale)
        else:
            space[name] = Dim(name, values=[_cast(name, v) for v in body.split(",")])
    return space


def grid_configs(space: dict[str, Dim]) -> list[dict]:
    """Cartesian product of the lists (integer ranges expand; other ranges need random search)."""
    axes = []
    for d in space.values():
        if d.values is not None:
            axes.append(d.values)
        elif d.scale == "int":
            axes.append([_cast(d.name, v) for v in range(int(math.ceil(d.low)), int(math.floor(d.high)) + 1)])
        else:
            raise MicroError(f"sweep: {d.name} is a range; use --samples N (random search) or list its values")
    return [dict(zip(space, combo)) for combo in itertools.product(*axes)]


def random_configs(space: dict[str, Dim], n: int, seed: int = 0) -> list[dict]:
    """``n`` configurations drawn from the space; deterministic given ``seed``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(int(n)):
        cfg = {}
        for name in sorted(space):
            d = space[name]
            if d.values is not None:
                cfg[name] = d.values[int(rng.integers(len(d.values)))]
            elif d.scale == "log":
                v = float(np.exp(rng.uniform(np.log(d.low), np.log(d.high))))
                cfg[name] = (
                    v if PARAMS[name][0] in ("float", "autofloat") else int(np.clip(round(v), math.ceil(d.low), d.high))
                )
            elif d.scale == "int":
                cfg[name] = int(rng.integers(int(math.ceil(d.low)), int(math.floor(d.high)) + 1))
            else:
                cfg[name] = float(rng.uniform(d.low, d.high))
        out.append(cfg)
    return out


def check_value(name: str, value) -> None:
    """OptionError naming ``name`` for a value no trial could use (MixtureBT's own parameter checks for the fit
    hyperparameters), so a bad ``--grid`` stops the sweep before its first trial instead of failing every one."""
    option = f"sweep: {name}"
    if name in ("tau", "lr"):
        C.number(value, option, low=0, low_open=True)
    elif name in ("epochs", "budget"):
        C.integer(value, option)
    elif name == "gate_input":
        C.choice(value, option, ("auto", "prompt", "context"))
    else:
        try:
            validate_params(MixtureBT(**{"n_components" if name == "k" else name: value}))
        except ValueError as exc:
            raise OptionError(f"sweep: {name}={value!r}: {first_line(exc)}") from None


def search_space(grid, stage: str, samples: int | None = None, sample_seed: int = 0) -> tuple[dict, list[dict]]:
    """(space, configurations) of ``--grid`` for ``stage``; MicroError for anything that cannot be searched."""
    space = parse_space(grid)
    if stage == "fit" and set(space) & set(ROUTE_PARAMS):
        raise MicroError(
            f"sweep: {sorted(set(space) & set(ROUTE_PARAMS))} are routing hyperparameters: use --stage route (or all)"
        )
    cfgs = random_configs(space, samples, sample_seed) if samples else grid_configs(space)
    for name in space:
        for value in dict.fromkeys(c[name] for c in cfgs):
            check_value(name, value)
    return space, cfgs


def resolve(cfg: dict, stage: str) -> dict:
    """All hyperparameters of a trial (defaults filled in); no routing ones for ``stage == "fit"``."""
    keys = FIT_PARAMS if stage == "fit" else PARAMS
    return {k: cfg.get(k, keys[k][1]) for k in keys}


def unique_configs(cfgs: list[dict], stage: str) -> list[dict]:
    """``cfgs`` without repeats (compared by value with the defaults filled in: ``k=2,2,02`` is one configuration,
    ``--samples 5`` on a 2-value list at most two), first occurrence kept."""
    seen: dict = {}
    for c in cfgs:
        seen.setdefault(json.dumps(resolve(c, stage), sort_keys=True, default=str), c)
    return list(seen.values())


def config_hash(params: dict, seed: int, stage: str, holdout: float, data_id: str) -> str:
    blob = json.dumps(
        {
            "p": params,
            "seed": int(seed),
            "stage": "fit" if stage == "fit" else "route",
            "holdout": float(holdout),
            "data": data_id,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
