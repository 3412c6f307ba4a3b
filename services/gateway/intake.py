"""Accepting a message: claim its id once, then queue it durably. Shared by every channel."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from shared.broker import BROKER_ERRORS, Broker
from shared.messages import InboundMessage
from shared.store import REDIS_ERRORS, Store
from shared.web import Problem

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "5"


def unavailable(what: str) -> Problem:
    return Problem(
        503, f"{what} is unreachable; nothing was accepted, retry later", headers={"Retry-After": RETRY_AFTER_SECONDS}
    )


@dataclass(frozen=True, slots=True)
class Outcome:
    """`duplicate_of` is set (to the original's conversation) when the id had been accepted before."""

    duplicate_of: str | None = None

    @property
    def duplicate(self) -> bool:
        return self.duplicate_of is not None


@dataclass(frozen=True, slots=True)
class Intake:
    store: Store
    broker: Broker

    async def accept(self, message: InboundMessage) -> Outcome:
        """Claim and publish with confirm; only a returned Outcome means the message is safe."""
        if not self.broker.connected:
            raise unavailable("the message broker")
        try:
            owner = await self.store.claim(message.message_id, message.conversation_id)
        except REDIS_ERRORS:
            raise unavailable("Redis") from None
        if owner is not None:
            return Outcome(duplicate_of=owner)
        names = self.broker.names
        try:
            await self.broker.publish(
                names.inbound_exchange,
                str(names.shard_of(message.conversation_id)),
                message.to_bytes(),
                message_id=message.message_id,
            )
        except BROKER_ERRORS as exc:
            log.warning("publish failed, message %s not accepted: %s", message.message_id, exc)
            try:
                await self.store.release(message.message_id)
            except REDIS_ERRORS:
                log.error("claim of %s not released; a retry will be reported as duplicate", message.message_id)
            raise unavailable("the message broker") from None
        return Outcome()
