"""Request bodies of `micro serve` → scoring items, with every bad field reported by name and row.

Two protocols:

- OpenRLHF ``POST /get_reward``: ``{"query": [str], "prompts": [str], "labels": [any]}``; the response is
  ``query[i]`` minus its ``prompts[i]`` prefix with trailing special tokens removed; ``labels[i]`` is the user:
  a string is the context, an object ``{"context": str?, "user": str?}`` names a context and/or a profile.
- ``POST /v1/rewards``: ``{"items": [{"prompt": str | messages, "response": str, "context": str?, "user": str?}]}``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import MicroError

SPECIAL_TOKENS = ("</s>", "<|eot_id|>", "<|im_end|>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|end|>")


class RequestError(MicroError):
    """A bad request: HTTP ``status``, the ``field`` (and ``row``) it is about."""

    def __init__(self, message: str, field: str, row: int | None = None, status: int = 422):
        where = f"{field}[{row}]" if row is not None else field
        super().__init__(f"{where}: {message}")
        self.field, self.row, self.status = field, row, status

    def body(self) -> dict:
        return {"error": str(self), "field": self.field, "row": self.row}


@dataclass(frozen=True)
class Item:
    """One row to score: prompt (text or messages), response text, context, user (a profile name)."""

    prompt: object
    response: str
    context: str | None = None
    user: str | None = None


def strip_special(text: str, extra: tuple = ()) -> str:
    """``text`` without the special tokens (and whitespace) at its end, repeated: 'hi</s><|eot_id|>' → 'hi'."""
    tokens = tuple(t for t in (*SPECIAL_TOKENS, *extra) if t)
    while True:
        stripped = text.rstrip()
        for t in tokens:
            if stripped.endswith(t):
                stripped = stripped[: -len(t)]
                break
        else:
            return stripped
        text = stripped


def _list(body: dict, key: str, max_rows: int) -> list:
    if key not in body:
        raise RequestError("missing", key)
    value = body[key]
    if not isinstance(value, list):
        raise RequestError(f"must be a list, got {type(value).__name__}", key)
    if len(value) > max_rows:
        raise RequestError(f"{len(value)} rows, the server takes at most {max_rows} per request", key, status=413)
    return value


def _optional_str(value, field: str, row: int) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise RequestError(f"must be a string, got {type(value).__name__}", field, row)
    return value


def _label(label, row: int) -> tuple[str | None, str | None]:
    """(context, user) of one OpenRLHF label."""
    if label is None or isinstance(label, str):
        return (label or None), None
    if isinstance(label, dict):
        unknown = sorted(set(label) - {"context", "user"})
        if unknown:
            raise RequestError(f"unknown key {unknown[0]!r} (use 'context' and/or 'user')", "labels", row)
        return _optional_str(label.get("context"), "labels.context", row), _optional_str(
            label.get("user"), "labels.user", row
        )
    raise RequestError(
        f"must be a string, an object {{context, user}} or null, got {type(label).__name__}", "labels", row
    )


def parse_openrlhf(body, max_rows: int, eos: tuple = ()) -> list[Item]:
    """Items of an OpenRLHF ``/get_reward`` body (``labels`` optional: absent = no label on any row)."""
    if not isinstance(body, dict):
        raise RequestError(f"the body must be a JSON object, got {type(body).__name__}", "body")
    unknown = sorted(set(body) - {"query", "prompts", "labels"})
    if unknown:
        raise RequestError(f"unknown field {unknown[0]!r} (expected query, prompts, labels)", unknown[0])
    query, prompts = _list(body, "query", max_rows), _list(body, "prompts", max_rows)
    labels = _list(body, "labels", max_rows) if body.get("labels") is not None else [None] * len(query)
    for key, value in (("prompts", prompts), ("labels", labels)):
        if len(value) != len(query):
            raise RequestError(f"{len(value)} entries but 'query' has {len(query)}", key)
    items = []
    for i, (q, p, lab) in enumerate(zip(query, prompts, labels)):
        if not isinstance(q, str):
            raise RequestError(f"must be a string, got {type(q).__name__}", "query", i)
        if not isinstance(p, str):
            raise RequestError(f"must be a string, got {type(p).__name__}", "prompts", i)
        if not p.strip():
            raise RequestError("empty prompt", "prompts", i)
        if not q.startswith(p):
            raise RequestError("does not start with its prompt (prompts[i])", "query", i)
        response = strip_special(q[len(p) :], eos)
        if not response.strip():
            raise RequestError("empty response (the query is its prompt alone)", "query", i)
        context, user = _label(lab, i)
        items.append(Item(p, response, context, user))
    return items


def _prompt(value, row: int):
    if isinstance(value, str):
        if not value.strip():
            raise RequestError("empty prompt", "items.prompt", row)
        return value
    if isinstance(value, list) and value:
        for m in value:
            if not (isinstance(m, dict) and isinstance(m.get("content"), str) and isinstance(m.get("role", ""), str)):
                raise RequestError("messages must be objects {role: str, content: str}", "items.prompt", row)
        return tuple((m.get("role", "user"), m["content"]) for m in value)
    raise RequestError(f"must be a string or a non-empty message list, got {type(value).__name__}", "items.prompt", row)


def parse_items(body, max_rows: int) -> list[Item]:
    """Items of a ``/v1/rewards`` body."""
    if not isinstance(body, dict):
        raise RequestError(f"the body must be a JSON object, got {type(body).__name__}", "body")
    unknown = sorted(set(body) - {"items"})
    if unknown:
        raise RequestError(f"unknown field {unknown[0]!r} (expected items)", unknown[0])
    items = []
    for i, it in enumerate(_list(body, "items", max_rows)):
        if not isinstance(it, dict):
            raise RequestError(f"must be an object, got {type(it).__name__}", "items", i)
        bad = sorted(set(it) - {"prompt", "response", "context", "user"})
        if bad:
            raise RequestError(f"unknown key {bad[0]!r}", "items", i)
        if "prompt" not in it:
            raise RequestError("missing", "items.prompt", i)
        response = it.get("response")
        if not isinstance(response, str):
            raise RequestError(f"must be a string, got {type(response).__name__}", "items.response", i)
        if not response.strip():
            raise RequestError("empty response", "items.response", i)
        ctx = _optional_str(it.get("context"), "items.context", i)
        items.append(Item(_prompt(it["prompt"], i), response, ctx, _optional_str(it.get("user"), "items.user", i)))
    return items


def as_prompt(prompt):
    """An item's prompt for RewardModel: text, or the message list back from its hashable tuple form."""
    if isinstance(prompt, tuple):
        return [{"role": r, "content": c} for r, c in prompt]
    return prompt
