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
MediaKind = Literal["audio", "image", "document"]
MEDIA_KINDS: tuple[MediaKind, ...] = ("audio", "image", "document")
# What a reply is (SPEC section 6): an entry's answer, a question back with candidate entries, the
# base's "not found", a greeting or thanks, a hand-over to a person, or a person's own reply.
ReplyKind = Literal["answer", "clarify", "fallback", "smalltalk", "handoff", "agent"]
REPLY_KINDS: tuple[ReplyKind, ...] = ("answer", "clarify", "fallback", "smalltalk", "handoff", "agent")
# The option that hands the conversation to a person, offered with every question back and fallback.
HANDOFF_OPTION = "handoff"
# A tap on an opt-out button (a template's quick reply): no more proactive messages (shared/contacts.py).
OPT_OUT_OPTION = "opt_out"


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
class Option:
    """A choice offered with a reply: a candidate entry (its id and title), the hand-over
    (`HANDOFF_OPTION`), or an entry's own button (its label is its id). Chosen, it comes back as
    the `id` (`InboundMessage.option`)."""

    id: str
    label: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "label": self.label}

    @classmethod
    def from_dict(cls, data: Any) -> Option:
        if not isinstance(data, dict):
            raise ValueError(f"an option must be an object, got {data!r}")
        return cls(id=str(data["id"]), label=str(data["label"]))

    @classmethod
    def button(cls, label: str) -> Option:
        return cls(id=label, label=label)


@dataclass(frozen=True, slots=True)
class Template:
    """An approved WhatsApp message template (a proactive message outside the 24-hour window):
    its name, language code and the Graph API's `components` (parameters), sent as they are."""

    name: str
    language: str
    components: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"name": self.name, "language": self.language}
        if self.components:
            body["components"] = list(self.components)
        return body

    @classmethod
    def from_dict(cls, data: Any) -> Template:
        if not isinstance(data, dict):
            raise ValueError(f"a template must be an object, got {data!r}")
        components = data.get("components") or ()
        return cls(str(data["name"]), str(data["language"]), tuple(dict(c) for c in components))


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
    # SPEC section 6: answer, clarify, fallback, smalltalk, handoff or agent.
    kind: ReplyKind = "answer"
    # What the customer may choose from (empty when nothing): the candidates of a question back,
    # the hand-over, or an entry's own buttons.
    options: tuple[Option, ...] = ()
    # An answer the customer chose from a question back: their question that it answers (a phrasing
    # the operators may add to the entry). Worker only.
    resolves: str = ""
    # Options offered again (a stale choice): the customer's question that led to them, which the
    # worker keeps with them instead of this message's text. Worker only.
    question: str = ""
    # A hand-over asked for outside business hours: people are back at this epoch time (the
    # handoff waits in the agents' queue until then, and lives HANDOFF_TTL_SECONDS after). Worker only.
    away_until: float = 0.0
    # The customer's 1-5 satisfaction rating this reply thanks for (0: none). Worker only.
    csat: int = 0
    # It answers a voice note: with VOICE_REPLIES=on the channel delivery also speaks it (the audio
    # is made at send time, so no audio bytes ever sit in a queue or in Redis). On the wire only.
    voice: bool = False
    # A proactive WhatsApp message sent as a template (`text` is then empty). On the wire only.
    template: Template | None = None
    # The language of the reply's options ("pt", "en", "es"; "" when unknown), for the words the
    # channel adds around them (WhatsApp's list button). On the wire only.
    language: str = ""

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "text": self.text,
            "engine": self.engine,
            "confidence": round(self.confidence, 4),
            "handoff": self.handoff,
            "sources": list(self.sources),
            "kind": self.kind,
            "options": [option.to_dict() for option in self.options],
        }
        return body

    def to_wire(self) -> dict[str, Any]:
        body = self.to_dict()
        if self.voice:
            body["voice"] = True
        if self.template is not None:
            body["template"] = self.template.to_dict()
        if self.language:
            body["language"] = self.language
        return body

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReplyContent:
        return cls(
            text=str(data["text"]),
            engine=str(data["engine"]),
            confidence=float(data["confidence"]),
            handoff=bool(data.get("handoff", False)),
            sources=tuple(str(s) for s in data.get("sources", ())),
            kind=_kind(data.get("kind", "answer")),
            # `buttons`: a reply queued by a version before options (labels only).
            options=tuple(Option.from_dict(o) for o in data.get("options", ()))
            or tuple(Option.button(str(b)) for b in data.get("buttons", ())),
            voice=bool(data.get("voice", False)),
            template=Template.from_dict(data["template"]) if data.get("template") else None,
            language=str(data.get("language", "")),
        )


@dataclass(frozen=True, slots=True)
class Attachment:
    """A media file a customer sent: the channel's reference to it and what the channel said about
    it. Never its bytes: the worker fetches those while it answers and keeps them nowhere."""

    kind: MediaKind
    # WhatsApp media id, or Telegram file_id.
    media_id: str
    mime_type: str = ""
    # Recorded in the chat (a voice note), not a music or audio file shared.
    voice: bool = False
    filename: str = ""
    # As the channel declared it (0: not said); the worker enforces MEDIA_MAX_BYTES regardless.
    size: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "media_id": self.media_id,
            "mime_type": self.mime_type,
            "voice": self.voice,
            "filename": self.filename,
            "size": self.size,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Attachment:
        kind = data["kind"]
        if kind not in MEDIA_KINDS:
            raise ValueError(f"unknown attachment kind {kind!r}")
        return cls(
            kind=kind,
            media_id=str(data["media_id"]),
            mime_type=str(data.get("mime_type", "")),
            voice=bool(data.get("voice", False)),
            filename=str(data.get("filename", "")),
            size=int(data.get("size", 0)),
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
    # A voice note, image or document (`text` is then its caption, maybe empty). Only present on
    # the wire when set: readers of schema 1 without it see a text message.
    attachment: Attachment | None = None
    # The `id` of an option the customer chose (a tap, or `option` on the API); `text` is then its
    # label. On the wire only when set.
    option: str = ""

    def to_bytes(self) -> bytes:
        body: dict[str, Any] = {
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
        if self.attachment is not None:
            body["attachment"] = self.attachment.to_dict()
        if self.option:
            body["option"] = self.option
        return orjson.dumps(body)

    @classmethod
    def from_bytes(cls, body: bytes | str) -> InboundMessage:
        data = _load(body)
        try:
            return cls(
                message_id=str(data["message_id"]),
                conversation_id=str(data["conversation_id"]),
                user_id=str(data["user_id"]),
                text=str(data["text"]),
                channel=parse_channel(data.get("channel", "web")),
                metadata=dict(data.get("metadata") or {}),
                accepted_at_ms=float(data["accepted_at_ms"]),
                gateway_id=str(data.get("gateway_id", "")),
                attachment=Attachment.from_dict(data["attachment"]) if data.get("attachment") else None,
                option=str(data.get("option") or ""),
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
            "reply": self.reply.to_wire(),
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
                channel=parse_channel(data["channel"]),
                reply=ReplyContent.from_dict(data["reply"]),
                latency_ms=float(data["latency_ms"]),
                gateway_id=str(data.get("gateway_id", "")),
                metadata=dict(data.get("metadata") or {}),
                merged_into=str(data.get("merged_into", "")),
                silenced=bool(data.get("silenced", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MessageFormatError(f"reply message: {exc!r}") from exc


@dataclass(frozen=True, slots=True)
class ReplyDelta:
    """The text of a web reply so far, while an engine that streams generates it (SSE `delta`).
    Published without persistence or confirm-waiting on the replies exchange, flagged by the
    DELTA_HEADER; the final ReplyMessage follows as usual."""

    message_id: str
    conversation_id: str
    text: str

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "v": SCHEMA_VERSION,
                "message_id": self.message_id,
                "conversation_id": self.conversation_id,
                "text": self.text,
            }
        )

    def public_dict(self) -> dict[str, Any]:
        return {"message_id": self.message_id, "conversation_id": self.conversation_id, "text": self.text}

    @classmethod
    def from_bytes(cls, body: bytes | str) -> ReplyDelta:
        data = _load(body)
        try:
            return cls(str(data["message_id"]), str(data["conversation_id"]), str(data["text"]))
        except (KeyError, TypeError) as exc:
            raise MessageFormatError(f"reply delta: {exc!r}") from exc


DELTA_HEADER = "x-reply-delta"


def _load(body: bytes | str) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MessageFormatError(f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise MessageFormatError("not a JSON object")
    return data


def _kind(value: Any) -> ReplyKind:
    for kind in REPLY_KINDS:
        if value == kind:
            return kind
    raise ValueError(f"unknown reply kind {value!r}")


def parse_channel(value: Any) -> Channel:
    """A channel read from the wire (a message, a handoff); ValueError for one we do not serve."""
    for channel in CHANNELS:
        if value == channel:
            return channel
    raise ValueError(f"unknown channel {value!r}")
