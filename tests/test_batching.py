"""pipeline.embed.backends.batching: token-budget plans, the memory-derived default, out-of-memory detection."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.embed.backends.batching import (
    GPU_MAX_BATCH_TOKENS,
    GPU_MIN_BATCH_TOKENS,
    activation_bytes_per_token,
    batch_cost,
    budget_for_memory,
    is_oom,
    plan_batches,
)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("budget", [1, 17, 64, 1000])
def test_plans_cover_every_input_once_in_order_within_budget(packed, budget):
    lengths = sorted(np.random.default_rng(budget).integers(0, 40, 300).tolist(), reverse=True)
    plan = plan_batches(lengths, budget, packed)
    assert [i for b in plan for i in b] == list(range(300))  # consecutive, nothing lost or repeated
    for b, nxt in zip(plan, plan[1:] + [None]):
        cost = batch_cost([lengths[i] for i in b], packed)
        assert cost <= budget or len(b) == 1  # only a text over the budget by itself may exceed it
        if nxt is not None:  # greedy: the next text did not fit
            assert batch_cost([lengths[i] for i in b + nxt[:1]], packed) > budget


def test_costs_and_row_cap():
    assert batch_cost([3, 5, 0], packed=False) == 15 and batch_cost([3, 5, 0], packed=True) == 9
    assert batch_cost([], packed=False) == 0
    assert plan_batches([2] * 10, 100, False, max_rows=4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert plan_batches([50, 10, 10], 40, False) == [[0], [1, 2]]


def test_memory_derived_budget():
    # Llama-3.2-3B shape in bf16: ~126 KB of activations per token
    cfg = type("Cfg", (), {"hidden_size": 3072, "intermediate_size": 8192, "num_attention_heads": 24})()
    per = activation_bytes_per_token(cfg, 2)
    assert per == 2 * (10 * 3072 + 4 * 8192)
    assert activation_bytes_per_token(cfg, 2, 512, eager_attention=True) == per + 2 * 24 * 512
    assert budget_for_memory(60 * 2**30, per) == GPU_MAX_BATCH_TOKENS  # an H100 after loading a 3B model
    assert budget_for_memory(2**30, per) == 4096  # 1 GiB free: half of it holds 8.5k tokens -> power of two
    assert budget_for_memory(10 * 2**20, per) == GPU_MIN_BATCH_TOKENS
    assert budget_for_memory(0, per) == GPU_MIN_BATCH_TOKENS


def test_out_of_memory_errors_are_recognised():
    import torch

    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom(RuntimeError("CUDA error: out of memory"))
    assert not is_oom(RuntimeError("shape mismatch"))
    assert not is_oom(ValueError("out of memory"))
