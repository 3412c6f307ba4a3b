"""Replies published to the replies exchange as the worker publishes them, for the delivery tests."""

from __future__ import annotations

import uuid
from typing import Any

import aio_pika

from shared.messages import Channel, ReplyContent, ReplyMessage
from shared.names import Names
from tests.support import AMQP_URL, TEST_SHARDS
from tests.support.channel_fakes import PHONE_NUMBER_ID


class Replies:
    """Publishes replies the way the worker does: persistent, to the replies exchange."""

    def __init__(self, namespace: str) -> None:
        self.names = Names(namespace, TEST_SHARDS)
        self._connection: aio_pika.abc.AbstractConnection | None = None

    async def __aenter__(self) -> Replies:
        self._connection = await aio_pika.connect(AMQP_URL)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._connection is not None
        await self._connection.close()

    async def dead_letters(self) -> int:
        assert self._connection is not None
        channel = await self._connection.channel()
        queue = await channel.declare_queue(self.names.dead_letter_queue, passive=True)
        await channel.close()
        return queue.declaration_result.message_count or 0

    async def publish(self, reply: ReplyMessage) -> None:
        assert self._connection is not None
        channel = await self._connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(self.names.replies_exchange)
        key = self.names.reply_routing_key(reply.channel, "test", reply.conversation_id)
        await exchange.publish(
            aio_pika.Message(
                reply.to_bytes(), message_id=reply.message_id, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
            ),
            key,
        )
        await channel.close()


def reply(channel: Channel, recipient: str | int, text: str, message_id: str | None = None) -> ReplyMessage:
    metadata: dict[str, Any] = (
        {"phone_number_id": PHONE_NUMBER_ID, "to": recipient} if channel == "whatsapp" else {"chat_id": recipient}
    )
    return ReplyMessage(
        message_id=message_id or f"m-{uuid.uuid4().hex}",
        conversation_id=f"{channel}:{recipient}",
        user_id=str(recipient),
        channel=channel,
        reply=ReplyContent(text=text, engine="kb", confidence=0.9),
        latency_ms=1.0,
        metadata=metadata,
    )
