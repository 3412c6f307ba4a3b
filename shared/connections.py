"""The connections every service opens at start and closes at stop: Redis and RabbitMQ."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from redis.asyncio import Redis

from shared.broker import Broker
from shared.names import Names
from shared.redis_client import build_redis, uses_tls
from shared.settings import Settings, TlsFiles
from shared.tls import check_server_certificate, client_context


@dataclass(frozen=True, slots=True)
class Connections:
    names: Names
    redis: Redis
    broker: Broker


@contextlib.asynccontextmanager
async def open_connections(settings: Settings, service: str) -> AsyncIterator[Connections]:
    """Redis answers lazily and the broker connects in the background, so a service starts (and
    says what it misses in its health) even while either is unreachable. A TLS server whose
    certificate the configured CA does not sign stops the start instead (ConfigError)."""
    names = Names(settings.namespace, settings.shards)
    amqp_context = await _checked_context(settings.amqp_urls, settings.amqp_tls, 5671)
    if uses_tls(settings) and settings.redis_sentinels:
        # The primary is not known before the sentinels are asked (by each connection): the CA
        # bundle and client certificate are only loaded, so a malformed one still stops the start.
        client_context(settings.redis_tls)
    elif uses_tls(settings):
        await _checked_context((settings.redis_url,), settings.redis_tls, 6379)
    redis = build_redis(settings)
    broker = Broker(settings.amqp_urls, names, f"atendimento-{service} {settings.instance_id}", amqp_context)
    broker.start()
    try:
        yield Connections(names, redis, broker)
    finally:
        await broker.close()
        await redis.aclose()


async def _checked_context(urls: tuple[str, ...], files: TlsFiles, default_port: int) -> ssl.SSLContext | None:
    """The TLS context for these URLs (None without TLS), its CA checked against the first of them."""
    first = urlsplit(urls[0])
    if first.scheme not in ("amqps", "rediss"):
        return None
    context = client_context(files)
    await check_server_certificate(first.hostname or "localhost", first.port or default_port, context, files)
    return context
