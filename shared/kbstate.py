"""What every worker replica and the admin area share about the knowledge base, in Redis.

* a reload version: the admin's "reload" raises it; each worker watches it and reloads its own
  copy of the file (KB_PATH is on each worker's disk or ConfigMap) when it changes,
* each worker's status: the base it serves (entries, when loaded, the file's fingerprint) and,
  when the last reload was refused, why, and the taught phrasings applied on top of the file
  (shared/phrasings.py). It expires unless refreshed, so a gone worker leaves.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import orjson
from redis.asyncio import Redis

from shared.names import Names

STATUS_TTL_S = 120


@dataclass(frozen=True, slots=True)
class KbStatus:
    instance: str
    path: str
    entries: int
    loaded_at: float  # unix seconds of the load that is being served
    fingerprint: str  # sha256 of the served file's bytes, first 12 hex digits
    error: str = ""  # why the last reload attempt was refused ("" when it was not)
    error_at: float = 0.0
    phrasings: int = 0  # taught phrasings (shared/phrasings.py) applied on top of the file
    ignored: tuple[str, ...] = ()  # entry ids of taught phrasings the file lacks


def version_key(names: Names) -> str:
    return f"{names.key_prefix}:kb:reload-version"


def status_key(names: Names) -> str:
    return f"{names.key_prefix}:kb:status"


async def request_reload(redis: Redis, names: Names) -> int:
    """Ask every worker to reload its base now; returns the new version."""
    return int(await redis.incr(version_key(names)))


async def reload_version(redis: Redis, names: Names) -> int:
    value = await redis.get(version_key(names))
    return int(value) if value is not None else 0


async def publish_status(redis: Redis, names: Names, status: KbStatus, now: float) -> None:
    """One hash field per worker (value: JSON with `seen_at`); stale fields are dropped on read."""
    body = orjson.dumps(asdict(status) | {"seen_at": now})
    pipe = redis.pipeline(transaction=False)
    pipe.hset(status_key(names), status.instance, body)
    pipe.expire(status_key(names), STATUS_TTL_S)
    await pipe.execute()


async def statuses(redis: Redis, names: Names, now: float) -> list[dict[str, object]]:
    """The status of every worker seen in the last STATUS_TTL_S, by instance."""
    raw = await redis.hgetall(status_key(names))
    found = []
    for value in raw.values():
        status = orjson.loads(value)
        if now - float(status.get("seen_at", 0.0)) <= STATUS_TTL_S:
            found.append(status)
    return sorted(found, key=lambda s: str(s.get("instance", "")))
