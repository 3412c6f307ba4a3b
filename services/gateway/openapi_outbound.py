"""The OpenAPI schemas of proactive messages (`POST /v1/outbound`, shared/outbound.py) and of a
message's `delivery` (shared/receipts.py), for the gateway's document (openapi.py). The patterns
are the ones shared/outbound.py checks, so the document says exactly what is accepted."""

from __future__ import annotations

from typing import Any

from shared.outbound import LANGUAGE_PATTERN, MAX_TEXT, TELEGRAM_TO_PATTERN, TEMPLATE_NAME_PATTERN, WHATSAPP_TO_PATTERN
from shared.receipts import STATUSES

_TELEGRAM_ID = {"type": "integer", "minimum": -(2**53), "maximum": 2**53}
_WHATSAPP_TO = {
    "type": "string",
    "pattern": WHATSAPP_TO_PATTERN,
    "description": "the customer's phone number with the country code (a leading + is allowed)",
}


def _body(
    channel: str, to: dict[str, Any], content: str, content_schema: dict[str, Any], id_schema: dict[str, Any]
) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["channel", "to", content],
        "properties": {
            "channel": {"type": "string", "enum": [channel]},
            "to": to,
            content: content_schema,
            "message_id": {**id_schema, "description": "idempotency key: a repeated one is queued and sent once"},
        },
    }


def outbound_schemas(id_schema: dict[str, Any], not_blank: str) -> dict[str, Any]:
    text = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT, "pattern": not_blank}
    template = {"$ref": "#/components/schemas/Template"}
    telegram_to = {
        "oneOf": [{"type": "string", "pattern": TELEGRAM_TO_PATTERN}, _TELEGRAM_ID],
        "description": "the chat id",
    }
    return {
        "OutboundIn": {
            "description": "exactly one of `text` and `template` (templates are WhatsApp's)",
            "oneOf": [
                _body("whatsapp", _WHATSAPP_TO, "text", text, id_schema),
                _body("whatsapp", _WHATSAPP_TO, "template", template, id_schema),
                _body("telegram", telegram_to, "text", text, id_schema),
            ],
        },
        "Template": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name", "language"],
            "description": "an approved WhatsApp message template, sent in the Graph API's `type: template` shape",
            "properties": {
                "name": {"type": "string", "pattern": TEMPLATE_NAME_PATTERN},
                "language": {"type": "string", "pattern": LANGUAGE_PATTERN, "description": "e.g. pt_BR, en"},
                "components": {
                    "type": "array",
                    "items": {"type": "object"},
                    "description": "the Graph API's template components (parameters), at most 8 KiB serialised",
                },
            },
        },
        "OutboundQueued": {
            "type": "object",
            "required": ["message_id", "status"],
            "properties": {
                "message_id": {"type": "string"},
                "status": {"type": "string", "enum": ["queued"]},
                "duplicate": {"type": "boolean"},
            },
        },
        "OutboundStatus": {
            "type": "object",
            "description": "a proactive message: where it went and what the channel reported",
            "required": ["message_id", "channel", "to", "status", "delivery"],
            "properties": {
                "message_id": {"type": "string"},
                "channel": {"type": "string", "enum": ["whatsapp", "telegram"]},
                "to": {"type": "string"},
                "status": {"type": "string", "enum": ["queued", *STATUSES]},
                "delivery": {"$ref": "#/components/schemas/Delivery"},
            },
        },
        "Delivery": {
            "type": "object",
            "nullable": True,
            "description": "accepted (the platform took it), then WhatsApp's statuses: sent, delivered, read,"
            " or failed with the Graph API's error code and title",
            "required": ["status", "updated_at", "history", "error"],
            "properties": {
                "status": {"type": "string", "enum": list(STATUSES)},
                "updated_at": {"type": "string", "nullable": True, "format": "date-time"},
                "history": {"type": "object", "additionalProperties": {"type": "string", "format": "date-time"}},
                "error": {
                    "type": "object",
                    "nullable": True,
                    "required": ["code", "title", "detail"],
                    "properties": {
                        "code": {"type": "integer", "description": "e.g. 131047: outside the 24-hour window"},
                        "title": {"type": "string"},
                        "detail": {"type": "string"},
                    },
                },
            },
        },
    }
