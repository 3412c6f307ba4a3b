"""The audit log: who did what, when, from where, and how it ended. Written by the admin area for
every operator's action, and by the worker for a customer's own erasure (actor "customer").

Kept apart from the application logs in two places: a capped Redis list that the dashboard shows
(newest first), and the `atendimento.audit` logger, which the log set-up can route to a file of
its own (LOG_DIR/audit.log). An entry is logged even when Redis cannot store it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from shared.names import Names
from shared.store import REDIS_ERRORS

AUDIT_LOGGER = "atendimento.audit"
KEEP_ENTRIES = 10_000

audit_log = logging.getLogger(AUDIT_LOGGER)
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: the operator's name given at login (or "api" for a bearer token), and from where."""

    name: str
    client: str
    session: str = ""


@dataclass(frozen=True, slots=True)
class AuditLog:
    redis: Redis
    names: Names

    async def record(
        self, actor: Actor, action: str, target: str = "", outcome: str = "ok", detail: str = ""
    ) -> dict[str, Any]:
        entry = {
            "ts": round(time.time(), 3),
            "actor": actor.name,
            "client": actor.client,
            "session": actor.session,
            "action": action,
            "target": target,
            "outcome": outcome,
            "detail": detail,
        }
        audit_log.info(
            "%s %s %s by %s: %s",
            action,
            target,
            outcome,
            actor.name,
            detail,
            extra={f"audit_{key}": value for key, value in entry.items()},
        )
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.lpush(self.names.audit_key, orjson.dumps(entry))
                pipe.ltrim(self.names.audit_key, 0, KEEP_ENTRIES - 1)
                await pipe.execute()
        except REDIS_ERRORS as exc:
            log.error("audit entry not stored in Redis (it is in the audit log): %s", exc)
        return entry

    async def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        return [orjson.loads(raw) for raw in await self.redis.lrange(self.names.audit_key, 0, limit - 1)]
