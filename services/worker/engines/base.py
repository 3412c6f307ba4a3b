"""The interface every reply engine implements (knowledge base, OpenAI-compatible LLM, ...)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from shared.messages import ReplyContent


@dataclass(frozen=True, slots=True)
class Turn:
    """One earlier message of the conversation, oldest first in EngineRequest.history."""

    role: Literal["user", "assistant"]
    text: str


@dataclass(frozen=True, slots=True)
class EngineRequest:
    text: str
    conversation_id: str
    history: tuple[Turn, ...] = ()


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
