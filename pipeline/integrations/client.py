"""What the adapters share: the text of TRL/verl completions, and a scorer that is either a `micro serve` URL
(``POST /v1/rewards``) or a bundle scored in-process (loaded lazily, never pickled)."""

from __future__ import annotations

import atexit
import os
import threading
from pathlib import Path

import numpy as np

from pipeline.errors import MicroError

KEY_ENV = "MICRO_API_KEY"


def is_url(target) -> bool:
    return isinstance(target, str) and target.startswith(("http://", "https://"))


def completion_text(completion) -> str:
    """A completion as text: a string, or (conversational) the contents of its messages joined."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, (list, tuple)) and all(isinstance(m, dict) and "content" in m for m in completion):
        return "".join(str(m["content"]) for m in completion)
    raise MicroError(f"completion must be a string or a message list, got {type(completion).__name__}")


def items_of(prompts, completions, contexts=None, users=None) -> list[dict]:
    """``/v1/rewards`` items: one per (prompt, completion), with the row's context and user when given."""
    if len(prompts) != len(completions):
        raise MicroError(f"{len(prompts)} prompts but {len(completions)} completions")
    items = []
    for i, (p, c) in enumerate(zip(prompts, completions)):
        item = {"prompt": list(p) if isinstance(p, (list, tuple)) else p, "response": completion_text(c)}
        if contexts is not None and contexts[i]:
            item["context"] = contexts[i]
        if users is not None and users[i]:
            item["user"] = users[i]
        items.append(item)
    return items


def headers(api_key: str | None) -> dict:
    key = api_key or os.environ.get(KEY_ENV)
    return {"Authorization": f"Bearer {key}"} if key else {}


def arrays(answer: dict) -> dict:
    """{"reward": (N,), "per_head": (N, K), ...} of a ``/v1/rewards`` answer."""
    items = answer["items"]
    return {
        k: np.asarray([it[k] for it in items], dtype=np.float64) for k in ("reward", "per_head", "weights", "residual")
    }


def post_json(url: str, body: dict, api_key: str | None = None, timeout: float = 120.0) -> dict:
    """The JSON answer of POSTing ``body`` to ``url`` on this process's one keep-alive client; MicroError unless 200.

    Creating an ``httpx.Client`` costs ~45 ms (its TLS context), more than scoring a row: it is made once per
    process (after a fork, anew) and shared by threads."""
    r = _sync_client().post(url, json=body, headers=headers(api_key), timeout=timeout)
    if r.status_code != 200:
        raise MicroError(f"{url}: HTTP {r.status_code}: {r.text[:300]}")
    return r.json()


async def apost_json(url: str, body: dict, api_key: str | None = None, timeout: float = 120.0) -> dict:
    """:func:`post_json` from a coroutine, on aiohttp: one ``httpx.AsyncClient`` per call costs ~45 ms and a
    shared one with 64 requests in flight serves ~100 requests/s here, aiohttp ~1,800 (one cheap session per call,
    so nothing is bound to an event loop that verl or TRL may close)."""
    try:
        import aiohttp
    except ImportError:
        raise MicroError("the async adapters need aiohttp: pip install 'micro-rm[serve]'") from None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async with session.post(url, json=body, headers=headers(api_key)) as r:
            if r.status != 200:
                raise MicroError(f"{url}: HTTP {r.status}: {(await r.text())[:300]}")
            return await r.json()


_CLIENT: dict = {}
_CLIENT_LOCK = threading.Lock()


def _sync_client():
    try:
        import httpx
    except ImportError:
        raise MicroError("the HTTP adapters need httpx: pip install 'micro-rm[serve]'") from None
    with _CLIENT_LOCK:
        if _CLIENT.get("pid") != os.getpid():
            if "pid" not in _CLIENT:
                atexit.register(_close_client)  # its keep-alive sockets closed, not left to the interpreter's exit
            _CLIENT.update(pid=os.getpid(), client=httpx.Client())
        return _CLIENT["client"]


def _close_client() -> None:
    with _CLIENT_LOCK:
        if _CLIENT.get("pid") == os.getpid():
            _CLIENT.pop("client").close()
            _CLIENT.pop("pid")


def post_items(url: str, items: list[dict], api_key: str | None = None, timeout: float = 120.0) -> dict:
    """Arrays (:func:`arrays`) of ``items`` scored by the `micro serve` at ``url`` (``POST /v1/rewards``)."""
    return arrays(post_json(url.rstrip("/") + "/v1/rewards", {"items": items}, api_key, timeout))


async def apost_items(url: str, items: list[dict], api_key: str | None = None, timeout: float = 120.0) -> dict:
    """:func:`post_items` from a coroutine."""
    return arrays(await apost_json(url.rstrip("/") + "/v1/rewards", {"items": items}, api_key, timeout))


class InProcess:
    """A bundle scored in this process; ``users``: a folder of NAME.json profiles (a user value may also be a
    profile path). Pickles as its paths only: the RewardModel is loaded on first use in each process."""

    def __init__(self, bundle, users: str | Path | None = None, context: str | None = None):
        self.bundle, self.users, self.context = str(bundle), users, context
        self._rm, self._users = None, {}

    def __getstate__(self):
        return {"bundle": self.bundle, "users": self.users, "context": self.context}

    def __setstate__(self, state):
        self.__init__(**state)

    @property
    def rm(self):
        if self._rm is None:
            from pipeline.route.score import RewardModel

            self._rm = RewardModel.load(self.bundle)
        return self._rm

    def user(self, name):
        if name not in self._users:
            path = Path(name) if str(name).endswith(".json") else Path(self.users or ".") / f"{name}.json"
            self._users[name] = self.rm.load_user(path)
        return self._users[name]

    def score(self, items: list[dict]) -> dict:
        from pipeline.route.score import as_messages

        return self.rm.rewards(
            [as_messages(it["prompt"]) for it in items],
            [it["response"] for it in items],
            context=[it.get("context") or self.context for it in items],
            user=[self.user(it["user"]) if it.get("user") else None for it in items],
        )
