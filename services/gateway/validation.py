"""Validation of the public API's input; every error names the offending field."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from shared.web import Problem

MAX_BODY_BYTES = 64 * 1024
MAX_ID = 128
MAX_TEXT = 4096
MAX_METADATA_BYTES = 4096
MAX_WAIT_SECONDS = 30.0
FIELDS = frozenset({"user_id", "text", "conversation_id", "message_id", "metadata"})


@dataclass(frozen=True, slots=True)
class MessageRequest:
    user_id: str
    text: str
    conversation_id: str
    message_id: str
    metadata: dict[str, Any]


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


def parse_message(data: dict[str, Any]) -> MessageRequest:
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise bad_request(f"{unknown[0]}: unknown field (allowed: {', '.join(sorted(FIELDS))})")
    user_id = _string(data, "user_id", MAX_ID, required=True)
    text = _string(data, "text", MAX_TEXT, required=True)
    assert user_id is not None and text is not None
    conversation_id = _string(data, "conversation_id", MAX_ID, required=False) or f"user:{user_id}"
    message_id = _string(data, "message_id", MAX_ID, required=False) or uuid.uuid4().hex
    metadata = data.get("metadata", {})
    if not isinstance(metadata, dict):
        raise bad_request("metadata: must be a JSON object")
    size = len(orjson.dumps(metadata))
    if size > MAX_METADATA_BYTES:
        raise bad_request(f"metadata: must be at most {MAX_METADATA_BYTES} bytes serialised (got {size})")
    return MessageRequest(user_id, text, conversation_id, message_id, metadata)


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


def parse_conversation_id(raw: str) -> str:
    if not raw.strip() or len(raw) > MAX_ID:
        raise bad_request(f"conversation_id: must be 1-{MAX_ID} characters, not blank")
    return raw
