"""A customer's requests about their data ("meus dados", "my data"), recorded for the operators, who
answer them within the law's 15 days (LGPD art. 19); the admin area lists the pending ones with their
age. One pending request per customer (asking again keeps the first date), in one Redis hash.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from shared.names import Names
from shared.privacy.customer import Customer

DEADLINE_DAYS = 15
DAY_S = 86_400


@dataclass(frozen=True, slots=True)
class PrivacyRequest:
    customer: str  # Customer.ref
    kind: str  # "export"
    conversation_id: str
    asked_at: float

    def age_days(self, now: float) -> float:
        return max(0.0, (now - self.asked_at) / DAY_S)

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        at = time.time() if now is None else now
        channel, _, customer_id = self.customer.partition(":")
        return {
            "channel": channel,
            "id": customer_id,
            "kind": self.kind,
            "conversation_id": self.conversation_id,
            "asked_at": self.asked_at,
            "age_days": round(self.age_days(at), 2),
            "due_in_days": round(DEADLINE_DAYS - self.age_days(at), 2),
        }


@dataclass(frozen=True, slots=True)
class PrivacyRequests:
    redis: Redis
    names: Names

    async def record(self, customer: Customer, kind: str, conversation_id: str, now: float | None = None) -> bool:
        """False when the customer had one pending already (its date stands)."""
        request = {"kind": kind, "conversation_id": conversation_id, "asked_at": time.time() if now is None else now}
        return bool(await self.redis.hsetnx(self.names.privacy_requests_key, customer.ref, orjson.dumps(request)))

    async def pending(self) -> list[PrivacyRequest]:
        """Oldest first: the nearest to its deadline."""
        raw = await self.redis.hgetall(self.names.privacy_requests_key)
        found = []
        for ref, value in raw.items():
            data = orjson.loads(value)
            kind, conversation = str(data["kind"]), str(data["conversation_id"])
            found.append(PrivacyRequest(str(ref), kind, conversation, float(data["asked_at"])))
        return sorted(found, key=lambda r: r.asked_at)

    async def forget(self, customer: Customer) -> bool:
        """Answered (or the customer erased): no longer pending."""
        return bool(await self.redis.hdel(self.names.privacy_requests_key, customer.ref))
