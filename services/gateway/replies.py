"""Replies coming back to this gateway: waiting requests and SSE streams.

Each gateway has a private, exclusive queue on the replies exchange. It is bound to this gateway's
own token (replies to messages it accepted, for the requests waiting on them) and, while someone
streams a conversation here, to that conversation's token; so the reply reaches the right instance
among many without every gateway seeing every reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, defaultdict
from collections.abc import AsyncIterator, Iterator

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from shared.broker import BROKER_ERRORS, CLOSE_TIMEOUT_S, Broker
from shared.messages import DELTA_HEADER, MessageFormatError, ReplyDelta, ReplyMessage

log = logging.getLogger(__name__)

# What a stream carries: a reply, the text of one so far, or None when the server shuts down.
Streamed = ReplyMessage | ReplyDelta | None
RECENT_REPLIES = 4096  # a reply re-sent after a worker crash arrives within seconds of the first
STREAM_BUFFER = 100


class ReplyRouter:
    def __init__(self, broker: Broker, gateway_id: str) -> None:
        self._broker = broker
        self._gateway_id = gateway_id
        self._queue: AbstractQueue | None = None
        self._ready = asyncio.Event()
        self._waiters: dict[str, list[asyncio.Future[ReplyMessage]]] = defaultdict(list)
        self._streams: dict[str, set[asyncio.Queue[Streamed]]] = defaultdict(set)
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._bind_lock = asyncio.Lock()

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._broker.connected

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
        await self._bind(conversation_id)
        self._streams[conversation_id].add(queue)
        try:
            yield queue
        finally:
            self._streams[conversation_id].discard(queue)
            if not self._streams[conversation_id]:
                del self._streams[conversation_id]
                with contextlib.suppress(*BROKER_ERRORS):
                    await self._unbind(conversation_id)

    async def _bind(self, conversation_id: str) -> None:
        if not self.ready or self._queue is None:
            raise ConnectionError("reply queue is not ready")
        async with self._bind_lock:
            if conversation_id not in self._streams:
                await self._queue.bind(
                    self._broker.names.replies_exchange, self._broker.names.conversation_binding(conversation_id)
                )

    async def _unbind(self, conversation_id: str) -> None:
        async with self._bind_lock:
            if conversation_id not in self._streams and self._queue is not None:
                await self._queue.unbind(
                    self._broker.names.replies_exchange, self._broker.names.conversation_binding(conversation_id)
                )

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        if message.headers.get(DELTA_HEADER):
            self._dispatch_delta(message.body)
            return
        try:
            reply = ReplyMessage.from_bytes(message.body)
        except MessageFormatError as exc:
            log.error("dropped a malformed reply: %s", exc)
            return
        self.dispatch(reply)

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
