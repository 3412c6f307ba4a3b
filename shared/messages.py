"""Typed messages that travel over RabbitMQ, with their wire form (orjson bytes).

`SCHEMA_VERSION` is carried in every body so that a rolling upgrade can tell old messages from
new ones; readers accept unknown extra fields, so adding a field is not a breaking change.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

SCHEMA_VERSION = 1

Channel = Literal["web", "whatsapp", "telegram"]
CHANNELS: tuple[Channel, ...] = ("web", "whatsapp", "telegram")


class MessageFormatError(ValueError):
    """A body on the wire that is not one of our messages."""


def now_ms() -> float:
    """Wall-clock milliseconds: latencies span processes, so a shared clock is needed."""
    return time.time() * 1000.0


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens an LLM reply cost, counted in the stats (`tokens:prompt`, `tokens:completion`)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    # How long the completion took, retries included (the worker's LLM latency histogram).
    call_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class ReplyContent:
    """What an engine produced; the `reply` object of the public API."""

    text: str
    engine: str
    confidence: float
    handoff: bool = False
    sources: tuple[str, ...] = ()
    # For the worker only, never in the public JSON nor on the wire:
    # the base's "not found" reply (several in a row hand the conversation to a human),
    fallback: bool = False
    # the customer asked to forget the conversation (`/reset`): its memory is cleared,
    reset: bool = False
    # the tokens an LLM used for it,
    usage: Usage | None = None
    # and, for a fallback, the reply sent instead when it is one too many in a row (a handoff).
    escalation: ReplyContent | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "engine": self.engine,
            "confidence": round(self.confidence, 4),
            "handoff": self.handoff,
            "sources": list(self.sources),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReplyContent:
        return cls(
            text=str(data["text"]),
            engine=str(data["engine"]),
            confidence=float(data["confidence"]),
            handoff=bool(data.get("handoff", False)),
            sources=tuple(str(s) for s in data.get("sources", ())),
        )


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A customer's message, accepted by a gateway and queued for a worker."""

    message_id: str
    conversation_id: str
    user_id: str
    text: str
    channel: Channel = "web"
    metadata: dict[str, Any] = field(default_factory=dict)
    accepted_at_ms: float = field(default_factory=now_ms)
    # The gateway instance that accepted it: its waiters get the reply directly.
    gateway_id: str = ""

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "v": SCHEMA_VERSION,
                "message_id": self.message_id,
                "conversation_id": self.conversation_id,
                "user_id": self.user_id,
                "text": self.text,
                "channel": self.channel,
                "metadata": self.metadata,
                "accepted_at_ms": self.accepted_at_ms,
                "gateway_id": self.gateway_id,
            }
        )

    @classmethod
    def from_bytes(cls, body: bytes | str) -> InboundMessage:
        data = _load(body)
        try:
            return cls(
                message_id=str(data["message_id"]),
                conversation_id=str(data["conversation_id"]),
                user_id=str(data["user_id"]),
                text=str(data["text"]),
                channel=_channel(data.get("channel", "web")),
                metadata=dict(data.get("metadata") or {}),
                accepted_at_ms=float(data["accepted_at_ms"]),
                gateway_id=str(data.get("gateway_id", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MessageFormatError(f"inbound message: {exc!r}") from exc


@dataclass(frozen=True, slots=True)
class ReplyMessage:
    """The bot's answer to one inbound message, on its way back to the channel."""

    message_id: str
    conversation_id: str
    user_id: str
    channel: Channel
    reply: ReplyContent
    latency_ms: float
    gateway_id: str = ""
    # Channel addressing (phone_number_id, chat_id, ...) copied from the inbound metadata.
    metadata: dict[str, Any] = field(default_factory=dict)
    # DEBOUNCE_MS: this message was answered together with later ones by the reply to this id.
    merged_into: str = ""
    # Generated while the conversation was with a human: stored (a redelivery is then recognised)
    # but never sent, and never shown as the message's answer.
    silenced: bool = False

    def public_dict(self) -> dict[str, Any]:
        """The JSON object of SPEC section 4 (200 answer and SSE `reply` event)."""
        body = {
            "message_id": self.message_id,
            "conversation_id": self.conversation_id,
            "status": "answered",
            "reply": self.reply.to_dict(),
            "latency_ms": round(self.latency_ms, 2),
        }
        if self.merged_into:
            body["merged_into"] = self.merged_into
        return body

    def to_bytes(self) -> bytes:
        body = {
            "v": SCHEMA_VERSION,
            "message_id": self.message_id,
            "conversation_id": self.conversation_id,
            "user_id": self.user_id,
            "channel": self.channel,
            "reply": self.reply.to_dict(),
            "latency_ms": self.latency_ms,
            "gateway_id": self.gateway_id,
            "metadata": self.metadata,
        }
        if self.merged_into:
            body["merged_into"] = self.merged_into
        if self.silenced:
            body["silenced"] = True
        return orjson.dumps(body)

    @classmethod
    def from_bytes(cls, body: bytes | str) -> ReplyMessage:
        data = _load(body)
        try:
            return cls(
                message_id=str(data["message_id"]),
                conversation_id=str(data["conversation_id"]),
                user_id=str(data["user_id"]),
                channel=_channel(data["channel"]),
                reply=ReplyContent.from_dict(data["reply"]),
                latency_ms=float(data["latency_ms"]),
                gateway_id=str(data.get("gateway_id", "")),
                metadata=dict(data.get("metadata") or {}),
                merged_into=str(data.get("merged_into", "")),
                silenced=bool(data.get("silenced", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MessageFormatError(f"reply message: {exc!r}") from exc


def _load(body: bytes | str) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MessageFormatError(f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise MessageFormatError("not a JSON object")
    return data


def _channel(value: Any) -> Channel:
    for channel in CHANNELS:
        if value == channel:
            return channel
    raise ValueError(f"unknown channel {value!r}")
