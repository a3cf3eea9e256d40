"""``micro embed``: check the options, assemble the embedder (one process, N workers or Ray tasks), fill the cache
with a progress bar and print the counts."""

from __future__ import annotations

import time
from pathlib import Path

from pipeline import checks as C
from pipeline.boundary import console_log
from pipeline.errors import Interrupted, MicroError


def progress_factory(console):
    """(factory, holder): ``factory(total)`` starts a rich progress bar (texts, texts/s, ETA) and returns the
    function the embed loop advances it with; ``holder`` keeps the bar and the count of texts done."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    holder = {}

    def factory(total: int):
        if total == 0:
            return None
        prog = Progress(
            TextColumn("embedding"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} texts/s"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        prog.start()
        task = prog.add_task("embed", total=total, rate="-")
        holder["prog"], holder["t0"], holder["done"] = prog, time.perf_counter(), 0

        def advance(n: int) -> None:
            holder["done"] += n
            rate = holder["done"] / max(1e-9, time.perf_counter() - holder["t0"])
            prog.update(task, advance=n, rate=f"{rate:.1f}")
            if holder["done"] >= total:
                prog.stop()

        return advance

    return factory, holder


def build_embedder(
    backend: str, model: str | None, options: dict, *, workers: int = 1, ray: bool = False, address: str | None = None
):
    """(backend, embed_fn) for :func:`pipeline.embed.embed.embed_pairs`: one in-process backend (embed_fn None), or
    a model-free planning backend and a :class:`pipeline.embed.workers.ParallelEmbedder` for ``workers`` > 1 /
    ``ray``. ``options`` are checked (one-line errors) before any model loads."""
    from pipeline.embed.backends import check_options, get_backend

    flags = {k: options.get(k) or None for k in ("trust_remote_code", "enforce_eager")}  # a flag left off: not given
    kw = check_options(backend, **{**options, **flags})
    if workers != 1 or ray or address:
        from pipeline.embed.backends.planning import BackendSpec, parent_backend
        from pipeline.embed.workers import ParallelEmbedder

        spec = BackendSpec(backend, model, kw, get_backend)  # each worker builds its own backend from this
        embed_fn = ParallelEmbedder(spec, workers, use_ray=ray, address=address)
        return parent_backend(spec), embed_fn  # plans only: transformers/vLLM models load in the workers
    return get_backend(backend, model, **kw), None


def embed_command(
    pairs: Path,
    out: Path,
    *,
    backend: str,
    model: str | None,
    cache_dir: Path | None,
    cache_dtype: str,
    overlong: str,
    truncation: str,
    dtype: str | None,
    workers: int,
    ray: bool,
    address: str | None,
    console,
    **options,
) -> None:
    """``micro embed`` (see the README): ``options`` are the backend's (batch_size, max_length, device, ...)."""
    from cache.store import DTYPES
    from pipeline.data.schema import read_pairs
    from pipeline.embed.backends import BACKENDS
    from pipeline.embed.backends.chat import COMPUTE_DTYPES, TRUNCATION_SIDES
    from pipeline.embed.embed import embed_pairs

    C.choice(backend, "--backend", (*BACKENDS, "st"))
    C.integer(options.get("batch_size"), "--batch-size", optional=True)
    C.integer(options.get("max_length"), "--max-length", optional=True)
    C.choice(dtype, "--dtype", (*COMPUTE_DTYPES, "auto"), optional=True)
    C.choice(cache_dtype, "--cache-dtype", DTYPES)
    C.choice(overlong, "--overlong", ("truncate", "skip"))
    C.choice(truncation, "--truncation", TRUNCATION_SIDES)
    C.integer(options.get("tensor_parallel_size"), "--tensor-parallel-size", optional=True)
    C.integer(workers, "--workers")
    if address and not ray:
        raise MicroError("--address is the Ray cluster to join: it needs --ray")
    C.out_dir(out, "--out")
    C.cache_dir(cache_dir)
    table = read_pairs(pairs)  # a bad pair table fails here, before any model is loaded
    be, embed_fn = build_embedder(
        backend,
        model,
        {**options, "truncation": truncation, "dtype": COMPUTE_DTYPES[dtype] if dtype and dtype != "auto" else None},
        workers=workers,
        ray=ray,
        address=address,
    )
    factory, holder = progress_factory(console)
    try:
        s = embed_pairs(
            pairs,
            out,
            be,
            cache_dir=cache_dir,
            dtype=cache_dtype,
            overlong=overlong,
            progress_factory=factory,
            embed_fn=embed_fn,
            table=table,
            log=console_log(console),
        )
    except KeyboardInterrupt:
        if "prog" in holder:
            holder["prog"].stop()
        raise Interrupted(
            f"interrupted: {holder.get('done', 0)} new texts were saved to the cache; rerun the same command to resume"
        ) from None
    except MicroError:  # e.g. a parallel worker died: end the bar before the one-line error
        if "prog" in holder:
            holder["prog"].stop()
        raise
    finally:
        be.close()
    console.print(
        f"pairs {s.pairs} (kept {s.pairs_kept}, skipped {s.skipped_pairs}) | unique texts {s.unique_texts} | "
        f"cache hits {s.cache_hits} | newly embedded {s.embedded} | truncated {s.truncated} | "
        f"skipped texts {s.skipped_texts} | {s.seconds:.1f} s"
        + (
            f" ({s.texts_per_second:.1f} texts/s, {s.tokens_embedded / max(s.embed_seconds, 1e-9):,.0f} tokens/s)"
            if s.embedded
            else ""
        ),
        soft_wrap=True,
    )
    console_log(console)(f"run folder: {out}")  # a file name prints literally
