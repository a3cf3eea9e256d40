"""How a MixtureBT restart is optimised: two strategies behind one interface.

* :class:`EMSolver` (``solver="em"``, the default): generalised EM with a quasi-Newton M-step (:mod:`heads.em`);
  restarts are screened after ``screen_iter`` iterations and only the leader runs on.
* :class:`AdamWSolver` (``solver="adamw"``): the paper's minibatch AdamW recipe on the same objective
  (:mod:`heads.sgd`), from the same initialisation (k-means responsibilities and the first M-step).

Both return a :class:`heads.em.EMResult`. Their fields are the optimiser's internals (L-BFGS memory, line-search
criterion, M-step counts, AdamW schedule): set them only to study the optimiser.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Optional

import numpy as np
from sklearn.utils._param_validation import InvalidParameterError

from .defaults import ADAMW_BATCH, ADAMW_EPOCHS, ADAMW_LR, PATIENCE
from .em import EMResult, run_em
from .objective import Problem


@dataclass
class EMSolver:
    """Generalised EM. ``m_steps`` / ``init_m_steps``: L-BFGS steps per M-step (later / first); ``memory``:
    L-BFGS pairs kept; ``accept``: line-search criterion ("L" or "Q", see :mod:`heads.em`); ``screen_iter``: with
    several restarts every restart runs this many iterations and only the best runs on (None: all to the end)."""

    m_steps: int = 1
    init_m_steps: int = 50
    memory: int = 10
    accept: str = "L"
    screen_iter: Optional[int] = 30
    name = "em"

    def check(self) -> None:
        """Raise scikit-learn's InvalidParameterError (a ValueError), as MixtureBT's own parameter checks do."""
        if self.accept not in ("L", "Q"):
            raise InvalidParameterError(f"EMSolver.accept must be 'L' or 'Q', got {self.accept!r}")
        for key in ("m_steps", "init_m_steps", "memory"):
            v, low = getattr(self, key), 0 if key == "init_m_steps" else 1
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                raise InvalidParameterError(f"EMSolver.{key} must be an integer >= {low}, got {v!r}")
        si = self.screen_iter
        if si is not None and (not isinstance(si, (int, np.integer)) or si < 1):
            raise InvalidParameterError(
                f"EMSolver.screen_iter must be None or a positive integer, got {self.screen_iter!r}"
            )

    def screening(self, n_restarts: int, n_components: int) -> Optional[int]:
        """Iterations each restart runs before only the leader goes on (None: no screening)."""
        return self.screen_iter if (self.screen_iter and n_restarts > 1 and n_components > 1) else None

    def run(
        self,
        prob: Problem,
        theta0: np.ndarray,
        r0: Optional[np.ndarray],
        *,
        max_iter: int,
        tol: float,
        seed: int,
        val: Optional[Problem] = None,
        patience: int = PATIENCE,
        on_iter: Optional[Callable[[int, float], None]] = None,
        verbose: int = 0,
    ) -> EMResult:
        """One restart from (theta0, first responsibilities r0 (n, K) or None)."""
        return self._run(prob, theta0, r0, self.init_m_steps, max_iter, tol, val, patience, on_iter, verbose)

    def resume(
        self,
        prob: Problem,
        theta: np.ndarray,
        *,
        max_iter: int,
        tol: float,
        val: Optional[Problem] = None,
        patience: int = PATIENCE,
        on_iter=None,
        verbose: int = 0,
    ) -> EMResult:
        """Continue from theta (no first M-step): the screened leader, or a refit."""
        return self._run(prob, theta, None, 0, max_iter, tol, val, patience, on_iter, verbose)

    def _run(self, prob, theta, r0, init_m_steps, max_iter, tol, val, patience, on_iter, verbose):
        return run_em(
            prob,
            theta,
            r0,
            max_iter=max_iter,
            tol=tol,
            m_steps=self.m_steps,
            init_m_steps=init_m_steps,
            memory=self.memory,
            accept=self.accept,
            on_iter=on_iter,
            verbose=verbose,
            val=val,
            patience=patience,
        )

    def to_dict(self) -> dict:
        return {"name": self.name, **asdict(self)}


@dataclass
class AdamWSolver(EMSolver):
    """Minibatch AdamW (paper: batch 32, lr 2e-3, 5 % warm-up then cosine decay, ``epochs`` passes) after the
    same first M-step as EM; refits after selection continue with EM."""

    epochs: int = ADAMW_EPOCHS
    batch_size: int = ADAMW_BATCH
    lr: float = ADAMW_LR
    name = "adamw"

    def check(self) -> None:
        super().check()
        for key in ("epochs", "batch_size"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise InvalidParameterError(f"AdamWSolver.{key} must be a positive integer, got {v!r}")
        if isinstance(self.lr, bool) or not np.isfinite(self.lr) or self.lr <= 0:
            raise InvalidParameterError(f"AdamWSolver.lr must be a finite number > 0, got {self.lr!r}")

    def screening(self, n_restarts: int, n_components: int) -> Optional[int]:
        return None

    def run(self, prob, theta0, r0, *, max_iter, tol, seed, val=None, patience=PATIENCE, on_iter=None, verbose=0):
        from .sgd import run_adamw

        start = run_em(prob, theta0, r0, max_iter=0, init_m_steps=self.init_m_steps, memory=self.memory)
        cb = (lambda ep, th: on_iter(ep, prob.evaluate(th, grads=()).L)) if on_iter else None
        theta, hist = run_adamw(
            prob, start.theta, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, seed=seed, on_epoch=cb
        )
        vh = [val.heldout_score(theta)] if val is not None else []
        return EMResult(
            theta=theta,
            objective=hist[-1],  # the full objective after the last epoch
            history=start.history + hist,
            converged=True,
            n_iter=int(self.epochs),
            val_history=vh,
            best_iter=len(vh) - 1 if vh else None,
        )


SOLVERS = {"em": EMSolver, "adamw": AdamWSolver}


def make_solver(spec) -> EMSolver:
    """A solver from "em" / "adamw", a solver object, or a dict with "name" (as stored in a bundle)."""
    if isinstance(spec, EMSolver):
        spec.check()
        return spec
    if isinstance(spec, dict):
        spec = dict(spec)
        obj = SOLVERS[spec.pop("name", "em")](**spec)
        obj.check()
        return obj
    if spec not in SOLVERS:
        raise InvalidParameterError(f"solver must be 'em', 'adamw' or a solver object, got {spec!r}")
    return SOLVERS[spec]()
