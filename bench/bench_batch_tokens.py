"""Time per token slot of one forward pass against the token budget on the CPU: what CPU_BATCH_TOKENS rests on.

    python bench/bench_batch_tokens.py                    # MiniLM (bundled) and a random 2,048-wide Llama
    python bench/bench_batch_tokens.py --only minilm --budgets 1024,2048,8192 --reps 5

For each model, text length L and budget B, a batch of B // L rows of L random tokens (one row half padding, so
the masked path runs) is passed through the model until --slots slots are done; the median over --reps
interleaved repetitions of microseconds per slot is printed, and per L the ratio of each budget's time to the
default's (CPU_BATCH_TOKENS). Weights are random for the Llama: they do not change the FLOPs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.embed.backends.batching import CPU_BATCH_TOKENS  # noqa: E402


def minilm():
    from pipeline.embed.backends.st import SentenceTransformersBackend

    return SentenceTransformersBackend(device="cpu").load()[0].auto_model, 30000, (48, 128, 256)


def llama():
    from transformers import LlamaConfig, LlamaModel

    cfg = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=8192, num_hidden_layers=2,
                      num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=4096)  # fmt: skip
    return LlamaModel(cfg).eval(), 32000, (128, 512)


def per_slot_us(model, vocab: int, length: int, budget: int, slots: int) -> float:
    import torch

    rows = max(1, budget // length)
    ids = torch.randint(1000, vocab, (rows, length))
    mask = torch.ones_like(ids)
    mask[0, length // 2 :] = 0
    reps = max(1, slots // (rows * length))
    t = time.perf_counter()
    with torch.inference_mode():
        for _ in range(reps):
            model(input_ids=ids, attention_mask=mask)
    return 1e6 * (time.perf_counter() - t) / (reps * rows * length)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="minilm,llama", help="comma list of minilm, llama")
    ap.add_argument("--budgets", default="1024,2048,4096,8192")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--slots", type=int, default=16384, help="token slots timed per (L, budget) and repetition")
    args = ap.parse_args()
    budgets = sorted({int(b) for b in args.budgets.split(",")} | {CPU_BATCH_TOKENS})
    for name in args.only.split(","):
        model, vocab, lengths = {"minilm": minilm, "llama": llama}[name]()
        times: dict = {}
        for _ in range(args.reps):
            for L in lengths:
                for b in budgets:
                    times.setdefault((L, b), []).append(per_slot_us(model, vocab, L, b, args.slots))
        print(f"{name}: µs per token slot (median of {args.reps}); ratio to the default budget {CPU_BATCH_TOKENS}")
        print("| L | " + " | ".join(f"B = {b}" for b in budgets) + " |")
        print("|---:|" + "---:|" * len(budgets))
        for L in lengths:
            med = {b: statistics.median(times[(L, b)]) for b in budgets}
            cells = [f"{med[b]:.0f} ({med[b] / med[CPU_BATCH_TOKENS]:.2f})" for b in budgets]
            print(f"| {L} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
