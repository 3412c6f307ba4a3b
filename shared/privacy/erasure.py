"""Find, export and erase one customer's data, wherever it lives: every owner of shared/privacy/owners.py
in Redis, and the dead-letter queue in RabbitMQ. Used by the admin area (an operator's request,
audited there) and by the worker (the customer's own request, after they confirmed it).

An erasure takes their dead letters out first (so their messages' ids are known), then finds and
erases the rest. What arrives from them meanwhile starts a new conversation, like their next message.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from shared.broker import Broker
from shared.names import Names
from shared.privacy import deadletters
from shared.privacy.customer import Customer
from shared.privacy.holdings import Holdings, discover
from shared.privacy.owners import Owner, owners

EXPORT_FORMAT = 1


@dataclass(frozen=True, slots=True)
class CustomerData:
    redis: Redis
    names: Names
    # None: the dead-letter queue is not looked at (a process without RabbitMQ).
    broker: Broker | None
    # Owners a feature adds beyond those of `owners()`.
    extra: tuple[Owner, ...] = ()

    @property
    def owners(self) -> tuple[Owner, ...]:
        return (*owners(self.redis, self.names), *self.extra)

    async def find(self, customer: Customer) -> Holdings:
        """Raises REDIS_ERRORS or BROKER_ERRORS."""
        letters = await deadletters.look(self.broker, self.redis) if self.broker is not None else []
        return await discover(self.redis, self.names, customer, letters)

    async def export(self, customer: Customer, now: float | None = None) -> dict[str, Any]:
        """Everything held about the customer, one JSON document (LGPD art. 18 II and V)."""
        found = await self.find(customer)
        document: dict[str, Any] = {
            "format": EXPORT_FORMAT,
            "customer": {"channel": customer.channel, "id": customer.id},
            "exported_at": time.time() if now is None else now,
            "conversation_ids": sorted(found.conversations),
        }
        for owner in self.owners:
            document[owner.name] = await owner.collect(found)
        document["dead_letters"] = [letter.to_dict() for letter in found.letters]
        return document

    async def erase(self, customer: Customer, keep: Iterable[str] = ()) -> dict[str, int]:
        """Erase everything held about the customer; how much each owner removed. `keep`: message ids
        whose records stay (the confirmation being sent to them; they expire within a day)."""
        letters: list[deadletters.Letter] = []
        if self.broker is not None:
            letters = await deadletters.sweep(
                self.broker, self.redis, lambda letter: customer.owns(letter.conversation_id)
            )
        found = await discover(self.redis, self.names, customer, letters)
        found.message_ids.difference_update(keep)
        erased = {"dead_letters": len(letters)}
        for owner in self.owners:
            erased[owner.name] = await owner.erase(found)
        return erased


def summary(found: Holdings) -> dict[str, Any]:
    """What an operator sees before exporting or erasing: how much there is, not what."""
    return {
        "customer": {"channel": found.customer.channel, "id": found.customer.id},
        "conversations": sorted(found.conversations),
        "messages": len(found.message_ids),
        "dead_letters": len(found.letters),
        "found": bool(found.conversations or found.message_ids or found.letters),
    }
