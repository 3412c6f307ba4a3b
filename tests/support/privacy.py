"""What a namespace holds, read whole, for the tests that prove an erasure left nothing behind."""

from __future__ import annotations

from typing import Any

import aio_pika
from redis.asyncio import Redis

from shared.messages import CHANNELS
from shared.names import Names
from tests.support import AMQP_URL, TEST_SHARDS


async def redis_dump(redis: Redis, namespace: str) -> str:
    """Every key of the namespace with its value, one per line (a `decode_responses` client)."""
    lines = []
    async for key in redis.scan_iter(match=f"{namespace}:*", count=1000):
        lines.append(f"{key} {await _value(redis, key)!r}")
    return "\n".join(lines)


async def _value(redis: Redis, key: str) -> Any:
    kind = await redis.type(key)
    if kind == "string":
        return await redis.get(key)
    if kind == "list":
        return await redis.lrange(key, 0, -1)
    if kind == "hash":
        return await redis.hgetall(key)
    if kind == "set":
        return await redis.smembers(key)
    if kind == "zset":
        return await redis.zrange(key, 0, -1)
    return kind


def queues_of(namespace: str) -> list[str]:
    names = Names(namespace, TEST_SHARDS)
    durable = [names.dead_letter_queue, *names.shard_queues]
    return durable + [names.delivery_queue(channel) for channel in CHANNELS if channel != "web"]


async def queue_bodies(namespace: str) -> dict[str, list[bytes]]:
    """Every message waiting in the namespace's durable queues, left there (got, then given back).
    A shard queue cannot be read so (it has a single active consumer): it must be empty."""
    found: dict[str, list[bytes]] = {}
    shards = set(Names(namespace, TEST_SHARDS).shard_queues)
    connection = await aio_pika.connect(AMQP_URL)
    try:
        for name in queues_of(namespace):
            channel = await connection.channel()
            try:
                queue = await channel.declare_queue(name, passive=True)
            except aio_pika.exceptions.ChannelClosed:
                continue  # not declared in this namespace (a channel nobody configured)
            if name in shards:
                assert not queue.declaration_result.message_count, f"{name} still holds messages"
                await channel.close()
                continue
            bodies = found.setdefault(name, [])
            while (message := await queue.get(no_ack=False, fail=False, timeout=5)) is not None:
                bodies.append(message.body)
            await channel.close()  # gives every held message back
    finally:
        await connection.close()
    return found
