"""Web replies handed back to the gateways over Redis pub/sub, not RabbitMQ.

A web reply is stored by the commit before it is handed back, and all that hears it is the
gateway's request waiting on it and the SSE streams of its conversation: nothing about the
hand-back needs a broker's durability. A freshly generated reply is published by the commit's own
script call (services/worker/commit.py: `push`), in the round trip that stores it; a reply handed
back again (a redelivered message's stored reply) by `ReplyPusher`, a PUBLISH in a pipeline every
lane handing back meanwhile shares. Over RabbitMQ it was a publish with confirm, a routing and a
delivery to the gateway's queue, which made the knowledge-base path a third slower end to end
(README, performance). A gateway that misses one (its subscription was down a moment) loses no
reply: it reads the stored replies of its waiting requests when it subscribes again, and a request
whose wait ends reads its own (services/gateway/replies.py).

WhatsApp and Telegram replies still go through RabbitMQ, to durable delivery queues, and so do the
LLM's partial replies, agents' replies and CSAT questions to web conversations (the replies
exchange, which the gateways consume too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis

from services.worker.coalesce import Coalescer
from shared.messages import ReplyMessage
from shared.names import Names
from shared.telemetry import push_span


@dataclass(slots=True)
class ReplyPusher:
    redis: Redis
    names: Names
    _pushes: Coalescer[ReplyMessage, None] = field(init=False)

    def __post_init__(self) -> None:
        self._pushes = Coalescer(self._publish_all, name="push")

    async def push(self, reply: ReplyMessage) -> None:
        """Hand a web reply to the gateways; raises Redis's errors (the reply is not out)."""
        with push_span(self.names.replies_exchange, message_id=reply.message_id, conversation_id=reply.conversation_id):
            await self._pushes.submit(reply)

    async def _publish_all(self, replies: list[ReplyMessage]) -> list[None]:
        await push_all(self.redis, self.names, replies)
        return [None] * len(replies)


async def push_all(redis: Redis, names: Names, replies: Sequence[ReplyMessage]) -> None:
    """Publish each web reply on its channels (`Names.push_channels`), all in one pipeline."""
    async with redis.pipeline(transaction=False) as pipe:
        for reply in replies:
            body = reply.to_bytes()
            for channel in names.push_channels(reply):
                pipe.publish(channel, body)
        await pipe.execute()
