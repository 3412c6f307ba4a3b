"""Ending quiet conversations and asking for a rating (CSAT_AFTER_MINUTES), from every worker.

Each worker sweeps every `SWEEP_INTERVAL_S`: `Conversations.sweep` (shared/conversations.py)
claims the due conversations atomically, so with several workers each is ended once, and returns
those to ask. The question goes out through the replies' own path (published to the replies
exchange, like an agent's reply: the gateways deliver it to the web stream, WhatsApp or
Telegram), with the scores 1-5 as options; the options are also left as the conversation's
offered ones (services/worker/state.py `Offered`), so typing "4" chooses too, for as long as the
rating may be given (ASKED_TTL_SECONDS, a day; a reply to another message replaces them). The
tap comes back as a message and the reply policy thanks for it (a score not offered is asked
again); the commit records it once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from services.worker.engines.policy import csat_request
from services.worker.engines.text import Language
from services.worker.state import Offered
from shared.broker import BROKER_ERRORS, Broker
from shared.conversations import ASKED_TTL_SECONDS, Conversations, RatingAsk
from shared.messages import ReplyMessage, parse_channel
from shared.store import REDIS_ERRORS, Store

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 5.0


@dataclass(frozen=True, slots=True)
class RatingSweeper:
    conversations: Conversations
    broker: Broker
    language: Language

    async def run(self, interval_s: float = SWEEP_INTERVAL_S) -> None:
        while True:
            try:
                await self.sweep_once()
            except REDIS_ERRORS as exc:
                log.warning("conversation sweep skipped, Redis unavailable: %r", exc)
            await asyncio.sleep(interval_s)

    async def sweep_once(self) -> list[ReplyMessage]:
        """End what is due now and ask the ratings; the questions sent (raises REDIS_ERRORS)."""
        sent = []
        for ask in await self.conversations.sweep():
            question = self._question(ask)
            await self._offer(question)
            try:
                await self.broker.publish_reply(question)
            except BROKER_ERRORS as exc:
                # Claimed and not sent: this conversation goes unrated rather than asked twice.
                log.warning("rating question for %s not published: %r", ask.conversation_id, exc)
                continue
            await Store(self.conversations.redis, self.conversations.names).log_conversation(
                ask.conversation_id, _log_entry(question, ask.handled_by)
            )
            sent.append(question)
        return sent

    def _question(self, ask: RatingAsk) -> ReplyMessage:
        address = ask.address
        return ReplyMessage(
            message_id=f"csat-{uuid.uuid4().hex}",
            conversation_id=ask.conversation_id,
            user_id=str(address["user_id"]),
            channel=parse_channel(address["channel"]),
            reply=csat_request(self.language),
            latency_ms=0.0,
            gateway_id=str(address.get("gateway_id") or ""),
            metadata=dict(address.get("metadata") or {}),
        )

    async def _offer(self, question: ReplyMessage) -> None:
        """The scores become the conversation's options, so typing a number chooses one and a tap
        is one offered: for as long as the rating may be given, which a customer may do hours
        later (the half hour other options are kept would turn a late tap away)."""
        names = self.conversations.names
        offered = Offered(question.reply.options, "")
        await self.conversations.redis.set(
            names.offered_key(question.conversation_id), offered.to_bytes(), ex=ASKED_TTL_SECONDS
        )


def _log_entry(question: ReplyMessage, handled_by: str) -> dict[str, Any]:
    """The question in the operators' conversation log (as a reply with no customer message)."""
    now = time.time()
    return {
        "message_id": question.message_id,
        "kind": "csat",
        "handled_by": handled_by,
        "channel": question.channel,
        "user_id": question.user_id,
        "text": "",
        "accepted_at": now,
        "replied_at": now,
        "reply": question.reply.to_dict(),
        "latency_ms": None,
        "queue_wait_ms": None,
        "processing_ms": None,
    }
