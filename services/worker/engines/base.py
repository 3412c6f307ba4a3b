"""The interface every reply engine implements (knowledge base, OpenAI-compatible LLM, ...)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from shared.messages import Option, ReplyContent


@dataclass(frozen=True, slots=True)
class Turn:
    """One earlier message of the conversation, oldest first in EngineRequest.history."""

    role: Literal["user", "assistant"]
    text: str


@dataclass(frozen=True, slots=True)
class Document:
    """The text read from a document the customer sent (services/worker/media)."""

    name: str
    text: str


@dataclass(frozen=True, slots=True)
class EngineRequest:
    text: str
    conversation_id: str
    history: tuple[Turn, ...] = ()
    # Media the customer sent, resolved by the worker (services/worker/media): images as data:
    # URLs, documents as their text. Only an engine that reads them (the LLM) uses them.
    images: tuple[str, ...] = ()
    documents: tuple[Document, ...] = ()
    # Called with the reply's text so far, each time more of it is generated, by engines that
    # stream (the web chat shows it live); the reply returned is still the whole, final text.
    on_delta: Callable[[str], Awaitable[None]] | None = None
    # The id of the option the customer chose (a tap, or `option` on the API), and the options the
    # conversation's last reply offered (read only when the message may be a choice).
    option: str = ""
    offered: tuple[Option, ...] = ()
    # The customer's question that led to the options offered (what a chosen entry answers).
    offered_for: str = ""
    # The customer's language ("en", "pt", "es"; languages.customer_language), "" when unknown:
    # the reply policy's texts and a translated base answer in it.
    language: str = ""


class ReplyEngine(Protocol):
    name: str
    # Whether `EngineRequest.history` matters to it; the worker skips reading memory when not.
    uses_history: bool

    async def reply(self, request: EngineRequest) -> ReplyContent:
        """The reply to `request.text`; never raises for ordinary input."""
        ...

    async def close(self) -> None:
        """Release connections and other resources at shutdown."""
        ...


class ChoosingEngine(ReplyEngine, Protocol):
    """The engine the worker runs (the reply policy around the configured one), which also says
    which texts may choose an option offered: only for those are the options read from Redis."""

    def may_be_choice(self, text: str) -> bool:
        """Whether `text` may choose an option (its number or label), whatever was offered."""
        ...
