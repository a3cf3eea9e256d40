"""The paper's optimiser on the same objective, for comparison with EM: minibatch AdamW in torch.

Minibatch 32, lr 2e-3, AdamW with weight decay 0 (the L2 term is in the loss, exactly as in the EM
objective), linear warm-up over the first 5 % of steps then cosine decay to 0, ``epochs`` passes over
a per-epoch shuffle. Per minibatch B the loss is
``-(1/|B|) sum_B log sum_k f_k sigma(w_k . Delta) + alpha (1/|B|) sum_B sum_k f log f + (l2/2)||W||^2
+ (gate_l2/2)||gate W||^2``,
an unbiased estimate of the full objective L.
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .defaults import ADAMW_BATCH, ADAMW_EPOCHS, ADAMW_LR
from .gate import PENALISED, gate_logits_torch
from .objective import Problem


def run_adamw(
    prob: Problem,
    theta0: np.ndarray,
    *,
    epochs: int = ADAMW_EPOCHS,
    batch_size: int = ADAMW_BATCH,
    lr: float = ADAMW_LR,
    warmup: float = 0.05,
    seed: int = 0,
    on_epoch: Optional[Callable[[int, np.ndarray], None]] = None,
) -> Tuple[np.ndarray, List[float]]:
    """Train from theta0; returns (theta, [full objective after each epoch])."""
    dtype = torch.float64 if prob.np_dtype == np.float64 else torch.float32
    W0, g0 = prob.packer.unpack(theta0)
    W = torch.tensor(W0, dtype=dtype, requires_grad=True)
    gp = {k: torch.tensor(v, dtype=dtype, requires_grad=True) for k, v in g0.items()}
    params = [W] + list(gp.values())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    n = prob.n
    steps_per_epoch = math.ceil(n / batch_size)
    total = max(1, steps_per_epoch * int(epochs))
    warm = max(1, int(round(warmup * total)))

    def sched(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, sched)
    gen = torch.Generator().manual_seed(int(seed))
    a, l2, gate_l2 = prob.alpha, prob.l2, prob.gate_l2
    history: List[float] = []

    def theta_now() -> np.ndarray:
        return prob.packer.pack(W.detach().double().numpy(), {k: v.detach().double().numpy() for k, v in gp.items()})

    for ep in range(int(epochs)):
        perm = torch.randperm(n, generator=gen).numpy()
        for s in range(0, n, batch_size):
            idx = perm[s : s + batch_size]
            Db, Xb = prob.batch(idx)
            z = Db @ W.T
            logf = torch.log_softmax(gate_logits_torch(gp, Xb, n_rows=len(idx)), dim=1)
            loss = -torch.logsumexp(logf + F.logsigmoid(z), dim=1).mean()
            if a:
                loss = loss + a * (logf.exp() * logf).sum(1).mean()
            pen = l2 * (W * W).sum() + gate_l2 * sum((gp[k] * gp[k]).sum() for k in PENALISED if k in gp)
            loss = loss + 0.5 * pen
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            scheduler.step()
        th = theta_now()
        history.append(prob.evaluate(th, grads=()).L)
        if on_epoch is not None:
            on_epoch(ep + 1, th)
    return theta_now(), history
