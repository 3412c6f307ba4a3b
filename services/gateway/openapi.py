"""The OpenAPI 3 document of the gateway's public API (served at /openapi.json)."""

from __future__ import annotations

from typing import Any

import orjson

from services.gateway.openapi_outbound import outbound_schemas
from services.gateway.validation import DERIVED_CONVERSATION_PREFIX, MAX_ID, MAX_TEXT
from shared.messages import REPLY_KINDS

# "Not blank" as the gateway checks it (Python's str.strip): the document's regex dialect (ECMA)
# counts U+FEFF as white space and U+001C-U+001F, U+0085 as not, Python the other way round.
_NOT_BLANK = r"[^\s\x1c-\x1f\x85]|\ufeff"
# An id: no control characters (C0, DEL, C1, U+2028/U+2029) anywhere, and not blank.
_ID_CHAR = r"[^\x00-\x1f\x7f-\x9f\u2028\u2029]"
_ID_PATTERN = rf"^{_ID_CHAR}*(?:[^\s\x00-\x1f\x7f-\x9f\u2028\u2029]|\ufeff){_ID_CHAR}*$"
_ID = {"type": "string", "minLength": 1, "maxLength": MAX_ID, "pattern": _ID_PATTERN}
# A conversation id in a path: one the caller chose, or `user:<user_id>` (no conversation_id sent).
_CONVERSATION_ID = {
    "anyOf": [
        _ID,
        {
            "type": "string",
            "maxLength": len(DERIVED_CONVERSATION_PREFIX) + MAX_ID,
            "pattern": f"^{DERIVED_CONVERSATION_PREFIX}{_ID_PATTERN.removeprefix('^')}",
        },
    ],
    "description": "the `conversation_id` of the answers: the one sent, else `user:<user_id>`",
}
_TOKEN_DESCRIPTION = (
    "the `conversation_token` of every 200/202 answer of POST /v1/messages for this conversation;"
    " here or in the X-Conversation-Token header"
)
_TOKEN_PARAMETERS = [
    {
        "name": "token",
        "in": "query",
        "required": False,
        "description": _TOKEN_DESCRIPTION,
        "schema": {"type": "string"},
    },
    {
        "name": "X-Conversation-Token",
        "in": "header",
        "required": False,
        "description": _TOKEN_DESCRIPTION,
        "schema": {"type": "string"},
    },
]
_TOKEN_PROPERTY = {
    "type": "string",
    "description": (
        "opens the conversation for reading (events, message status) on every gateway, for the API key it"
        " was issued to, for CONVERSATION_TOKEN_TTL_SECONDS or until a /reset in the conversation"
    ),
}
# Telegram's ids fit in 52 bits; JSON numbers beyond 2^53 are not integers to every parser.
_TELEGRAM_ID = {"type": "integer", "minimum": -(2**53), "maximum": 2**53}
_TELEGRAM_SENDER = {"id": _TELEGRAM_ID, "language_code": {"type": "string"}, "first_name": {"type": "string"}}
_PROBLEM = {"$ref": "#/components/schemas/Problem"}


# From an accepted message to its status and to its conversation's events (stateful testing follows these).
_MESSAGE_LINKS = {
    "GetMessage": {
        "operationId": "getMessage",
        "parameters": {"message_id": "$response.body#/message_id", "token": "$response.body#/conversation_token"},
    },
    "ConversationEvents": {
        "operationId": "conversationEvents",
        "parameters": {
            "conversation_id": "$response.body#/conversation_id",
            "token": "$response.body#/conversation_token",
        },
    },
}


def _webhook_responses(proof: str) -> dict[str, Any]:
    return {
        "200": {
            "description": "acknowledged; its messages are durably queued",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/WebhookAccepted"}}},
        },
        "400": _problem("a signed body that is not the platform's format (the detail names the field)"),
        "401": _problem(f"{proof} missing or wrong"),
        "404": _problem("the channel is not configured"),
        "408": _BODY_TIMEOUT,
        "413": _problem("body over 1 MiB"),
        "429": _problem("a sender over its rate limit; the platform retries", retry_after=True),
        "503": _problem("broker or Redis unreachable; nothing accepted, the platform retries", retry_after=True),
    }


def _problem(description: str, retry_after: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/problem+json": {"schema": _PROBLEM}},
    }
    if retry_after:
        response["headers"] = {"Retry-After": {"schema": {"type": "string"}, "description": "seconds"}}
    return response


_BODY_TIMEOUT = _problem("the body did not arrive within HTTP_BODY_TIMEOUT_SECONDS; nothing accepted")

DOCUMENT: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "ia-atendimento-bot gateway",
        "version": "1.0.0",
        "description": (
            "Send customer messages and receive the bot's replies (web and server-to-server channel), "
            "and the webhooks of the WhatsApp Cloud API and Telegram channels. When the gateway has API "
            "keys (GATEWAY_API_KEYS), every /v1 operation needs `Authorization: Bearer <key>`."
        ),
    },
    "security": [{"bearerAuth": []}],
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
                        "description": "seconds to hold the request for the reply (empty: the default)",
                        "allowEmptyValue": True,
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
                        "links": _MESSAGE_LINKS,
                    },
                    "202": {
                        "description": "accepted and durably queued",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Queued"}}},
                        "links": _MESSAGE_LINKS,
                    },
                    "400": _problem("bad JSON or field"),
                    "401": _problem("missing or wrong API key"),
                    "408": _BODY_TIMEOUT,
                    "413": _problem("body over 64 KiB"),
                    "415": _problem("not application/json"),
                    "429": _problem("rate limited", retry_after=True),
                    "503": _problem("broker or Redis unreachable; nothing accepted", retry_after=True),
                },
            }
        },
        "/v1/outbound": {
            "post": {
                "operationId": "postOutbound",
                "summary": "Send a proactive message to a WhatsApp or Telegram customer",
                "description": "Queued durably and delivered like a reply (retried, split, dead-lettered), once per"
                " `message_id`. WhatsApp free text only within 24 hours of the customer's last message;"
                " outside it, an approved `template`. Its delivery shows at GET /v1/messages/{message_id}"
                " (no conversation token: the API key is the proof).",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OutboundIn"}}},
                },
                "responses": {
                    "202": {
                        "description": "durably queued (or, `duplicate`, queued before under this message_id)",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OutboundQueued"}}},
                        "links": {
                            "GetOutbound": {
                                "operationId": "getMessage",
                                "parameters": {"message_id": "$response.body#/message_id"},
                            }
                        },
                    },
                    "400": _problem("bad JSON or field (the detail names it)"),
                    "401": _problem("missing or wrong API key"),
                    "408": _BODY_TIMEOUT,
                    "413": _problem("body over 64 KiB"),
                    "415": _problem("not application/json"),
                    "422": _problem(
                        "not sendable: WhatsApp free text outside the 24-hour window (send a template), a"
                        " customer who opted out, or a channel not configured; the detail says which"
                    ),
                    "429": _problem("rate limited", retry_after=True),
                    "503": _problem("broker or Redis unreachable; nothing queued", retry_after=True),
                },
            }
        },
        "/v1/messages/{message_id}": {
            "get": {
                "operationId": "getMessage",
                "summary": "Where an accepted message stands: its reply once answered, else queued; a proactive"
                " message's delivery",
                "parameters": [
                    {"name": "message_id", "in": "path", "required": True, "schema": _ID},
                    *_TOKEN_PARAMETERS,
                ],
                "responses": {
                    "200": {
                        "description": "the message, answered or still queued",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        {"$ref": "#/components/schemas/Answered"},
                                        {"$ref": "#/components/schemas/Queued"},
                                        {"$ref": "#/components/schemas/HandedOff"},
                                        {"$ref": "#/components/schemas/OutboundStatus"},
                                    ]
                                }
                            }
                        },
                    },
                    "400": _problem("bad message id"),
                    "401": _problem("missing or wrong API key"),
                    "403": _problem(
                        "no conversation token (and no proactive message has this id), or none that opens a message"
                        " of this id (not the token of its conversation, expired, ended by /reset; unknown ids and"
                        " those older than 24 h answer alike)"
                    ),
                    "503": _problem("Redis unreachable", retry_after=True),
                },
            }
        },
        "/v1/conversations/{conversation_id}/events": {
            "get": {
                "operationId": "conversationEvents",
                "summary": "Server-Sent Events: one `reply` event per reply in the conversation",
                "description": "`event: reply` carries the same object as a 200 answer of POST /v1/messages."
                " While an LLM writes a reply, `event: delta` events come first, each with"
                ' `{"message_id", "conversation_id", "text"}`, the text so far.',
                "parameters": [
                    {"name": "conversation_id", "in": "path", "required": True, "schema": _CONVERSATION_ID},
                    *_TOKEN_PARAMETERS,
                ],
                "responses": {
                    "200": {
                        "description": "event stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "400": _problem("bad conversation id"),
                    "401": _problem("missing or wrong API key"),
                    "403": _problem("no conversation token, or not this conversation's"),
                    "429": _problem(
                        "this client address already holds MAX_STREAMS_PER_IP event streams", retry_after=True
                    ),
                    "503": _problem("broker or Redis unreachable", retry_after=True),
                },
            }
        },
        "/webhooks/whatsapp": {
            "get": {
                "operationId": "whatsappVerify",
                "summary": "Meta's webhook verification: echoes hub.challenge for the right verify token",
                "security": [],
                "parameters": [
                    {"name": "hub.mode", "in": "query", "schema": {"type": "string", "enum": ["subscribe"]}},
                    {"name": "hub.verify_token", "in": "query", "schema": {"type": "string"}},
                    {"name": "hub.challenge", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {"description": "the challenge", "content": {"text/plain": {"schema": {"type": "string"}}}},
                    "403": _problem("wrong mode or verify token"),
                    "404": _problem("the WhatsApp channel is not configured"),
                },
            },
            "post": {
                "operationId": "whatsappNotification",
                "summary": "Messages and statuses from the WhatsApp Cloud API; 200 once durably queued",
                "security": [],
                "parameters": [
                    {
                        "name": "X-Hub-Signature-256",
                        "in": "header",
                        "required": True,
                        "description": "sha256=<hex HMAC-SHA256 of the raw body with WHATSAPP_APP_SECRET>",
                        "schema": {"type": "string"},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/WhatsAppNotification"}}},
                },
                "responses": _webhook_responses("X-Hub-Signature-256"),
            },
        },
        "/webhooks/telegram": {
            "post": {
                "operationId": "telegramUpdate",
                "summary": "An Update pushed by the Telegram Bot API (setWebhook); 200 once durably queued",
                "security": [],
                "parameters": [
                    {
                        "name": "X-Telegram-Bot-Api-Secret-Token",
                        "in": "header",
                        "required": True,
                        "description": "the secret_token given to setWebhook (TELEGRAM_SECRET_TOKEN)",
                        "schema": {"type": "string"},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TelegramUpdate"}}},
                },
                "responses": _webhook_responses("X-Telegram-Bot-Api-Secret-Token"),
            }
        },
    },
    "components": {
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "description": "one of GATEWAY_API_KEYS; not needed when the gateway has no keys",
            }
        },
        "schemas": {
            "HandedOff": {
                "type": "object",
                "description": "the conversation is with a human agent: the bot stayed silent, the agent answers",
                "required": ["message_id", "conversation_id", "status", "conversation_token"],
                "properties": {
                    "message_id": {"type": "string"},
                    "conversation_id": {"type": "string"},
                    "conversation_token": _TOKEN_PROPERTY,
                    "status": {"type": "string", "enum": ["handed_off"]},
                },
            },
            "WebhookAccepted": {
                "type": "object",
                "required": ["accepted", "duplicates"],
                "properties": {
                    "accepted": {"type": "integer", "minimum": 0, "description": "messages queued now"},
                    "duplicates": {"type": "integer", "minimum": 0, "description": "messages seen before"},
                    "method": {
                        "type": "string",
                        "description": "Telegram only, for a button tap: answerCallbackQuery, made by Telegram",
                    },
                    "callback_query_id": {"type": "string"},
                },
            },
            "WhatsAppNotification": {
                "type": "object",
                "description": "Meta's webhook payload: entry[].changes[].value with messages or statuses",
                "properties": {"object": {"type": "string"}, "entry": {"type": "array", "items": {"type": "object"}}},
            },
            "TelegramUpdate": {
                "type": "object",
                "description": "A Bot API Update; text, voice, audio, photo and document messages and taps on"
                " our inline buttons (callback_query) are answered",
                "required": ["update_id"],
                "properties": {
                    "update_id": _TELEGRAM_ID,
                    "message": {"$ref": "#/components/schemas/TelegramMessage"},
                    "callback_query": {
                        "type": "object",
                        "required": ["id"],
                        "properties": {
                            "id": {"type": "string"},
                            "data": {"type": "string", "description": "the id of the option tapped"},
                            "from": {
                                "type": "object",
                                "properties": _TELEGRAM_SENDER,
                            },
                            "message": {
                                "type": "object",
                                "description": "the bot's message that carried the button",
                                "required": ["chat"],
                                "properties": {
                                    "chat": {"$ref": "#/components/schemas/TelegramChat"},
                                    "reply_markup": {"$ref": "#/components/schemas/TelegramInlineKeyboard"},
                                },
                            },
                        },
                    },
                },
            },
            "TelegramInlineKeyboard": {
                "type": "object",
                "description": "the keyboard the bot's message shows: the tapped button's text becomes the"
                " message's text",
                "properties": {
                    "inline_keyboard": {
                        "type": "array",
                        "items": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["text"],
                                "properties": {"text": {"type": "string"}, "callback_data": {"type": "string"}},
                            },
                        },
                    }
                },
            },
            "TelegramChat": {
                "type": "object",
                "required": ["id"],
                "properties": {"id": _TELEGRAM_ID, "type": {"type": "string"}},
            },
            "TelegramFile": {
                "type": "object",
                "description": "a voice note, audio file or document: fetched by the worker with getFile",
                "required": ["file_id"],
                "properties": {
                    "file_id": {"type": "string"},
                    "mime_type": {"type": "string"},
                    "file_name": {"type": "string"},
                    "file_size": _TELEGRAM_ID,
                },
            },
            "TelegramMessage": {
                "type": "object",
                "required": ["chat"],
                "properties": {
                    "chat": {"$ref": "#/components/schemas/TelegramChat"},
                    "from": {
                        "type": "object",
                        "properties": _TELEGRAM_SENDER,
                    },
                    "text": {"type": "string"},
                    "caption": {"type": "string"},
                    "voice": {"$ref": "#/components/schemas/TelegramFile"},
                    "audio": {"$ref": "#/components/schemas/TelegramFile"},
                    "document": {"$ref": "#/components/schemas/TelegramFile"},
                    "photo": {
                        "type": "array",
                        "minItems": 1,
                        "description": "PhotoSize objects, smallest first, each with a file_id (string) and maybe"
                        " a file_size (integer)",
                        "items": {"type": "object"},
                    },
                },
            },
            "MessageIn": {
                "type": "object",
                "additionalProperties": False,
                "required": ["user_id", "text"],
                "properties": {
                    "user_id": _ID,
                    "text": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT, "pattern": _NOT_BLANK},
                    "conversation_id": _ID,
                    "message_id": _ID,
                    "metadata": {"type": "object", "description": "at most 4 KiB serialised"},
                    "option": {
                        **_ID,
                        "description": "the `id` of one of the `options` the last reply in this conversation"
                        " offered, when the customer chose it (`text` may then be its label)",
                    },
                },
            },
            "Reply": {
                "type": "object",
                "required": ["text", "engine", "confidence", "handoff", "sources", "kind", "options"],
                "properties": {
                    "text": {"type": "string"},
                    "engine": {"type": "string"},
                    "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                    "handoff": {"type": "boolean"},
                    "sources": {"type": "array", "items": {"type": "string"}},
                    "kind": {
                        "type": "string",
                        "enum": list(REPLY_KINDS),
                        "description": "an entry's answer, a question back (clarify), the base's fallback,"
                        " smalltalk, a hand-over to a person, or a person's (agent's) own reply",
                    },
                    "options": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/Option"},
                        "description": "what the customer may choose from (empty when nothing): the candidate"
                        " entries of a question back, `handoff` (talk to a person), an entry's own buttons;"
                        " choosing one is a message with its `id` as `option`",
                    },
                },
            },
            "Option": {
                "type": "object",
                "required": ["id", "label"],
                "properties": {
                    "id": {"type": "string", "description": "sent back as `option` when chosen"},
                    "label": {"type": "string", "description": "what the customer sees"},
                },
            },
            "Answered": {
                "type": "object",
                "required": ["message_id", "conversation_id", "status", "reply", "latency_ms", "conversation_token"],
                "properties": {
                    "message_id": {"type": "string"},
                    "conversation_id": {"type": "string"},
                    "conversation_token": _TOKEN_PROPERTY,
                    "status": {"type": "string", "enum": ["answered"]},
                    "reply": {"$ref": "#/components/schemas/Reply"},
                    "latency_ms": {"type": "number"},
                    "duplicate": {"type": "boolean"},
                    "merged_into": {
                        "type": "string",
                        "description": "DEBOUNCE_MS: this message arrived in a burst and was answered"
                        " together with the others by the reply to this message_id (the same reply)",
                    },
                },
            },
            "Queued": {
                "type": "object",
                "required": ["message_id", "conversation_id", "status", "conversation_token"],
                "properties": {
                    "message_id": {"type": "string"},
                    "conversation_id": {"type": "string"},
                    "conversation_token": _TOKEN_PROPERTY,
                    "status": {"type": "string", "enum": ["queued"]},
                    "duplicate": {"type": "boolean"},
                },
            },
            **outbound_schemas(_ID, _NOT_BLANK),
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
        },
    },
}

OPENAPI_BYTES = orjson.dumps(DOCUMENT)
