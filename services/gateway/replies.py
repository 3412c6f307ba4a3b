"""Replies coming back to this gateway: waiting requests and SSE streams.

The workers push web replies over Redis pub/sub (services/worker/push.py): this gateway listens on
its own channel (replies to messages it accepted, for the requests waiting on them) and, while
someone streams a conversation here, on that conversation's channel; so the reply reaches the
right instance among many without every gateway hearing every reply. What was pushed while the
subscription was down is not lost: when it is up again, the stored replies of the requests waiting
here are read back, and a request whose wait ends reads its own.

What else comes back for web conversations (the LLM's partial replies, agents' replies, CSAT
questions) comes over RabbitMQ: a private, exclusive queue on the replies exchange, bound the same
way (this gateway's token, and each streamed conversation's token).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, defaultdict
from collections.abc import AsyncIterator, Iterator

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import Connection

from shared.broker import BROKER_ERRORS, CLOSE_TIMEOUT_S, Broker
from shared.messages import DELTA_HEADER, MessageFormatError, ReplyDelta, ReplyMessage
from shared.store import REDIS_ERRORS

log = logging.getLogger(__name__)

# What a stream carries: a reply, the text of one so far, or None when the server shuts down.
Streamed = ReplyMessage | ReplyDelta | None
RECENT_REPLIES = 4096  # a reply re-sent after a worker crash arrives within seconds of the first
STREAM_BUFFER = 100
# Subscribing again to pushed replies after Redis went away: soon, then at most this often.
LISTEN_RETRY_S = 0.1
LISTEN_RETRY_MAX_S = 1.0


class ReplyRouter:
    def __init__(self, broker: Broker, redis: Redis, gateway_id: str) -> None:
        self._broker = broker
        self._redis = redis
        self._gateway_id = gateway_id
        self._queue: AbstractQueue | None = None
        self._ready = asyncio.Event()
        self._pubsub: PubSub | None = None  # while listening
        self._subscriptions = 0  # made so far (listen's pace after a failure)
        self._waiters: dict[str, list[asyncio.Future[ReplyMessage]]] = defaultdict(list)
        self._streams: dict[str, set[asyncio.Queue[Streamed]]] = defaultdict(set)
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._bind_lock = asyncio.Lock()

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._pubsub is not None and self._broker.connected

    @property
    def waiting(self) -> int:
        return sum(len(futures) for futures in self._waiters.values())

    @property
    def streaming(self) -> int:
        return sum(len(queues) for queues in self._streams.values())

    async def run(self) -> None:
        """Declare the private queue and consume it; the robust channel restores both after a drop.
        A drop before the consumer is in place raises (the caller runs this supervised: it starts
        again) after closing the half-made channel, whose exclusive queue would block the next."""
        await self._broker.wait_ready()
        names = self._broker.names
        channel = await self._broker.connection.channel(publisher_confirms=False)
        try:
            queue = await channel.declare_queue(
                names.gateway_reply_queue(self._gateway_id), exclusive=True, auto_delete=True
            )
            await queue.bind(names.replies_exchange, names.gateway_binding(self._gateway_id))
            await queue.consume(self._on_reply, no_ack=True)
        except BaseException:
            with contextlib.suppress(*BROKER_ERRORS):
                await asyncio.wait_for(channel.close(), CLOSE_TIMEOUT_S)
            raise
        self._queue = queue
        self._ready.set()

    async def listen(self) -> None:
        """Hear the web replies the workers push, until cancelled. redis-py reconnects a dropped
        subscription by itself (and subscribes again); when it gives up (Redis away longer), this
        subscribes again soon after, not after the supervisor's growing pause: until it has, the
        gateway is not ready. Other errors (an ACL refusing SUBSCRIBE) raise to the supervisor."""
        failures = 0
        while True:
            subscribed = self._subscriptions
            try:
                await self._listen_once()
            except REDIS_ERRORS as exc:
                failures = 1 if self._subscriptions != subscribed else failures + 1
                if failures == 1:
                    log.warning("subscription to pushed replies lost, subscribing again: %r", exc)
                await asyncio.sleep(min(LISTEN_RETRY_MAX_S, LISTEN_RETRY_S * 2 ** (failures - 1)))

    async def _listen_once(self) -> None:
        names = self._broker.names
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        connection: Connection | None = None
        try:
            async with self._bind_lock:  # the streams open now are those listened to
                channels = [names.conversation_push_channel(conversation) for conversation in self._streams]
                await pubsub.subscribe(names.gateway_push_channel(self._gateway_id), *channels)
                connection = pubsub.connection
                if connection is not None:
                    connection.register_connect_callback(self._reconnected)
                self._pubsub = pubsub
                self._subscriptions += 1
            await self._catch_up()
            async for message in pubsub.listen():
                self._dispatch_body(message["data"])
        finally:
            self._pubsub = None
            if connection is not None:
                connection.deregister_connect_callback(self._reconnected)  # type: ignore[no-untyped-call]
            await pubsub.aclose()

    async def _reconnected(self, _: Connection) -> None:
        """redis-py subscribed again after a dropped connection (its own callback runs first)."""
        await self._catch_up()

    async def _catch_up(self) -> None:
        """Dispatch the stored replies of the requests waiting here: pushed while nobody heard."""
        waiting = list(self._waiters)
        if not waiting:
            return
        names = self._broker.names
        try:
            stored = await self._redis.mget([names.reply_key(message_id) for message_id in waiting])
        except REDIS_ERRORS as exc:
            log.warning("replies pushed while the subscription was down not read back: %r", exc)
            return
        for raw in stored:
            if raw:
                self._dispatch_body(raw)

    def _dispatch_body(self, body: bytes | str) -> None:
        try:
            reply = ReplyMessage.from_bytes(body)
        except MessageFormatError as exc:
            log.error("dropped a malformed reply: %s", exc)
            return
        self.dispatch(reply)

    def close_streams(self) -> None:
        """Tell every open stream to end (server shutdown), even one whose buffer is full."""
        for queues in self._streams.values():
            for queue in queues:
                if queue.full():
                    queue.get_nowait()  # a stalled reader loses an event it would not have read
                queue.put_nowait(None)

    @contextlib.contextmanager
    def waiter(self, message_id: str) -> Iterator[asyncio.Future[ReplyMessage]]:
        future: asyncio.Future[ReplyMessage] = asyncio.get_running_loop().create_future()
        self._waiters[message_id].append(future)
        try:
            yield future
        finally:
            futures = self._waiters.get(message_id, [])
            if future in futures:
                futures.remove(future)
            if not futures:
                self._waiters.pop(message_id, None)

    @contextlib.asynccontextmanager
    async def stream(self, conversation_id: str) -> AsyncIterator[asyncio.Queue[Streamed]]:
        """Receive this conversation's replies (and the text of LLM replies as it is generated)
        while the context is open (raises BROKER_ERRORS)."""
        queue: asyncio.Queue[Streamed] = asyncio.Queue(STREAM_BUFFER)
        await self._bind(conversation_id, queue)
        try:
            yield queue
        finally:
            self._streams[conversation_id].discard(queue)
            if not self._streams[conversation_id]:
                del self._streams[conversation_id]
                with contextlib.suppress(*BROKER_ERRORS):
                    await self._unbind(conversation_id)

    async def _bind(self, conversation_id: str, queue: asyncio.Queue[Streamed]) -> None:
        """Listen to the conversation both ways replies come in, and stream them to `queue`
        (raises BROKER_ERRORS). Under the lock a new subscription to pushed replies takes the
        streams from, so none is left out of it."""
        names = self._broker.names
        async with self._bind_lock:
            pubsub, amqp = self._pubsub, self._queue
            if not self.ready or amqp is None or pubsub is None:
                raise ConnectionError("reply queue is not ready")
            if conversation_id not in self._streams:
                await amqp.bind(names.replies_exchange, names.conversation_binding(conversation_id))
                try:
                    await pubsub.subscribe(names.conversation_push_channel(conversation_id))
                except REDIS_ERRORS as exc:
                    with contextlib.suppress(*BROKER_ERRORS):
                        await amqp.unbind(names.replies_exchange, names.conversation_binding(conversation_id))
                    raise ConnectionError(f"replies pushed over Redis: {exc!r}") from exc
            self._streams[conversation_id].add(queue)

    async def _unbind(self, conversation_id: str) -> None:
        names = self._broker.names
        async with self._bind_lock:
            if conversation_id in self._streams:
                return
            if self._pubsub is not None:
                with contextlib.suppress(*REDIS_ERRORS):
                    await self._pubsub.unsubscribe(names.conversation_push_channel(conversation_id))
            if self._queue is not None:
                await self._queue.unbind(names.replies_exchange, names.conversation_binding(conversation_id))

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        if message.headers.get(DELTA_HEADER):
            self._dispatch_delta(message.body)
            return
        self._dispatch_body(message.body)

    def _dispatch_delta(self, body: bytes) -> None:
        try:
            delta = ReplyDelta.from_bytes(body)
        except MessageFormatError as exc:
            log.error("dropped a malformed reply delta: %s", exc)
            return
        if delta.message_id in self._recent:
            return  # late: its final reply is shown already
        for queue in self._streams.get(delta.conversation_id, ()):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(delta)

    def dispatch(self, reply: ReplyMessage) -> None:
        for future in self._waiters.get(reply.message_id, ()):
            if not future.done():
                future.set_result(reply)
        if reply.merged_into or reply.silenced:
            # Only for the requests waiting on it: a message merged into another one's reply
            # (DEBOUNCE_MS), whose reply the streams show once, or one the bot stays silent on.
            return
        if reply.message_id in self._recent:
            return  # the same reply re-sent after a worker crash: streams have shown it already
        self._recent[reply.message_id] = None
        if len(self._recent) > RECENT_REPLIES:
            self._recent.popitem(last=False)
        for queue in self._streams.get(reply.conversation_id, ()):
            with contextlib.suppress(asyncio.QueueFull):  # a stalled reader loses events, not memory
                queue.put_nowait(reply)
