"""The OpenAPI 3 document of the gateway's public API (served at /openapi.json)."""

from __future__ import annotations

from typing import Any

import orjson

from services.gateway.validation import MAX_ID, MAX_TEXT

_ID = {"type": "string", "minLength": 1, "maxLength": MAX_ID, "pattern": r"\S"}
_PROBLEM = {"$ref": "#/components/schemas/Problem"}


def _problem(description: str, retry_after: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/problem+json": {"schema": _PROBLEM}},
    }
    if retry_after:
        response["headers"] = {"Retry-After": {"schema": {"type": "string"}, "description": "seconds"}}
    return response


DOCUMENT: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "ia-atendimento-bot gateway",
        "version": "1.0.0",
        "description": "Send customer messages and receive the bot's replies (web and server-to-server channel).",
    },
    "paths": {
        "/v1/messages": {
            "post": {
                "operationId": "postMessage",
                "summary": "Queue a message; optionally wait for the reply",
                "parameters": [
                    {
                        "name": "wait",
                        "in": "query",
                        "required": False,
                        "description": "seconds to hold the request for the reply",
                        "schema": {"type": "number", "minimum": 0, "maximum": 30, "default": 0},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/MessageIn"}}},
                },
                "responses": {
                    "200": {
                        "description": "answered within `wait`",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Answered"}}},
                    },
                    "202": {
                        "description": "accepted and durably queued",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Queued"}}},
                    },
                    "400": _problem("bad JSON or field"),
                    "401": _problem("missing or wrong API key"),
                    "413": _problem("body over 64 KiB"),
                    "415": _problem("not application/json"),
                    "429": _problem("rate limited", retry_after=True),
                    "503": _problem("broker or Redis unreachable; nothing accepted", retry_after=True),
                },
            }
        },
        "/v1/conversations/{conversation_id}/events": {
            "get": {
                "operationId": "conversationEvents",
                "summary": "Server-Sent Events: one `reply` event per reply in the conversation",
                "parameters": [
                    {"name": "conversation_id", "in": "path", "required": True, "schema": _ID},
                ],
                "responses": {
                    "200": {
                        "description": "event stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "400": _problem("bad conversation id"),
                    "401": _problem("missing or wrong API key"),
                    "503": _problem("broker unreachable", retry_after=True),
                },
            }
        },
    },
    "components": {
        "schemas": {
            "MessageIn": {
                "type": "object",
                "additionalProperties": False,
                "required": ["user_id", "text"],
                "properties": {
                    "user_id": _ID,
                    "text": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT, "pattern": r"\S"},
                    "conversation_id": _ID,
                    "message_id": _ID,
                    "metadata": {"type": "object", "description": "at most 4 KiB serialised"},
                },
            },
            "Reply": {
                "type": "object",
                "required": ["text", "engine", "confidence", "handoff", "sources"],
                "properties": {
                    "text": {"type": "string"},
                    "engine": {"type": "string"},
                    "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                    "handoff": {"type": "boolean"},
                    "sources": {"type": "array", "items": {"type": "string"}},
                },
            },
            "Answered": {
                "type": "object",
                "required": ["message_id", "conversation_id", "status", "reply", "latency_ms"],
                "properties": {
                    "message_id": {"type": "string"},
                    "conversation_id": {"type": "string"},
                    "status": {"type": "string", "enum": ["answered"]},
                    "reply": {"$ref": "#/components/schemas/Reply"},
                    "latency_ms": {"type": "number"},
                    "duplicate": {"type": "boolean"},
                },
            },
            "Queued": {
                "type": "object",
                "required": ["message_id", "conversation_id", "status"],
                "properties": {
                    "message_id": {"type": "string"},
                    "conversation_id": {"type": "string"},
                    "status": {"type": "string", "enum": ["queued"]},
                    "duplicate": {"type": "boolean"},
                },
            },
            "Problem": {
                "type": "object",
                "required": ["type", "title", "status", "detail"],
                "properties": {
                    "type": {"type": "string"},
                    "title": {"type": "string"},
                    "status": {"type": "integer"},
                    "detail": {"type": "string"},
                },
            },
        }
    },
}

OPENAPI_BYTES = orjson.dumps(DOCUMENT)
