"""Accepting a message: claim its id once, then queue it durably. Shared by every channel."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from services.gateway.ratelimit import RateLimiter
from shared.broker import BROKER_ERRORS, Broker
from shared.messages import InboundMessage, ReplyMessage
from shared.metrics import GatewayMetrics
from shared.store import REDIS_ERRORS, Store
from shared.web import Problem

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "5"


def unavailable(what: str) -> Problem:
    return Problem(
        503, f"{what} is unreachable; nothing was accepted, retry later", headers={"Retry-After": RETRY_AFTER_SECONDS}
    )


@dataclass(frozen=True, slots=True)
class Outcome:
    """`duplicate_of` is set (to the original's conversation) when the id had been accepted before."""

    duplicate_of: str | None = None

    @property
    def duplicate(self) -> bool:
        return self.duplicate_of is not None


@dataclass(frozen=True, slots=True)
class Intake:
    store: Store
    broker: Broker
    # Per sender (channel and user id), for every channel alike: webhooks included.
    limiter: RateLimiter
    metrics: GatewayMetrics

    async def accept(self, message: InboundMessage) -> Outcome:
        """Claim and publish with confirm; only a returned Outcome means the message is safe."""
        names = self.broker.names
        outcome = await self._claim_and_publish(
            message.message_id,
            message.conversation_id,
            (message.channel, message.user_id),
            names.inbound_exchange,
            str(names.shard_of(message.conversation_id)),
            message.to_bytes(),
        )
        if not outcome.duplicate:
            self.metrics.accepted.labels(message.channel).inc()
        return outcome

    async def answer_directly(self, reply: ReplyMessage) -> Outcome:
        """A reply the gateway gives itself to a channel message (e.g. "text only, please"):
        claimed under the message's id like any message, then queued for outbound delivery."""
        names = self.broker.names
        return await self._claim_and_publish(
            reply.message_id,
            reply.conversation_id,
            (reply.channel, reply.user_id),
            names.replies_exchange,
            names.route_of(reply),
            reply.to_bytes(),
        )

    async def accept_all(self, items: Sequence[InboundMessage | ReplyMessage]) -> list[Outcome]:
        """Everything one webhook call carries, concurrently. Whatever could be queued is; if
        anything could not, the most serious refusal (503 before 429) is raised so the platform
        retries the call, and the retry finds the queued ones already claimed."""
        results = await asyncio.gather(
            *(self.accept(item) if isinstance(item, InboundMessage) else self.answer_directly(item) for item in items),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Problem):
                raise result
        refusals = [result for result in results if isinstance(result, Problem)]
        if refusals:
            raise max(refusals, key=lambda problem: problem.status)
        return [result for result in results if isinstance(result, Outcome)]

    async def lookup(self, message_id: str) -> ReplyMessage | str | None:
        """The reply stored for an accepted message (silenced ones included: the conversation was
        with a human), else the conversation it was accepted for (still on its way), else None
        (never accepted, or forgotten after the idempotency TTL)."""
        names = self.store.names
        try:
            async with self.store.redis.pipeline(transaction=False) as pipe:
                pipe.get(names.reply_key(message_id))
                pipe.get(names.claim_key(message_id))
                reply, conversation = await pipe.execute()
        except REDIS_ERRORS:
            raise unavailable("Redis") from None
        if reply:
            return ReplyMessage.from_bytes(reply)
        return None if conversation is None else str(conversation)

    async def _claim_and_publish(
        self,
        message_id: str,
        conversation_id: str,
        sender: tuple[str, str],
        exchange: str,
        routing_key: str,
        body: bytes,
    ) -> Outcome:
        if not self.broker.connected:
            raise unavailable("the message broker")
        await self.limiter.check_user(*sender)
        try:
            owner = await self.store.claim(message_id, conversation_id)
        except REDIS_ERRORS:
            raise unavailable("Redis") from None
        if owner is not None:
            return Outcome(duplicate_of=owner)
        try:
            await self.broker.publish(
                exchange, routing_key, body, message_id=message_id, conversation_id=conversation_id
            )
        except BROKER_ERRORS as exc:
            log.warning("publish failed, message %s not accepted: %s", message_id, exc)
            try:
                await self.store.release(message_id)
            except REDIS_ERRORS:
                log.error("claim of %s not released; a retry will be reported as duplicate", message_id)
            raise unavailable("the message broker") from None
        return Outcome()
