"""Conversation helpers: HH 'Human:/Assistant:' transcripts, message lists, prompt/response splitting."""

from __future__ import annotations

import json
import re
from typing import Any

from pipeline.data.recipes.base import BadRow

_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")
_HH_ROLE = {"Human": "user", "Assistant": "assistant"}
_ROLES = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "system": "system",
}


def user(text: str) -> list[dict]:
    """A one-message prompt."""
    return [{"role": "user", "content": text}]


def is_hh(text: str) -> bool:
    """True if ``text`` looks like an Anthropic HH transcript ('\\n\\nHuman: ...')."""
    return text.lstrip().startswith("Human:")


def parse_hh(text: str) -> list[dict]:
    """Split an HH transcript into messages (contents stripped); BadRow if it has no turns."""
    parts = _HH_TURN.split(text.lstrip())
    if len(parts) < 3 or parts[0].strip():
        raise BadRow("not a transcript: expected 'Human: ...' / 'Assistant: ...' turns")
    return [{"role": _HH_ROLE[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts), 2)]


def _message(item: Any) -> dict | None:
    """One {role, content} message from a dict (also ShareGPT {from, value}); None if not a message."""
    if not isinstance(item, dict):
        return None
    role, content = item.get("role", item.get("from")), item.get("content", item.get("value"))
    if not isinstance(role, str) or not isinstance(content, str) or role.lower() not in _ROLES:
        return None
    return {"role": _ROLES[role.lower()], "content": content}


def as_messages(value: Any) -> list[dict] | None:
    """A message list from a list of message dicts or a JSON string of one; None if ``value`` is not one."""
    if isinstance(value, str):
        s = value.strip()
        if not (s.startswith("[") and s.endswith("]") and '"role"' in s):
            return None
        try:
            value = json.loads(s)
        except ValueError:
            return None
    if not isinstance(value, list) or not value:
        return None
    msgs = [_message(item) for item in value]
    return None if any(m is None for m in msgs) else msgs


def as_turns(value: Any, name: str) -> list[dict] | None:
    """``value`` as a conversation (message list or HH transcript), or None if it is plain text."""
    msgs = as_messages(value)
    if msgs is not None:
        return msgs
    if isinstance(value, str):
        return parse_hh(value) if is_hh(value) else None
    raise BadRow(f"not text: field '{name}' is {type(value).__name__}")


def prompt_messages(value: Any, name: str = "prompt") -> list[dict]:
    """A prompt from plain text (one user turn), an HH transcript, or a message list."""
    turns = as_turns(value, name)
    return turns if turns is not None else user(value)


def final_turn(value: Any, name: str) -> str:
    """The response text: plain text as is, or the final assistant turn of a conversation."""
    turns = as_turns(value, name)
    if turns is None:
        return value
    if turns[-1]["role"] != "assistant":
        raise BadRow(f"no final assistant turn: field '{name}'")
    return turns[-1]["content"]


def split_transcripts(chosen: Any, rejected: Any, names: tuple[str, str] = ("chosen", "rejected")):
    """(prompt, chosen, rejected) from two full transcripts sharing everything but the last assistant turn."""
    a, b = as_turns(chosen, names[0]), as_turns(rejected, names[1])
    if a is None or b is None:
        which = names[0] if a is None else names[1]
        raise BadRow(f"missing field: 'prompt' (field '{which}' is not a full transcript)")
    for turns, name in ((a, names[0]), (b, names[1])):
        if turns[-1]["role"] != "assistant":
            raise BadRow(f"no final assistant turn: field '{name}'")
    if a[:-1] != b[:-1]:
        raise BadRow("transcripts differ before the final assistant turn")
    if len(a) < 2:
        raise BadRow(f"missing field: 'prompt' (field '{names[0]}' has no turn before the response)")
    return a[:-1], a[-1]["content"], b[-1]["content"]


def resolve(prompt: Any, chosen: Any, rejected: Any, names: tuple[str, str] = ("chosen", "rejected")):
    """(prompt messages, chosen text, rejected text) from any supported shape; ``prompt`` may be None."""
    if prompt is None or (isinstance(prompt, str) and not prompt.strip()):
        return split_transcripts(chosen, rejected, names)
    return prompt_messages(prompt), final_turn(chosen, names[0]), final_turn(rejected, names[1])
