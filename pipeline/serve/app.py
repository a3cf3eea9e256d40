"""The FastAPI app of `micro serve`: OpenRLHF ``/get_reward``, ``/v1/rewards``, ``/health``, ``/info``,
``/users/reload``. Every bad request is a 4xx JSON ``{"error": "FIELD[ROW]: ...", "field": ..., "row": ...}``."""

import hmac
import json
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.errors import MicroError, first_line
from pipeline.serve.batch import load_users, resolve, score_items
from pipeline.serve.batcher import MAX_BATCH, MAX_WAIT_MS, MicroBatcher
from pipeline.serve.protocol import RequestError, parse_items, parse_openrlhf

VERSION = "0.1.0"


@dataclass
class ServeConfig:
    """What the server needs besides the model (defaults: the command's)."""

    users_dir: Path | None = None
    context: str | None = None
    scores: str = "raw"  # raw | sigmoid
    max_batch: int = MAX_BATCH
    max_wait_ms: float = MAX_WAIT_MS
    api_key: str | None = None
    max_body_bytes: int = 8 * 1024 * 1024
    max_rows: int = 4096
    users: dict = field(default_factory=dict)


def tokenizer_eos(rm) -> tuple:
    """The backend tokenizer's eos token, when it has one (stripped from OpenRLHF queries)."""
    tok = getattr(rm.featurizer.backend, "tokenizer", None)
    eos = getattr(tok, "eos_token", None)
    return (eos,) if isinstance(eos, str) and eos else ()


def create_app(rm, config: ServeConfig):
    """The app for RewardModel ``rm``; ``app.state.batcher`` counts scoring calls."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    lock = threading.Lock()
    state = {"users": dict(config.users)}
    batcher = MicroBatcher(
        lambda rows: score_items(rm, [r[0] for r in rows], [r[1] for r in rows]), config.max_batch, config.max_wait_ms
    )
    eos = tokenizer_eos(rm)  # loads the embedder before the first request

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="micro serve", version=VERSION, lifespan=lifespan)
    app.state.batcher = batcher

    def error(exc: RequestError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    def authorised(request: Request) -> bool:
        if not config.api_key:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {config.api_key}".encode())

    async def read_json(request: Request):
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > config.max_body_bytes:
            raise RequestError(f"{declared} bytes, the limit is {config.max_body_bytes}", "body", status=413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > config.max_body_bytes:
                raise RequestError(f"over {config.max_body_bytes} bytes", "body", status=413)
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestError(f"malformed JSON ({first_line(exc)})", "body", status=400) from None

    async def scored(request: Request, parse, field: str):
        """(items, arrays) of a request; RequestError for anything wrong with it."""
        if not authorised(request):
            raise RequestError("missing or wrong bearer token", "authorization", status=401)
        items = parse(await read_json(request))
        keys = resolve(rm, items, state["users"], config.context, field)
        try:
            return items, await batcher.submit(list(zip(items, keys)))
        except MicroError as exc:
            raise RequestError(first_line(exc), field) from None

    def head_lists(res: dict) -> dict:
        K = res["per_head"].shape[1]
        logs = {f"reward_head_{k}": res["per_head"][:, k].tolist() for k in range(K)}
        logs |= {f"weight_head_{k}": res["weights"][:, k].tolist() for k in range(K)}
        logs["residual"] = res["residual"].tolist()
        return logs

    @app.post("/get_reward")
    async def get_reward(request: Request):
        try:
            _, res = await scored(request, lambda b: parse_openrlhf(b, config.max_rows, eos), "labels")
        except RequestError as exc:
            return error(exc)
        r = np.asarray(res["reward"], dtype=np.float64)
        scores = 1.0 / (1.0 + np.exp(-r)) if config.scores == "sigmoid" else r
        return {"rewards": r.tolist(), "scores": scores.tolist(), "extra_logs": head_lists(res)}

    @app.post("/v1/rewards")
    async def v1_rewards(request: Request):
        try:
            items, res = await scored(request, lambda b: parse_items(b, config.max_rows), "items")
        except RequestError as exc:
            return error(exc)
        return {
            "items": [
                {
                    "reward": float(res["reward"][i]),
                    "per_head": res["per_head"][i].tolist(),
                    "weights": res["weights"][i].tolist(),
                    "residual": float(res["residual"][i]),
                }
                for i in range(len(items))
            ]
        }

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/info")
    async def info(request: Request):
        if not authorised(request):
            return error(RequestError("missing or wrong bearer token", "authorization", status=401))
        return rm.info() | {
            "users": sorted(state["users"]),
            "scores": config.scores,
            "scoring_calls": batcher.calls,
            "rows_scored": batcher.rows,
            "scoring_seconds": round(batcher.busy, 6),
            "embedder_calls": rm.featurizer.calls,
            "server_version": VERSION,
        }

    @app.post("/users/reload")
    async def reload_users(request: Request):
        if not authorised(request):
            return error(RequestError("missing or wrong bearer token", "authorization", status=401))
        if config.users_dir is None:
            return error(RequestError("the server was started without --users DIR", "users", status=409))
        try:
            with lock:
                new = load_users(rm, config.users_dir)
        except MicroError as exc:  # keep serving the users loaded before
            return error(RequestError(first_line(exc), "users"))
        state["users"] = new
        return {"users": sorted(new)}

    return app
