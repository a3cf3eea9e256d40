"""Rewards for (prompt, response) rows: per head and mixed under a context or a user (:class:`UserModel`).

Python API::

    from pipeline.route.score import RewardModel
    rm = RewardModel.load("runs/dsp/model", cache_dir=None, cache_writes=False)   # embedder loaded lazily, once
    user = rm.load_user("runs/dsp/profiles/alice.json")    # any profile file (old formats too) or a routed bundle
    out = rm.rewards(prompts, responses, context="I am an academic ...", user=None)   # or user=user
    out["reward"]     # (N,) sum_k (g f_k + omega_k) r_k + v . phi, the user's reward
    out["per_head"]   # (N, K) r_k = w_k . phi(x, a)
    out["weights"]    # (N, K) mixture weights g f + omega used for the mix
    out["residual"]   # (N,) v . phi(x, a) (zeros without a residual)

``context`` and ``user`` may also be sequences, one entry per row: rows are mixed each under their own user, with
one embedder pass for every text not cached (response features, and gate features not in the in-memory LRU).
Scoring reads the persistent embedding cache but writes it only with ``cache_writes=True``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa

from pipeline.core.model import Model, usable_cache_root
from pipeline.embed.backends.base import with_context
from pipeline.errors import MicroError
from pipeline.route.features import Featurizer
from pipeline.route.users import UserModel, load_user

VERSION = 2  # of the scoring API (rm.info()["version"])


def as_messages(prompt) -> list[dict]:
    """A prompt given as text or as a message list → message list."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, (list, tuple)) and all(isinstance(m, dict) and "content" in m for m in prompt):
        return [{"role": m.get("role", "user"), "content": m["content"]} for m in prompt]
    raise MicroError(f"prompt must be a string or a list of {{role, content}} messages, got {type(prompt).__name__}")


def _per_row(value, n: int, name: str, kinds) -> list:
    """``value`` (one for every row, or a sequence of n) as a list of n entries."""
    if value is None or isinstance(value, kinds):
        return [value] * n
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise MicroError(f"{name}: {len(value)} entries for {n} rows")
        bad = [i for i, x in enumerate(value) if x is not None and not isinstance(x, kinds)]
        if bad:
            got = type(value[bad[0]]).__name__
            raise MicroError(f"{name}: row {bad[0]}: expected {kinds[0].__name__} or None, got {got}")
        return list(value)
    raise MicroError(f"{name}: expected {kinds[0].__name__}, a list of them or None, got {type(value).__name__}")


class RewardModel:
    """A Stage-1 or routed bundle plus its embedder, ready to score responses (module docstring)."""

    def __init__(
        self, bundle: Model, cache_dir: str | Path | None = None, cache_writes: bool = False, device: str | None = None
    ):
        self.bundle = bundle
        self.model, self.meta, self.path = bundle.estimator, bundle.meta, bundle.path
        root = usable_cache_root(bundle.recorded_cache_root, cache_dir)
        self.featurizer = Featurizer(
            lambda: bundle.embedder(device), root, self.meta["embedder"]["cache_dtype"], cache_writes
        )
        self._stage1 = UserModel.stage1(self.n_heads, bundle.gate_input)
        self._lock = threading.Lock()  # one call at a time: the LRU and the embedder are shared state

    @classmethod
    def load(
        cls,
        path: str | Path,
        cache_dir: str | Path | None = None,
        cache_writes: bool = False,
        device: str | None = None,
    ) -> "RewardModel":
        """``device``: where the embedder runs (auto | cpu | cuda[:N]; None: auto, CUDA when torch sees a GPU)."""
        return cls(Model.load(path), cache_dir=cache_dir, cache_writes=cache_writes, device=device)

    @property
    def n_heads(self) -> int:
        return int(self.model.coef_.shape[0])

    def info(self) -> dict:
        emb = self.meta.get("embedder") or {}
        return {
            "n_heads": self.n_heads,
            "fingerprint_id": self.meta.get("fingerprint_id"),
            "embedder": {k: emb.get(k) for k in ("backend", "model_path", "max_length", "cache_dtype")},
            "gate_input": self.bundle.gate_input,
            "version": VERSION,
        }

    def load_user(self, path: str | Path) -> UserModel:
        """The UserModel of a profile file (any version) or a routed bundle; MicroError if bad or foreign."""
        return load_user(path, self.meta, self.path, self.model.coef_)

    def check_context(self, context: str | None, user: UserModel | None = None, row: int | None = None) -> None:
        """MicroError when the gate reads context+prompt features but neither a context nor a user is given
        (the prompt-alone feature is not what the gate was fitted on)."""
        if user is None and not context and self.bundle.gate_input == "context":
            where = f"row {row}: " if row is not None else ""
            raise MicroError(
                f"{self.path}: {where}the gate reads the user's context with the prompt (it was fitted on "
                "context+prompt features): pass --context TEXT (the user's criterion) or --user "
                "PROFILE.json"
            )

    def _gate_text(self, msgs: list[dict], user: UserModel, context: str | None) -> str | None:
        """The exact model input the user's gate reads for a prompt (None: no gate features)."""
        if not user.gate_multiplier or user.gate_input == "none":
            return None
        if user.gate_params is None and self.model.gate_kind_ == "static":
            return None
        ctx = context if user.kind == "gate" else ((context or user.context) if user.gate_input == "context" else None)
        return self.featurizer.backend.render_prompt(with_context(msgs, ctx) if ctx else msgs)

    def _mix(self, user: UserModel, x: np.ndarray | None, n: int) -> np.ndarray:
        """(n, K) weights g f(x) + omega of ``user`` on gate features ``x`` (n, p) or None."""
        from heads.gate import gate_weights

        w = np.tile(np.asarray(user.head_weights, dtype=np.float64), (n, 1))
        if user.gate_multiplier:
            if user.gate_params is None:
                f = self.model.gate_weights(x) if x is not None else np.tile(self.model.gate_weights(None)[0], (n, 1))
            else:
                f = gate_weights(user.gate_params, x, n_rows=n)
            w = w + user.gate_multiplier * f
        return w

    def rewards(self, prompts: Sequence, responses: Sequence[str], context=None, user=None) -> dict:
        """Per-head rewards (N, K), weights (N, K), residual (N,) and the user's reward (N,) per (prompt, response);
        ``context`` / ``user``: one for all rows or one per row (None: the bundle's gate on the context).
        Thread-safe (calls are serialised)."""
        with self._lock:
            return self._rewards(prompts, responses, context, user)

    def _rewards(self, prompts: Sequence, responses: Sequence[str], context, user) -> dict:
        n = len(prompts)
        if n != len(responses):
            raise MicroError(f"{len(prompts)} prompts but {len(responses)} responses")
        if n == 0:  # e.g. an OpenRLHF request split across servers
            K = self.n_heads
            return {
                "per_head": np.zeros((0, K)),
                "weights": np.zeros((0, K)),
                "reward": np.zeros(0),
                "residual": np.zeros(0),
            }
        ctxs = _per_row(context, n, "context", (str,))
        users = _per_row(user, n, "user", (UserModel,))
        for i, (c, u) in enumerate(zip(ctxs, users)):
            self.check_context(c, u, i if isinstance(context, (list, tuple)) else None)
        for u in {id(u): u for u in users if u is not None}.values():
            self._check_user(u)
        msgs = [as_messages(p) for p in prompts]
        be = self.featurizer.backend
        texts = [be.render_response(m, r) for m, r in zip(msgs, responses)]
        rows_user = [u if u is not None else self._stage1 for u in users]
        gate_texts = [self._gate_text(m, u, c) for m, u, c in zip(msgs, rows_user, ctxs)]
        gi = [i for i, t in enumerate(gate_texts) if t is not None]
        # float64 from here: a row's heads and gate then do not depend on how many rows share the call (float32
        # matmuls round differently for 1 row than for n; the vectors themselves are float32 either way)
        allv = self.featurizer.features(
            texts + [gate_texts[i] for i in gi], remember=np.r_[np.zeros(n, bool), np.ones(len(gi), bool)]
        ).astype(np.float64)
        feats, gx = allv[:n], np.full(n, None, dtype=object)
        for j, i in enumerate(gi):
            gx[i] = allv[n + j]
        per_head = self.model.head_rewards(feats)
        w, residual = np.zeros((n, self.n_heads)), np.zeros(n)
        groups: dict = {}
        for i, u in enumerate(rows_user):
            groups.setdefault((id(u), gate_texts[i] is None), []).append(i)
        for (_, no_gate), rows in groups.items():
            u, rows = rows_user[rows[0]], np.asarray(rows)
            x = None if no_gate else np.stack(list(gx[rows]))
            w[rows] = self._mix(u, x, rows.size)
            if u.v is not None:
                residual[rows] = np.asarray(feats[rows], dtype=np.float64) @ u.v
        reward = (per_head * w).sum(axis=1) + residual
        return {"per_head": per_head, "weights": w, "reward": reward, "residual": residual}

    def _check_user(self, u: UserModel) -> None:
        if u.n_heads != self.n_heads:
            raise MicroError(f"user {u.user!r}: {u.n_heads} head weights, the model has {self.n_heads} heads")
        fid = self.meta.get("fingerprint_id")
        if u.fingerprint_id is not None and u.fingerprint_id != fid:
            raise MicroError(f"user {u.user!r}: made for embedder {u.fingerprint_id}, the model's is {fid}")

    def close(self) -> None:
        self.featurizer.close()


def read_score_input(path: str | Path) -> tuple[list, list, pa.Table]:
    """(prompts, responses, table) from a JSONL / JSON / CSV / Parquet file with prompt and response columns."""
    import polars as pl

    path = Path(path)
    if not path.exists():
        raise MicroError(f"{path}: no such file")
    try:
        if path.suffix == ".parquet":
            df = pl.read_parquet(path)
        elif path.suffix == ".csv":
            df = pl.read_csv(path, infer_schema_length=None)  # types (and JSON keys) from every row, not the first
        elif path.suffix in (".jsonl", ".ndjson"):
            df = pl.read_ndjson(path, infer_schema_length=None)
        elif path.suffix == ".json":
            df = pl.read_json(path, infer_schema_length=None)
        else:
            raise MicroError(f"{path}: unsupported file type (use .jsonl, .json, .csv or .parquet)")
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        raise MicroError(f"{path}: cannot be read ({str(exc).splitlines()[0]})") from None
    for col in ("prompt", "response"):
        if col not in df.columns:
            raise MicroError(f"{path}: missing column '{col}' (have: {', '.join(df.columns)})")
    prompts, responses = df["prompt"].to_list(), df["response"].to_list()
    for i, (p, r) in enumerate(zip(prompts, responses)):
        if p is None or r is None or not p or any(isinstance(x, str) and not x.strip() for x in (p, r)):
            raise MicroError(f"{path}: row {i}: empty 'prompt' or 'response'")
    return prompts, responses, df.to_arrow()


def score_file(
    bundle: str | Path,
    input_path: str | Path,
    out: str | Path,
    *,
    context: str | None = None,
    profile_path: str | Path | None = None,
    cache_dir: str | Path | None = None,
    cache_writes: bool = False,
    device: str | None = None,
) -> Path:
    """Write the input rows plus reward, per-head rewards and weights to ``out`` (.parquet or .jsonl); ``device``:
    where the embedder runs (None: the backend's default, auto)."""
    import pyarrow.parquet as pq

    from cache.atomic import atomic_path

    out = Path(out)
    if out.suffix not in (".parquet", ".jsonl"):
        raise MicroError(f"{out}: the output must be a .parquet or .jsonl file")
    rm = RewardModel.load(bundle, cache_dir=cache_dir, cache_writes=cache_writes, device=device)
    user = rm.load_user(profile_path) if profile_path else None
    rm.check_context(context, user)
    prompts, responses, table = read_score_input(input_path)
    try:
        res = rm.rewards(prompts, responses, context=context, user=user)
    finally:
        rm.close()
    K = res["per_head"].shape[1]
    # re-scoring an output file: replace its reward columns instead of writing duplicate column names
    table = table.drop_columns(
        [c for c in table.column_names if c in ("reward", "weights", "residual") or c.startswith("reward_head_")]
    )
    table = table.append_column("reward", pa.array(res["reward"]))
    if user is not None and user.v is not None:
        table = table.append_column("residual", pa.array(res["residual"]))
    for k in range(K):
        table = table.append_column(f"reward_head_{k}", pa.array(res["per_head"][:, k]))
    table = table.append_column("weights", pa.array(res["weights"].tolist(), pa.list_(pa.float64())))
    with atomic_path(out) as tmp:
        if out.suffix == ".jsonl":
            import polars as pl

            pl.from_arrow(table).write_ndjson(tmp)
        else:
            pq.write_table(table, tmp)
    return out
