"""Token-budget batches for the decoder backends.

A batch's *cost* is the number of token slots one forward pass computes: rows x longest row for padded batches,
the sum of the lengths for packed (padding-free) batches. :func:`plan_batches` cuts a list of inputs, already
sorted longest first, into consecutive batches whose cost stays within ``--max-batch-tokens``. The default
budget suits the device: a fixed value on the CPU, and on CUDA what the free GPU memory holds
(:func:`budget_for_memory`, an estimate of one layer's activations per token), capped where larger batches stop
paying. A CUDA out-of-memory error halves the budget (see :mod:`pipeline.embed.stream`).
"""

from __future__ import annotations

from typing import Sequence

# default --max-batch-tokens on the CPU (sentence-transformers and transformers): fewer slots per pass are faster
# per slot there (the activations stay in cache). bench/bench_batch_tokens.py on 2 EPYC cores: 8192 took 1.17-1.25x
# the time per slot of 2048 on MiniLM (L = 48..256), 1.04-1.07x on a random 2,048-wide Llama; 1024 no faster on MiniLM
CPU_BATCH_TOKENS = 2048
GPU_MIN_BATCH_TOKENS = 1024
GPU_MAX_BATCH_TOKENS = 65536  # matmuls are at full speed well below this; larger only delays the first shard
GPU_MEMORY_FRACTION = 0.5  # of the free GPU memory after the model is loaded


def batch_cost(lengths: Sequence[int], packed: bool) -> int:
    """Token slots of one forward pass over inputs of these lengths (empty inputs count as one token)."""
    if not lengths:
        return 0
    lengths = [max(1, int(n)) for n in lengths]
    return sum(lengths) if packed else len(lengths) * max(lengths)


def plan_batches(lengths: Sequence[int], budget: int, packed: bool, max_rows: int | None = None) -> list[list[int]]:
    """Consecutive groups of positions ``0..n-1`` whose :func:`batch_cost` is at most ``budget`` (and at most
    ``max_rows`` rows); an input whose own cost exceeds the budget forms a batch alone."""
    out: list[list[int]] = []
    cur: list[int] = []
    longest = total = 0
    for i, n in enumerate(lengths):
        n = max(1, int(n))
        grown_longest, grown_total = max(longest, n), total + n
        cost = grown_total if packed else (len(cur) + 1) * grown_longest
        if cur and (cost > budget or (max_rows is not None and len(cur) >= max_rows)):
            out.append(cur)
            cur, grown_longest, grown_total = [], n, n
        cur.append(i)
        longest, total = grown_longest, grown_total
    if cur:
        out.append(cur)
    return out


def activation_bytes_per_token(config, itemsize: int, max_length: int = 0, eager_attention: bool = False) -> int:
    """Rough peak bytes per token of an inference forward pass (no KV cache): a few hidden-width tensors and the
    MLP's intermediate ones of one layer, plus the attention matrix per token for eager attention."""
    d = int(getattr(config, "hidden_size", 0) or 1024)
    inner = int(getattr(config, "intermediate_size", 0) or 4 * d)
    heads = int(getattr(config, "num_attention_heads", 0) or 16)
    per = 10 * d + 4 * inner + (heads * max_length if eager_attention else 0)
    return itemsize * per


def budget_for_memory(
    free_bytes: int,
    bytes_per_token: int,
    fraction: float = GPU_MEMORY_FRACTION,
    low: int = GPU_MIN_BATCH_TOKENS,
    high: int = GPU_MAX_BATCH_TOKENS,
) -> int:
    """The largest power of two of tokens whose activations fit ``fraction`` of ``free_bytes``, within [low, high]."""
    fit = int(free_bytes * fraction) // max(1, int(bytes_per_token))
    power = 1 << max(0, fit.bit_length() - 1) if fit > 0 else 0
    return int(min(high, max(low, power)))


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error of an accelerator (``torch.OutOfMemoryError`` and the like)."""
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
