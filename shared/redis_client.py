"""The Redis client every service builds from its settings: one server (REDIS_URL), or the primary
that Redis Sentinel names (REDIS_SENTINELS), over TLS when the scheme is `rediss://`.

With Sentinel, redis-py's asyncio `Sentinel` asks the sentinels for the primary whenever a
connection is made; a connection to a node that stopped being the primary (READONLY, or gone)
is dropped, so the next command asks again and reaches the new primary. A command caught in the
switch fails with one of REDIS_ERRORS, which every caller already treats as "Redis unavailable,
try again" (the gateway answers 503, the worker holds the delivery in place), so nothing is
lost, doubled or left locked by a failover. A single server builds exactly the client it always
built (shared/store.py `create_redis`).
"""

from __future__ import annotations

import ssl
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import parse_url
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from shared.redis_packing import SentinelConnection, SentinelSSLConnection
from shared.settings import Settings, TlsFiles
from shared.store import REDIS_POOL_SIZE, REDIS_POOL_WAIT_S, client_options, create_redis

SENTINEL_TIMEOUT_S = 1.0


class SentinelBlockingPool(SentinelConnectionPool, BlockingConnectionPool):
    """The primary's pool, blocking like the single server's when every connection is in use."""


def tls_options(files: TlsFiles) -> dict[str, Any]:
    """redis-py's TLS options for `rediss://`: verify against REDIS_CA_FILE (else the system CAs)."""
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if files.ca_file is not None:
        options["ssl_ca_certs"] = str(files.ca_file)
    if files.cert_file is not None and files.key_file is not None:
        options["ssl_certfile"] = str(files.cert_file)
        options["ssl_keyfile"] = str(files.key_file)
    return options


def uses_tls(settings: Settings) -> bool:
    return settings.redis_url.startswith("rediss://")


def build_redis(settings: Settings) -> Redis:
    tls = tls_options(settings.redis_tls) if uses_tls(settings) else {}
    if not settings.redis_sentinels:
        return create_redis(settings.redis_url, **tls)
    return sentinel_primary(settings, tls)


def sentinel_primary(settings: Settings, tls: dict[str, Any]) -> Redis:
    """A client of the primary the sentinels name; REDIS_URL gives the user, password and database."""
    url = parse_url(settings.redis_url)
    credentials = {key: url[key] for key in ("username", "password", "db") if url.get(key) is not None}
    sentinel_options: dict[str, Any] = {
        "socket_timeout": SENTINEL_TIMEOUT_S,
        "socket_connect_timeout": SENTINEL_TIMEOUT_S,
    }
    if tls:
        sentinel_options |= {"ssl": True, **tls}
    sentinel = Sentinel(list(settings.redis_sentinels), sentinel_kwargs=sentinel_options)
    return sentinel.master_for(  # type: ignore[no-any-return]
        settings.redis_sentinel_service,
        redis_class=Redis,
        connection_pool_class=SentinelBlockingPool,
        max_connections=REDIS_POOL_SIZE,
        timeout=REDIS_POOL_WAIT_S,
        # Sentinel-managed, packing commands faster (shared/redis_packing.py); the class, not an
        # `ssl` flag, says TLS once a pool is given one.
        connection_class=SentinelSSLConnection if tls else SentinelConnection,
        **credentials,
        **tls,
        **client_options(),
    )
