"""One conversation's channel replies leave in the order the worker committed them, whichever
gateway holds each.

The worker appends each channel reply's id to the conversation's outbound list as it commits
(services/worker/commit.py); a delivery consumer sends a reply only once it is the list's head,
and removes it when the reply is settled (delivered, already delivered, or dead-lettered). A reply
that is not in the list (an agent's, the gateway's own notices) goes at once. A head whose reply
is already delivered is dropped by whoever finds it. A head under a live lease (a consumer is
sending it or waiting to retry it, renewing the lease as it goes) is waited for as long as that
lasts, so retries never reorder a conversation; one that nobody holds and never settles is waited
for at most MAX_WAIT_S, so a lost entry delays a conversation but never silences it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from redis.asyncio import Redis

from shared.names import Names

log = logging.getLogger(__name__)

POLL_S = 0.1
MAX_WAIT_S = 120.0


@dataclass(frozen=True, slots=True)
class OutboundOrder:
    redis: Redis
    names: Names

    async def wait_turn(self, conversation_id: str, message_id: str) -> None:
        """Return once `message_id` is next to go out in its conversation (raises REDIS_ERRORS)."""
        key = self.names.outbound_order_key(conversation_id)
        deadline = time.monotonic() + MAX_WAIT_S
        while True:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.lindex(key, 0)
                pipe.lpos(key, message_id)
                head, position = await pipe.execute()
            if position is None or head == message_id:
                return
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hmget(self.names.delivered_key(head), "done", "until")
                pipe.time()
                (done, until), (seconds, micros) = await pipe.execute()
            if done:
                await self.redis.lrem(key, 1, head)  # settled elsewhere, its entry left behind
                continue
            if until is not None and int(until) > seconds * 1000 + micros // 1000:
                # A live consumer holds the head (sending, or waiting out a retry's back-off or
                # Retry-After): it settles it, however long that takes, and this one goes next.
                deadline = time.monotonic() + MAX_WAIT_S
            elif time.monotonic() > deadline:
                log.warning("reply %s waited %.0f s for %s to go first; sending it", message_id, MAX_WAIT_S, head)
                return
            await asyncio.sleep(POLL_S)

    async def settled(self, conversation_id: str, message_id: str) -> None:
        await self.redis.lrem(self.names.outbound_order_key(conversation_id), 1, message_id)
