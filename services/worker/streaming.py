"""A web reply's text as it is generated, to the gateways streaming its conversation (SSE
`event: delta`). Best effort: a delta that cannot be published is skipped, the final reply (sent
as usual, after the commit) is what counts. Not persisted: it is worth nothing a second later."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from shared.broker import BROKER_ERRORS, Broker
from shared.messages import DELTA_HEADER, InboundMessage, ReplyDelta

log = logging.getLogger(__name__)


def delta_publisher(broker: Broker, message: InboundMessage) -> Callable[[str], Awaitable[None]] | None:
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

    return publish
