"""A web reply's text as it is generated, to the gateways streaming its conversation (SSE
`event: delta`). Best effort: a delta that cannot be published is skipped, the final reply (sent
as usual, after the commit) is what counts. Not persisted: it is worth nothing a second later.

The newest text wins: the engine's stream reader hands each text over without waiting for the
broker, and while one delta is being published a newer text replaces the one waiting. Idle, every
delta goes out; under load (a hundred replies streaming at once) fewer do, each the whole text so
far, so nothing is missed, and the worker spends its time on replies rather than on confirms of
deltas nobody may be watching.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from shared.broker import BROKER_ERRORS, Broker
from shared.messages import DELTA_HEADER, InboundMessage, ReplyDelta

log = logging.getLogger(__name__)


class DeltaStream:
    """EngineRequest.on_delta for one reply: hands the newest text to `send`, one at a time."""

    def __init__(self, send: Callable[[str], Awaitable[None]]) -> None:
        self._send = send
        self._waiting: str | None = None
        self._sending: asyncio.Task[None] | None = None

    async def __call__(self, text_so_far: str) -> None:
        self._waiting = text_so_far
        if self._sending is None or self._sending.done():
            self._sending = asyncio.create_task(self._drain(), name="reply-deltas")

    async def _drain(self) -> None:
        while self._waiting is not None:
            text, self._waiting = self._waiting, None
            await self._send(text)

    async def finished(self) -> None:
        """Wait until the last delta is out: the final reply must not overtake it."""
        if self._sending is not None:
            await self._sending


def delta_publisher(broker: Broker, message: InboundMessage) -> DeltaStream | None:
    """For EngineRequest.on_delta: None outside the web channel (the others cannot show a reply
    being typed)."""
    if message.channel != "web":
        return None
    names = broker.names
    routing_key = names.reply_routing_key("web", message.gateway_id, message.conversation_id)

    async def publish(text_so_far: str) -> None:
        delta = ReplyDelta(message.message_id, message.conversation_id, text_so_far)
        try:
            await broker.publish(
                names.replies_exchange,
                routing_key,
                delta.to_bytes(),
                message_id=message.message_id,
                conversation_id=message.conversation_id,
                headers={DELTA_HEADER: 1},
                persistent=False,
                mandatory=False,
            )
        except BROKER_ERRORS as exc:
            log.debug("reply delta not published: %s", exc)

    return DeltaStream(publish)
