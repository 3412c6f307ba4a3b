"""Validation of the public API's input; every error names the offending field."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from shared.web import Problem

MAX_BODY_BYTES = 64 * 1024
MAX_ID = 128
MAX_TEXT = 4096
MAX_METADATA_BYTES = 4096
# Far below the JSON encoder's own limit (254), which the metadata meets again nested in messages.
MAX_METADATA_DEPTH = 32
MAX_WAIT_SECONDS = 30.0
FIELDS = frozenset({"user_id", "text", "conversation_id", "message_id", "metadata", "option"})
# A message without `conversation_id` is in its user's conversation, `user:<user_id>`: up to
# MAX_ID + 5 characters, which the answer gives and the events path takes back.
DERIVED_CONVERSATION_PREFIX = "user:"
# C0, DEL, C1 and the Unicode line breaks: never in an id (they would split an SSE line or a log line).
CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True, slots=True)
class MessageRequest:
    user_id: str
    text: str
    conversation_id: str
    message_id: str
    metadata: dict[str, Any]
    # The id of an option the last reply offered, chosen ("" when the text was typed).
    option: str


def bad_request(detail: str) -> Problem:
    return Problem(400, detail, title="Invalid request")


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"body: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise bad_request("body: must be a JSON object")
    return data


def _string(data: dict[str, Any], name: str, max_length: int, *, required: bool) -> str | None:
    if name not in data:
        if required:
            raise bad_request(f"{name}: is required")
        return None
    value = data[name]
    if not isinstance(value, str):
        raise bad_request(f"{name}: must be a string")
    if not value.strip():
        raise bad_request(f"{name}: must not be empty or blank")
    if len(value) > max_length:
        raise bad_request(f"{name}: must be at most {max_length} characters (got {len(value)})")
    return value


def check_id(name: str, value: str) -> str:
    """An id (user, conversation, message, option): 1-128 characters, not blank, no control characters."""
    if not value.strip() or len(value) > MAX_ID:
        raise bad_request(f"{name}: must be 1-{MAX_ID} characters, not blank")
    if CONTROL_RE.search(value):
        raise bad_request(f"{name}: must not contain control characters (line breaks, tabs, ...)")
    return value


def parse_message(data: dict[str, Any]) -> MessageRequest:
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise bad_request(f"{unknown[0]}: unknown field (allowed: {', '.join(sorted(FIELDS))})")
    user_id = _string(data, "user_id", MAX_ID, required=True)
    text = _string(data, "text", MAX_TEXT, required=True)
    assert user_id is not None and text is not None
    check_id("user_id", user_id)
    conversation_id = _string(data, "conversation_id", MAX_ID, required=False)
    message_id = _string(data, "message_id", MAX_ID, required=False)
    conversation_id = check_id("conversation_id", conversation_id) if conversation_id else derived_conversation(user_id)
    message_id = check_id("message_id", message_id) if message_id else uuid.uuid4().hex
    option = _string(data, "option", MAX_ID, required=False)
    option = check_id("option", option) if option is not None else ""
    metadata = data.get("metadata", {})
    if not isinstance(metadata, dict):
        raise bad_request("metadata: must be a JSON object")
    if _too_deep(metadata, MAX_METADATA_DEPTH):
        raise bad_request(f"metadata: must be nested at most {MAX_METADATA_DEPTH} levels deep")
    size = len(orjson.dumps(metadata))
    if size > MAX_METADATA_BYTES:
        raise bad_request(f"metadata: must be at most {MAX_METADATA_BYTES} bytes serialised (got {size})")
    return MessageRequest(user_id, text, conversation_id, message_id, metadata, option)


def _too_deep(value: Any, limit: int) -> bool:
    """Whether objects and arrays nest deeper than `limit` (iterative: the parser allows 1024 levels)."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def parse_wait(raw: str | None) -> float:
    if raw is None or raw == "":
        return 0.0
    try:
        wait = float(raw)
    except ValueError:
        raise bad_request("wait: must be a number of seconds from 0 to 30") from None
    if not 0.0 <= wait <= MAX_WAIT_SECONDS:  # also rejects nan
        raise bad_request("wait: must be a number of seconds from 0 to 30")
    return wait


def derived_conversation(user_id: str) -> str:
    return f"{DERIVED_CONVERSATION_PREFIX}{user_id}"


def parse_conversation_id(raw: str) -> str:
    """A conversation id from a path: one a caller chose (1-128 characters), or one derived from
    a user id (longer than 128 characters for a long one)."""
    if len(raw) > MAX_ID and raw.startswith(DERIVED_CONVERSATION_PREFIX):
        return derived_conversation(check_id("conversation_id", raw.removeprefix(DERIVED_CONVERSATION_PREFIX)))
    return check_id("conversation_id", raw)


NAME_MAX_CHARS = 64


def display_name(name: str) -> str:
    """A customer's name as a channel gave it (WhatsApp profile, Telegram first name), fit to be
    shown to agents: control characters out, spaces collapsed, at most NAME_MAX_CHARS."""
    return " ".join(CONTROL_RE.sub(" ", name).split())[:NAME_MAX_CHARS]
