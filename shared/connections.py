"""The connections every service opens at start and closes at stop: Redis and RabbitMQ."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from redis.asyncio import Redis

from shared.broker import Broker
from shared.names import Names
from shared.settings import Settings
from shared.store import create_redis


@dataclass(frozen=True, slots=True)
class Connections:
    names: Names
    redis: Redis
    broker: Broker


@contextlib.asynccontextmanager
async def open_connections(settings: Settings, service: str) -> AsyncIterator[Connections]:
    """Redis answers lazily and the broker connects in the background, so a service starts (and
    says what it misses in its health) even while either is unreachable."""
    names = Names(settings.namespace, settings.shards)
    redis = create_redis(settings.redis_url)
    broker = Broker(settings.amqp_url, names, f"atendimento-{service} {settings.instance_id}")
    broker.start()
    try:
        yield Connections(names, redis, broker)
    finally:
        await broker.close()
        await redis.aclose()
