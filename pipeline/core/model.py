"""A fitted model: the estimator of a bundle, its metadata, and what the stages ask of it.

:class:`Model` loads and saves bundles (:mod:`pipeline.core.bundle` is the file format), gives the heads' logits,
the Stage-1 gate's input and weights on a :class:`pipeline.core.run.Run`, rebuilds the embedder recorded in the
bundle and embeds new user data with it (the cache reused), so users never rerun Stage 0 by hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.bundle import check_fingerprint, load_bundle, save_bundle
from pipeline.core.run import Run
from pipeline.data.schema import group_labels
from pipeline.errors import MicroError


def usable_cache_root(recorded: str | Path | None, given: str | Path | None = None) -> Path | str:
    """The cache root to use: ``given``; else the bundle's ``recorded`` root when it is a folder here or an
    object-store URL; else the default cache ~/.cache/micro/embeddings."""
    from cache.stores import is_remote
    from pipeline.embed.embed import DEFAULT_CACHE

    if given is not None:
        return str(given) if is_remote(str(given)) else Path(given).expanduser()
    if recorded and is_remote(str(recorded)):
        return recorded
    if recorded and Path(recorded).expanduser().is_dir():
        return Path(recorded).expanduser()
    return DEFAULT_CACHE.expanduser()


class Model:
    """``estimator`` (a fitted :class:`heads.mixture.MixtureBT`) and ``meta`` (model.json without the arrays)."""

    def __init__(self, estimator, meta: dict, path: Path | None = None):
        self.estimator, self.meta, self.path = estimator, meta, path
        self.cache_dir: Path | None = None  # --cache-dir: where new user data is embedded (see cache_root)

    @classmethod
    def load(cls, path: str | Path) -> "Model":
        """The bundle folder ``path``; InputError naming the file when it is damaged."""
        estimator, meta = load_bundle(path)
        return cls(estimator, meta, Path(path))

    def save(self, out: str | Path) -> Path:
        """Write the bundle to ``out`` (atomically)."""
        return save_bundle(
            self.estimator,
            out,
            {k: v for k, v in self.meta.items() if k not in ("format", "version", "class", "params", "fitted")},
        )

    @property
    def coef(self) -> np.ndarray:
        """(K, d) the heads' weights."""
        return self.estimator.coef_

    @property
    def n_heads(self) -> int:
        return int(self.estimator.coef_.shape[0])

    @property
    def static(self) -> bool:
        return self.estimator.gate_kind_ == "static"

    @property
    def gate_input(self) -> str:
        """What the Stage-1 gate reads: 'prompt', 'context' (context+prompt) or 'none' (a static gate)."""
        return "none" if self.static else self.meta.get("gate_input", "prompt")

    # --- on a run -----------------------------------------------------------------------------------------------
    def gate_features(self, run: Run) -> np.ndarray | None:
        """(N, p) the features the Stage-1 gate was trained on, None for a static gate."""
        return run.gate_features(self.gate_input)

    def head_logits(self, run: Run) -> np.ndarray:
        """(N, K) per-head logits z_ik = w_k·Δ_i of the frozen heads."""
        return run.delta @ self.estimator.coef_.T

    def gate_weights(self, run: Run) -> np.ndarray:
        """(N, K) the Stage-1 gate's mixture weights (a static gate's repeated)."""
        x = self.gate_features(run)
        return (
            self.estimator.gate_weights(x) if x is not None else np.repeat(self.estimator.gate_weights(None), run.n, 0)
        )

    def predict_proba(self, run: Run) -> np.ndarray:
        """(N,) P(chosen ≻ rejected) = Σ_k f_k σ(w_k·Δ) with the Stage-1 gate."""
        return self.estimator.predict_proba(run.delta, self.gate_features(run))

    def check_run(self, run: Run | dict, where: str) -> None:
        """MicroError when ``run`` (a Run or its run.json) comes from another embedder than the bundle."""
        check_fingerprint(self.meta, run.info if isinstance(run, Run) else run, where)

    # --- the embedder ----------------------------------------------------------------------------------------
    def embedder(self, device: str | None = None):
        """The bundle's embedder, rebuilt (on ``device``: auto | cpu | cuda[:N]; None: auto); error if it no longer
        gives the recorded fingerprint."""
        from pipeline.embed.backends import get_backend
        from pipeline.embed.backends.base import fingerprint_id

        emb = self.meta.get("embedder") or {}
        try:
            fp = self.meta.get("fingerprint") or {}
            extra = {k: fp[k] for k in ("truncation", "dtype") if fp.get(k)}
            extra |= {"device": device} if device is not None else {}
            backend = get_backend(
                emb["backend"], emb.get("model_path") or None, max_length=emb.get("max_length"), **extra
            )
        except MicroError as exc:
            raise MicroError(f"the bundle's embedder cannot be loaded: {exc}") from None
        fid = fingerprint_id(backend.fingerprint())
        if fid != self.meta["fingerprint_id"]:
            raise MicroError(
                f"the bundle's embedder {emb.get('backend')} at {emb.get('model_path')} now has "
                f"fingerprint {fid}, not the recorded {self.meta['fingerprint_id']} (the model files "
                "changed); refit"
            )
        return backend

    @property
    def recorded_cache_root(self) -> Path | str | None:
        """The embedding cache root recorded in the bundle (where its features came from, maybe on another machine;
        an object-store URL stays a URL)."""
        from cache.stores import parent

        recorded = (self.meta.get("embedder") or {}).get("cache_dir")
        return parent(recorded) if recorded else None

    @property
    def cache_root(self) -> Path | str:
        """The cache root to embed with: ``cache_dir`` if set, else the recorded one if it exists here (or is an
        object-store URL), else the default cache (a bundle from another machine never creates its absolute path
        here)."""
        return usable_cache_root(self.recorded_cache_root, self.cache_dir)

    def embed_user_data(
        self, user_data: str | Path, workdir: Path, test_size: float = 0.2, log=print, user: str | None = None
    ) -> Run:
        """The pairs of ``user_data`` (any file ``data prepare`` reads; only group ``user``'s pairs if given)
        embedded with the bundle's embedder into ``workdir`` (cache reused), as a Run."""
        import pyarrow as pa

        from pipeline.data.prepare import load_user_pairs
        from pipeline.data.schema import write_pairs
        from pipeline.embed.embed import embed_pairs

        table = load_user_pairs(user_data, test_size=test_size)
        if table.num_rows == 0:
            raise MicroError(f"{user_data}: no preference pairs in the user data")
        if user is not None:  # check the user before embedding anything, and embed only their pairs
            labels = group_labels(table.column("group").to_pylist()).astype(object)
            names = sorted(set(labels.tolist()))
            if user not in names:
                raise MicroError(
                    f"{user_data}: user '{user}' not found in the 'group' column; users present: "
                    f"{', '.join(map(str, names[:20]))}"
                )
            table = table.filter(pa.array(labels == user))
        workdir.mkdir(parents=True, exist_ok=True)
        write_pairs(table, workdir / "user_pairs.parquet")
        backend = self.embedder()
        try:
            s = embed_pairs(
                workdir / "user_pairs.parquet",
                workdir / "user_run",
                backend,
                cache_dir=self.cache_root,
                dtype=self.meta["embedder"]["cache_dtype"],
            )
        finally:
            backend.close()
        log(f"user data: {s.pairs} pairs, {s.unique_texts} unique texts, {s.cache_hits} cached, {s.embedded} embedded")
        run = Run.load(workdir / "user_run")
        self.check_run(run, str(user_data))
        return run
