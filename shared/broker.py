"""RabbitMQ: one robust connection per process, the topology, and publishing with confirms.

`connect_robust` restores channels, queues, bindings and consumers after a drop, but it does not
retry the very first connection; `Broker` keeps trying in the background, so a service starts
(and answers 503 where it needs the broker) while RabbitMQ is still unreachable. With several
nodes in AMQP_URL each attempt goes to the next one (shared/amqp_nodes.py). A publish the broker
nacks renews the publishing channel (`Broker._renew_publisher`, for RabbitMQ before 3.12.5).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Mapping, Sequence
from typing import Any, cast

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
    DeliveryMode,
)
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, ChannelInvalidStateError

from shared.amqp_nodes import connect_cluster
from shared.messages import CHANNELS, ReplyMessage
from shared.names import Names
from shared.telemetry import producer_span

log = logging.getLogger(__name__)

BROKER_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_EXCEPTIONS, asyncio.TimeoutError)

# The broker's own bound on redeliveries, a backstop behind the worker's attempt counter
# (MAX_ATTEMPTS, kept in Redis) for messages that kill their worker; the worker dead-letters the
# last delivery it allows itself, so that such a message counts as an error (`last_delivery`). It
# is fixed, not derived from settings, because RabbitMQ refuses a re-declaration with different
# arguments, and it is generous because quorum queues also count the returns of a clean shutdown
# or a rebalance.
DELIVERY_LIMIT = 50
# Quorum queues' replication factor: all nodes, at most three (RabbitMQ takes every node of a
# smaller cluster). Fixed for the same reason as DELIVERY_LIMIT; queues made before it was declared
# keep the members they have (`Broker.queue_arguments`).
QUORUM_GROUP_SIZE = 3
QUORUM_GROUP_SIZE_ARGUMENT = "x-quorum-initial-group-size"
PUBLISH_TIMEOUT_S = 5.0
CLOSE_TIMEOUT_S = 2.0
# A message the gateway published again over a claim whose first publish it could not see confirmed
# (that gateway died mid-publish): it may be queued twice, so the worker treats it like a
# redelivery and looks for a stored reply before generating one.
COPY_HEADER = "x-atendimento-copy"
# Logged when a nacked publish renews the publishing channel (`Broker._renew_publisher`).
RENEWED_AFTER_NACK = "publish nacked"


def last_delivery(delivery: AbstractIncomingMessage) -> bool:
    """The broker's last delivery of a message (its `x-delivery-count` at DELIVERY_LIMIT): returned
    once more, as by a worker killed while holding it, it would be dead-lettered by the broker
    itself, which no statistics would see."""
    count = (delivery.headers or {}).get("x-delivery-count")
    return isinstance(count, int) and count >= DELIVERY_LIMIT


def may_be_a_copy(delivery: AbstractIncomingMessage) -> bool:
    return delivery.redelivered is True or bool((delivery.headers or {}).get(COPY_HEADER))


def quorum_arguments() -> dict[str, Any]:
    return {"x-queue-type": "quorum", QUORUM_GROUP_SIZE_ARGUMENT: QUORUM_GROUP_SIZE}


def work_queue_arguments(names: Names, *, single_active_consumer: bool) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        **quorum_arguments(),
        "x-dead-letter-exchange": names.dead_letter_exchange,
        "x-delivery-limit": DELIVERY_LIMIT,
    }
    if single_active_consumer:
        # One active consumer per shard keeps each conversation strictly in order, even with many
        # workers; the others are hot standbys that take over when it goes.
        arguments["x-single-active-consumer"] = True
    return arguments


def durable_queues(names: Names) -> dict[str, dict[str, Any]]:
    """Every durable (quorum) queue of the namespace and its arguments."""
    queues = {names.dead_letter_queue: quorum_arguments()}
    for shard in range(names.shards):
        queues[names.shard_queue(shard)] = work_queue_arguments(names, single_active_consumer=True)
    for channel_name in CHANNELS:
        if channel_name != "web":
            queues[names.delivery_queue(channel_name)] = work_queue_arguments(names, single_active_consumer=False)
    return queues


async def declare_topology(channel: AbstractChannel, broker: Broker) -> None:
    """Declare every exchange and durable queue; idempotent, done by every service at connect."""
    names = broker.names
    inbound = await channel.declare_exchange(names.inbound_exchange, aio_pika.ExchangeType.DIRECT, durable=True)
    replies = await channel.declare_exchange(names.replies_exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    dead = await channel.declare_exchange(names.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True)

    dead_letters = await broker.declare_durable_queue(channel, names.dead_letter_queue)
    await dead_letters.bind(dead, routing_key="")
    for shard in range(names.shards):
        queue = await declare_shard_queue(channel, broker, shard)
        await queue.bind(inbound, routing_key=str(shard))
    for channel_name in CHANNELS:
        if channel_name == "web":
            continue
        queue = await broker.declare_durable_queue(channel, names.delivery_queue(channel_name))
        await queue.bind(replies, routing_key=f"{channel_name}.#")


async def declare_shard_queue(channel: AbstractChannel, broker: Broker, shard: int) -> AbstractQueue:
    return await broker.declare_durable_queue(channel, broker.names.shard_queue(shard))


async def made_before_sizing(connection: AbstractRobustConnection, queues: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """The queues that exist without a replication factor (made before it was declared): RabbitMQ
    refuses to re-declare them with one. Tried on a plain channel of their own, which such a
    refusal closes, so that no robust channel remembers a declaration that cannot succeed."""
    made_before: set[str] = set()
    underlay = connection.transport
    if underlay is None:
        raise ConnectionError("not connected to RabbitMQ")
    channel = await underlay.connection.channel()
    try:
        for name, arguments in queues.items():
            try:
                await channel.queue_declare(name, durable=True, arguments=dict(arguments))
            except aiormq.exceptions.ChannelPreconditionFailed:
                made_before.add(name)
                channel = await underlay.connection.channel()
    finally:
        with contextlib.suppress(*BROKER_ERRORS, aiormq.exceptions.AMQPError):
            await channel.close()
    return made_before


async def open_publisher(connection: AbstractRobustConnection) -> AbstractChannel:
    """A channel to publish on: confirms, and an unroutable mandatory message raises."""
    return await connection.channel(publisher_confirms=True, on_return_raises=True)


class Broker:
    """A process's connection to RabbitMQ and its confirming publisher channel."""

    def __init__(
        self, urls: Sequence[str], names: Names, connection_name: str, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        if isinstance(urls, str):  # a str is a Sequence[str] too: one URL, not its characters
            raise TypeError("urls: a sequence of AMQP URLs, not one string")
        self._urls = tuple(urls)
        self._names = names
        self._connection_name = connection_name
        self._ssl_context = ssl_context
        # Processes spread over the nodes of a cluster; each failed attempt tries the next one.
        self._attempts = random.randrange(len(self._urls))
        self._queues = durable_queues(names)
        self._made_before_sizing: set[str] = set()
        self._connection: AbstractRobustConnection | None = None
        # The channel that declared the topology, held here because the robust connection holds its
        # channels weakly, and re-declares what they declared when it reconnects.
        self._topology: AbstractChannel | None = None
        self._channel: AbstractChannel | None = None  # the publisher's, with confirms
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def names(self) -> Names:
        return self._names

    @property
    def connected(self) -> bool:
        """True while the connection is up and the topology is declared."""
        return (
            self._ready.is_set()
            and self._connection is not None
            and not self._connection.is_closed
            and self._connection.connected.is_set()
        )

    @property
    def connection(self) -> AbstractRobustConnection:
        if self._connection is None:
            raise ConnectionError("not connected to RabbitMQ yet")
        return self._connection

    def start(self) -> None:
        self._task = asyncio.create_task(self._connect_forever(), name="broker-connect")

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._connection is not None:
            # Bounded: closing waits for the broker's answer, which a wedged broker never sends.
            with contextlib.suppress(*BROKER_ERRORS):
                await asyncio.wait_for(self._connection.close(), CLOSE_TIMEOUT_S)

    async def _connect_forever(self) -> None:
        delay = 0.2
        while True:
            try:
                await self._connect_once()
                log.info("connected to RabbitMQ")
                return
            except BROKER_ERRORS as exc:
                log.warning("RabbitMQ unreachable, retrying in %.1fs: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def queue_arguments(self, queue: str) -> dict[str, Any]:
        """A durable queue's arguments, as it was made (see `made_before_sizing`)."""
        arguments = dict(self._queues[queue])
        if queue in self._made_before_sizing:
            del arguments[QUORUM_GROUP_SIZE_ARGUMENT]
        return arguments

    async def declare_durable_queue(self, channel: AbstractChannel, queue: str) -> AbstractQueue:
        return await channel.declare_queue(queue, durable=True, arguments=self.queue_arguments(queue))

    async def _connect_once(self) -> None:
        self._attempts += 1
        connection = await connect_cluster(
            self._urls,
            first=self._attempts,
            ssl_context=self._ssl_context,
            client_properties={"connection_name": self._connection_name},
        )
        try:
            self._made_before_sizing = await made_before_sizing(connection, self._queues)
            if self._made_before_sizing:
                log.info(
                    "%d queues were made before their replication factor was declared; they keep their "
                    "members (rabbitmq-queues grow adds nodes)",
                    len(self._made_before_sizing),
                )
            # The topology on a channel of its own, which the robust connection re-declares after a
            # reconnection: the publisher's may be replaced (`_renew_publisher`).
            topology = await connection.channel(publisher_confirms=False)
            await declare_topology(topology, self)
            channel = await open_publisher(connection)
        except BaseException:
            with contextlib.suppress(*BROKER_ERRORS):
                await connection.close()
            raise
        self._connection = connection
        self._topology = topology
        self._channel = channel
        self._ready.set()

    async def _renew_publisher(self, nacked: AbstractChannel, exchange: str, routing_key: str) -> None:
        """Publish on a fresh channel from now on, and close the one whose publish was nacked.

        RabbitMQ before 3.12.5 starts a channel's client of a quorum queue at the leader its queue
        record names, on the channel's first publish to it, and asks that node alone. Just after
        the leader's node died the record still names the dead node; that client then nacks every
        publish to the queue for as long as the channel lives, long after a new leader is elected
        and recorded (rabbitmq-server#9241 narrowed it in 3.11.23/3.12.4, "QQ: remove machine
        version 0 check in rabbit_fifo_client" ended it in 3.12.5). A fresh channel starts its
        client again, from the record as it is then. Other nacks (a queue on a node that is down,
        a full one) cost one channel each, one at a time. Publishes still in flight on the nacked
        channel fail, and are retried by whoever made them, as after a lost connection."""
        connection = self._connection
        if self._channel is not nacked or connection is None:
            return  # another nack of the same channel renewed it already
        self._channel = None  # meanwhile publishes fail at once (503, retried)
        fresh: AbstractChannel | None = None
        try:
            fresh = await asyncio.wait_for(open_publisher(connection), PUBLISH_TIMEOUT_S)
        except BROKER_ERRORS as exc:
            log.warning("publish to %s/%s nacked; no fresh channel yet (next nack): %s", exchange, routing_key, exc)
        finally:
            self._channel = fresh or nacked
        if fresh is not None:
            log.warning("%s to %s/%s: publishing on a fresh channel", RENEWED_AFTER_NACK, exchange, routing_key)
            with contextlib.suppress(*BROKER_ERRORS):
                await asyncio.wait_for(nacked.close(), CLOSE_TIMEOUT_S)

    async def publish_reply(self, reply: ReplyMessage) -> None:
        """Hand a reply back (the worker's, or an agent's from the admin area), with confirm."""
        await self.publish(
            self._names.replies_exchange,
            self._names.route_of(reply),
            reply.to_bytes(),
            message_id=reply.message_id,
            conversation_id=reply.conversation_id,
            # Web replies go to transient gateway queues and may find no listener; that is fine,
            # the reply is stored. Channel replies go to durable delivery queues.
            persistent=reply.channel != "web",
            mandatory=False,
        )

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        message_id: str,
        conversation_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        persistent: bool = True,
        mandatory: bool = True,
    ) -> None:
        """Publish and wait for the broker's confirm; raises one of BROKER_ERRORS otherwise.

        In a PRODUCER span whose context travels in the headers (W3C traceparent), so the consumer
        continues the trace; the conversation id travels as the AMQP correlation id."""
        amqp_headers = dict(headers or {})
        with producer_span(exchange, routing_key, amqp_headers, message_id=message_id, conversation_id=conversation_id):
            if not self.connected:
                raise ConnectionError("RabbitMQ is not connected")
            # Straight to aiormq with the frame's properties: an aio_pika.Message would only be
            # built to be read back into them (tens of guarded attribute writes per message).
            properties = aiormq.spec.Basic.Properties(
                content_type="application/json",
                message_id=message_id,
                correlation_id=conversation_id,
                headers=amqp_headers,
                delivery_mode=(DeliveryMode.PERSISTENT if persistent else DeliveryMode.NOT_PERSISTENT).value,
            )
            channel = self._channel
            if channel is None or channel.is_closed:
                raise ChannelInvalidStateError(f"{channel!r} closed")
            # aiormq's own channel: its basic_publish takes `wait`, which the abstract one lacks.
            underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
            try:
                await underlay.basic_publish(
                    body,
                    exchange=exchange,
                    routing_key=routing_key,
                    properties=properties,
                    mandatory=mandatory,
                    timeout=PUBLISH_TIMEOUT_S,
                    # The confirm is what counts, not the socket write: waiting for the write too
                    # costs a loop turn per publish (the writer task, then this one again).
                    wait=False,
                )
            except aiormq.exceptions.DeliveryError as exc:
                if isinstance(exc.frame, aiormq.spec.Basic.Nack):  # not a return (PublishError)
                    await self._renew_publisher(channel, exchange, routing_key)
                raise
