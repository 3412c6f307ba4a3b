"""What is sent together is still settled one by one: the worker's batched acks
(services/worker/acks.py) and the gateway's automatic Redis pipelining (services/gateway/pipelining.py).

Real RabbitMQ and Redis: a wrong `multiple` ack acks a delivery still being worked on (it would be
lost on a crash) or names a tag twice (the broker closes the channel); a batch that mixes up its
replies gives one request another's answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from services.gateway.pipelining import AutoPipeline, Script
from services.worker.acks import ChannelAcks
from tests.support import AMQP_URL, eventually, new_namespace

pytestmark = pytest.mark.integration  # acks on the shared RabbitMQ, pipelines on the shared Redis

MESSAGES = 12


@pytest.fixture
async def queue_name() -> AsyncIterator[str]:
    name = f"{new_namespace()}.acks"
    try:
        yield name
    finally:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(name)


async def _deliveries(channel: AbstractChannel, name: str) -> tuple[AbstractQueue, list[AbstractIncomingMessage]]:
    """Consume the queue on `channel` until MESSAGES deliveries are in hand, unacked."""
    await channel.set_qos(prefetch_count=MESSAGES)
    queue = await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
    received: list[AbstractIncomingMessage] = []

    async def keep(delivery: AbstractIncomingMessage) -> None:
        received.append(delivery)

    async def all_in_hand() -> bool:
        return len(received) == MESSAGES

    await queue.consume(keep)
    await eventually(all_in_hand, timeout=10, what="the deliveries")
    return queue, sorted(received, key=lambda delivery: delivery.delivery_tag or 0)


async def _fill(channel: AbstractChannel, name: str) -> None:
    await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
    for number in range(MESSAGES):
        await channel.default_exchange.publish(aio_pika.Message(str(number).encode()), routing_key=name)


async def _left_in(connection: AbstractConnection, name: str) -> list[str]:
    """What the queue gives a new consumer: the deliveries that were never acked."""
    channel = await connection.channel()
    queue = await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
    bodies = []
    while (message := await queue.get(no_ack=True, fail=False, timeout=5)) is not None:
        bodies.append(message.body.decode())
    return bodies


@dataclass
class _Held:
    connection: AbstractConnection
    channel: AbstractChannel
    deliveries: list[AbstractIncomingMessage]  # unacked, in delivery-tag order


@contextlib.asynccontextmanager
async def _held(name: str) -> AsyncIterator[_Held]:
    """MESSAGES deliveries of a queue in hand on one channel, none settled yet."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        await _fill(await connection.channel(), name)
        channel = await connection.channel()
        _, deliveries = await _deliveries(channel, name)
        yield _Held(connection, channel, deliveries)


async def _still_open(held: _Held, name: str) -> None:
    await held.channel.declare_queue(name, passive=True)  # a round trip: the broker did not close it
    assert not held.channel.is_closed
    await held.channel.close()


async def test_acks_in_any_order_settle_exactly_the_deliveries_acked(queue_name: str) -> None:
    async with _held(queue_name) as held:
        deliveries, acks = held.deliveries, ChannelAcks()
        still_working = {deliveries[2].body.decode(), deliveries[7].body.decode()}
        order = [d for d in deliveries if d.body.decode() not in still_working]
        random.Random(7).shuffle(order)
        # In three bursts: some acks go out singly (above a gap), later ones as `multiple` acks
        # naming tags below which some were acked already.
        for burst in (order[:3], order[3:6], order[6:]):
            for delivery in burst:
                acks.ack(delivery)
            await acks.flush()
        await _still_open(held, queue_name)
        assert sorted(await _left_in(held.connection, queue_name)) == sorted(still_working)


async def test_a_reject_goes_out_after_the_acks_before_it_and_the_channel_stays_open(queue_name: str) -> None:
    async with _held(queue_name) as held:
        deliveries, acks = held.deliveries, ChannelAcks()
        for delivery in deliveries[:5]:
            acks.ack(delivery)
        await acks.reject(deliveries[5])  # no dead-letter exchange on this queue: dropped
        for delivery in deliveries[6:-1]:
            acks.ack(delivery)
        await acks.flush()
        await _still_open(held, queue_name)
        assert await _left_in(held.connection, queue_name) == [deliveries[-1].body.decode()]


async def test_enough_acks_waiting_leave_without_the_linger_and_a_flush_cuts_it_short(queue_name: str) -> None:
    """A busy shard must not hold its prefetch in settled deliveries for the whole linger, and a
    reject or a handover must not wait for it either."""
    async with _held(queue_name) as held:
        deliveries, acks = held.deliveries, ChannelAcks(linger_s=60.0, flush_at=4)
        acks.ack(deliveries[0])
        await asyncio.sleep(0)  # its sender starts lingering
        for delivery in deliveries[1:4]:
            acks.ack(delivery)

        async def sent() -> bool:
            return acks.pending == 0

        await eventually(sent, timeout=5, what="the acks sent once four were waiting")
        acks.ack(deliveries[4])
        async with asyncio.timeout(5):  # (in this task: before the sender has even started)
            await acks.flush()
        await held.channel.close()  # what was not acked goes back to the queue
        assert sorted(await _left_in(held.connection, queue_name)) == sorted(d.body.decode() for d in deliveries[5:])


async def test_a_new_channel_starts_its_tags_afresh(queue_name: str) -> None:
    """After a dropped connection the shard's robust channel comes back with tags from 1: what was
    settled on the old channel must not make a `multiple` ack on the new one cover deliveries still
    being worked on."""
    acks = ChannelAcks()
    async with _held(queue_name) as old:
        for delivery in old.deliveries:
            acks.ack(delivery)
        await acks.flush()
        await old.channel.close()
        acks.ack(old.deliveries[0])  # a late settle of the old channel: nothing to send
        await _fill(await old.connection.channel(), queue_name)
        new = _Held(old.connection, channel := await old.connection.channel(), [])
        _, new.deliveries = await _deliveries(channel, queue_name)  # every old one was acked
        acks.ack(new.deliveries[4])  # tag 5 of the new channel; 1-4 and 6-12 are still in hand
        await acks.flush()
        await _still_open(new, queue_name)
        left = await _left_in(new.connection, queue_name)
        assert sorted(left) == sorted(d.body.decode() for n, d in enumerate(new.deliveries) if n != 4)


class _CountingPipeline(AutoPipeline):
    """Counts the round trips (pipelines sent)."""

    __slots__ = ("sent",)

    def __init__(self, redis: Redis) -> None:
        super().__init__(redis)
        self.sent = 0

    async def _send(self, commands: list[Any]) -> list[Any]:
        self.sent += 1
        return await super()._send(commands)


async def test_concurrent_commands_share_round_trips_and_each_gets_its_own_reply(redis: Redis) -> None:
    prefix = new_namespace()
    pipeline = _CountingPipeline(redis)
    echo = Script.of(redis, "redis.call('SET', KEYS[1], ARGV[1]); return ARGV[1]")
    try:
        await redis.set(f"{prefix}:text", "not a number")

        async def one(number: int) -> Any:
            if number == 13:
                return await pipeline.execute("INCR", f"{prefix}:text")  # fails: this one only
            return await pipeline.run(echo, [f"{prefix}:{number}"], [f"value-{number}"])

        results = await asyncio.gather(*(one(n) for n in range(100)), return_exceptions=True)
        assert isinstance(results[13], ResponseError)
        assert [r for n, r in enumerate(results) if n != 13] == [f"value-{n}" for n in range(100) if n != 13]
        assert await redis.get(f"{prefix}:42") == "value-42"
        assert pipeline.sent < 10, "100 concurrent commands went out in about one pipeline, not one by one"

        await redis.script_flush()  # as after a Redis restart: the script is loaded again
        assert await pipeline.run(echo, [f"{prefix}:again"], ["again"]) == "again"
    finally:
        keys = [key async for key in redis.scan_iter(f"{prefix}:*")]
        if keys:
            await redis.delete(*keys)


async def test_a_command_nobody_waits_for_rides_along_or_leaves_within_the_linger(redis: Redis) -> None:
    prefix = new_namespace()
    pipeline = _CountingPipeline(redis)
    try:
        pipeline.later("SET", f"{prefix}:accepted", "a:conversation")
        # A claim issued next finds it: the command issued first goes first in the shared trip.
        assert await pipeline.execute("GET", f"{prefix}:accepted") == "a:conversation"
        assert pipeline.sent == 1

        pipeline.later("SET", f"{prefix}:alone", "1")  # no company: it leaves on its own, soon

        async def landed() -> bool:
            return await redis.get(f"{prefix}:alone") == "1"

        await eventually(landed, timeout=5, what="the lingering command")
        assert pipeline.sent == 2

        pipeline.later("SET", f"{prefix}:at-stop", "1")
        await pipeline.drain()  # at shutdown: sent at once, not lost
        assert await redis.get(f"{prefix}:at-stop") == "1"
    finally:
        keys = [key async for key in redis.scan_iter(f"{prefix}:*")]
        if keys:
            await redis.delete(*keys)
