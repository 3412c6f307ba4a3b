"""One inbound message, start to finish: every delivery ends acked, requeued or dead-lettered.

Order of the steps is what makes the promises of SPEC section 3 hold:
1. read what is known (a stored reply means a redelivery: hand it back again, generate nothing);
2. generate;
3. commit the reply, stats and memory in one Redis script that only the first writer wins;
4. publish the reply with confirm;
5. ack. A crash anywhere before 5 redelivers the message, and step 1 makes that harmless.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from aio_pika.abc import AbstractIncomingMessage

from services.worker.engines.base import EngineRequest, ReplyEngine, Turn
from shared.broker import Broker
from shared.messages import InboundMessage, MessageFormatError, ReplyMessage, now_ms
from shared.store import REDIS_ERRORS, Store, Timings

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BACKOFF_S = 5.0


def backoff(attempt: int) -> float:
    return float(min(MAX_BACKOFF_S, 0.1 * 2**attempt))


@dataclass(frozen=True, slots=True)
class Processor:
    store: Store
    broker: Broker
    engine: ReplyEngine
    max_attempts: int

    async def handle(self, delivery: AbstractIncomingMessage) -> None:
        try:
            message = InboundMessage.from_bytes(delivery.body)
        except MessageFormatError as exc:
            log.error("dead-lettering a malformed message: %s", exc)
            await self._dead_letter(delivery, "malformed")
            return
        started = now_ms()
        state = await self._until_redis_answers(lambda: self.store.begin(message))
        if state.stored_reply is not None:
            await self._hand_back(state.stored_reply)
            await delivery.ack()
            return
        if state.attempt > self.max_attempts:
            log.error("message %s failed %d times; dead-lettered", message.message_id, self.max_attempts)
            await self._dead_letter(delivery, "dead_lettered")
            return
        request = EngineRequest(
            text=message.text,
            conversation_id=message.conversation_id,
            history=tuple(Turn(role=turn["role"], text=turn["text"]) for turn in state.history),  # type: ignore[arg-type]
        )
        try:
            content = await self.engine.reply(request)
        except Exception:
            log.exception("engine failed on message %s (attempt %d)", message.message_id, state.attempt)
            # Holding the shard while backing off is what keeps the conversation in order.
            await asyncio.sleep(backoff(state.attempt))
            await delivery.nack(requeue=True)
            return
        finished = now_ms()
        reply = ReplyMessage(
            message_id=message.message_id,
            conversation_id=message.conversation_id,
            user_id=message.user_id,
            channel=message.channel,
            reply=content,
            latency_ms=finished - message.accepted_at_ms,
            gateway_id=message.gateway_id,
            metadata=message.metadata,
        )
        timings = Timings(
            queue_wait_ms=started - message.accepted_at_ms,
            processing_ms=finished - started,
            end_to_end_ms=finished - message.accepted_at_ms,
        )
        standing = await self._until_redis_answers(lambda: self.store.commit(message, reply, timings))
        await self._hand_back(standing)
        await delivery.ack()
        log.info(
            "message processed",
            extra={
                "message_id": message.message_id,
                "conversation_id": message.conversation_id,
                "engine": standing.reply.engine,
                "processingTime": round(timings.processing_ms, 2),
                "latency_ms": round(timings.end_to_end_ms, 2),
            },
        )

    async def _hand_back(self, reply: ReplyMessage) -> None:
        names = self.broker.names
        await self.broker.publish(
            names.replies_exchange,
            names.reply_routing_key(reply.channel, reply.gateway_id, reply.conversation_id),
            reply.to_bytes(),
            message_id=reply.message_id,
            # Web replies go to transient gateway queues and may find no listener; that is fine,
            # the reply is stored. Channel replies go to durable delivery queues.
            persistent=reply.channel != "web",
            mandatory=False,
        )

    async def _dead_letter(self, delivery: AbstractIncomingMessage, kind: str) -> None:
        await delivery.reject(requeue=False)
        try:
            await self.store.record_error(kind)
        except REDIS_ERRORS as exc:
            log.error("error not counted (%s): %s", kind, exc)

    async def _until_redis_answers(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Redis down is not the message's fault: wait in place (keeping order and the delivery)
        rather than spend one of its attempts."""
        attempt = 0
        while True:
            try:
                return await operation()
            except REDIS_ERRORS as exc:
                if attempt == 0:
                    log.warning("Redis unavailable, holding the message until it answers: %s", exc)
                attempt += 1
                await asyncio.sleep(backoff(attempt))
