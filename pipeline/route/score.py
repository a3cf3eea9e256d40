"""Rewards for (prompt, response) rows: per head and mixed under a context or a user profile.

Python API::

    from pipeline.route.score import RewardModel
    rm = RewardModel.load("runs/dsp/model-routed")
    out = rm.rewards(prompts, responses, context="I am an academic ...")   # or profile="profiles/alice.json"
    out["reward"]     # (N,) Σ_k f_k r_k, the mixed reward
    out["per_head"]   # (N, K) r_k = w_k·φ(x, a)
    out["weights"]    # (N, K) mixture weights f used for the mix
    out["residual"]   # (N,) v·φ(x, a), only with an adapted profile (then reward = Σ_k w_k r_k + v·φ)
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa

from pipeline.core.model import Model
from pipeline.embed.backends.base import with_context
from pipeline.errors import MicroError


def as_messages(prompt) -> list[dict]:
    """A prompt given as text or as a message list → message list."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, (list, tuple)) and all(isinstance(m, dict) and "content" in m for m in prompt):
        return [{"role": m.get("role", "user"), "content": m["content"]} for m in prompt]
    raise MicroError(f"prompt must be a string or a list of {{role, content}} messages, got {type(prompt).__name__}")


class RewardModel:
    """A Stage-1 or routed bundle plus its embedder, ready to score responses."""

    def __init__(self, bundle: Model):
        self.bundle = bundle
        self.model, self.meta, self.path = bundle.estimator, bundle.meta, bundle.path
        self._backend = self._store = None

    @classmethod
    def load(cls, path: str | Path) -> "RewardModel":
        return cls(Model.load(path))

    def _embed(self, texts: list[str]) -> np.ndarray:
        from pipeline.embed.embed import embed_texts, open_store

        if self._backend is None:
            self._backend = self.bundle.embedder()
            self._store = open_store(self.bundle.cache_root, self._backend, self.meta["embedder"]["cache_dtype"])
        vecs, _ = embed_texts(self._store, self._backend, texts)
        return vecs

    def weights(self, prompts: list[list[dict]], context: str | None = None, profile=None) -> np.ndarray:
        """(N, K) mixture weights: a profile's, or the gate's on context+prompt (prompt alone without context).
        An adapted profile (pipeline.route.adapt) gives g f(x, c) + omega with its own gate on its user's context."""
        K = self.model.coef_.shape[0]
        if getattr(profile, "head_weights", None) is not None:
            return self._adapted_weights(prompts, profile)
        if profile is not None:
            return np.tile(np.asarray(profile.weights_, dtype=np.float64), (len(prompts), 1))
        if self.model.gate_kind_ == "static":
            return np.tile(self.model.gate_weights(None)[0], (len(prompts), 1))
        self.check_context(context, profile)
        b = self._backend_for_render()
        msgs = [with_context(p, context) if context else p for p in prompts]
        x = self._embed([b.render_prompt(m) for m in msgs])
        w = self.model.gate_weights(x)
        assert w.shape[1] == K
        return w

    def check_context(self, context: str | None, profile=None) -> None:
        """MicroError when the gate reads context+prompt features but neither a context nor a profile is given
        (the prompt-alone feature is not what the gate was fitted on)."""
        if (
            profile is None
            and not context
            and self.model.gate_kind_ != "static"
            and self.meta.get("gate_input") == "context"
        ):
            raise MicroError(
                f"{self.path}: the gate reads the user's context with the prompt (it was fitted on "
                "context+prompt features): pass --context TEXT (the user's criterion) or --user "
                "PROFILE.json"
            )

    def _adapted_weights(self, prompts: list[list[dict]], profile) -> np.ndarray:
        from heads.gate import gate_weights

        w = np.tile(profile.head_weights, (len(prompts), 1))
        if profile.gate_multiplier:
            x = None
            if profile.gate_input != "none":
                ctx = profile.context if profile.gate_input == "context" else None
                b = self._backend_for_render()
                x = self._embed([b.render_prompt(with_context(p, ctx) if ctx else p) for p in prompts])
            w = w + profile.gate_multiplier * gate_weights(profile.gate_params, x, n_rows=len(prompts))
        return w

    def _backend_for_render(self):
        if self._backend is None:
            self._embed([])
        return self._backend

    def rewards(self, prompts: Sequence, responses: Sequence[str], context: str | None = None, profile=None) -> dict:
        """Per-head rewards (N, K), weights (N, K) and the mixed reward (N,) for each (prompt, response)."""
        if len(prompts) != len(responses):
            raise MicroError(f"{len(prompts)} prompts but {len(responses)} responses")
        self.check_context(context, profile)
        msgs = [as_messages(p) for p in prompts]
        b = self._backend_for_render()
        feats = self._embed([b.render_response(m, r) for m, r in zip(msgs, responses)])
        per_head = self.model.head_rewards(feats)
        w = self.weights(msgs, context, profile)
        out = {"per_head": per_head, "weights": w, "reward": (per_head * w).sum(axis=1)}
        v = getattr(profile, "v", None)
        if v is not None:  # adapted profile: reward = sum_k w_k r_k + v . phi
            out["residual"] = np.asarray(feats, dtype=np.float64) @ v
            out["reward"] = out["reward"] + out["residual"]
        return out

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()


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
) -> Path:
    """Write the input rows plus reward, per-head rewards and weights to ``out`` (.parquet or .jsonl)."""
    import pyarrow.parquet as pq

    from cache.atomic import atomic_path
    from pipeline.route.profiles import load_profile

    out = Path(out)
    if out.suffix not in (".parquet", ".jsonl"):
        raise MicroError(f"{out}: the output must be a .parquet or .jsonl file")
    rm = RewardModel.load(bundle)
    profile = load_profile(profile_path, rm.meta) if profile_path else None
    rm.check_context(context, profile)
    prompts, responses, table = read_score_input(input_path)
    try:
        res = rm.rewards(prompts, responses, context=context, profile=profile)
    finally:
        rm.close()
    K = res["per_head"].shape[1]
    # re-scoring an output file: replace its reward columns instead of writing duplicate column names
    table = table.drop_columns(
        [c for c in table.column_names if c in ("reward", "weights", "residual") or c.startswith("reward_head_")]
    )
    table = table.append_column("reward", pa.array(res["reward"]))
    if "residual" in res:
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
