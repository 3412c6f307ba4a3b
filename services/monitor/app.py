"""The monitor: health, statistics, alerts and metrics for the whole system."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from services.monitor import alerts
from services.monitor.stats import iso, last_24h, read_raw, summarize
from services.monitor.system import SystemView
from shared.broker import Broker
from shared.heartbeat import ProcessInfo, heartbeat_loop
from shared.names import Names
from shared.settings import Settings
from shared.store import REDIS_ERRORS, Store, create_redis
from shared.web import (
    Probes,
    Problem,
    json_response,
    new_metrics_registry,
    problem_middleware,
    security_headers_middleware,
)

SERVICE = "monitor"
SETTINGS = web.AppKey("settings", Settings)
VIEW = web.AppKey("view", SystemView)
PROBES = web.AppKey("probes", Probes)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[problem_middleware, security_headers_middleware])
    app[SETTINGS] = settings
    # The monitor's /monitoring/health is the system's health (SPEC section 5), not a readiness probe.
    app[PROBES] = Probes(lambda: _never_called(), new_metrics_registry())
    app[PROBES].add_routes(app, with_health=False)
    app.router.add_get("/monitoring/health", system_health)
    app.router.add_get("/monitoring/stats", system_stats)
    app.router.add_get("/monitoring/stats/24h", system_stats_24h)
    app.cleanup_ctx.append(_resources)
    return app


async def _never_called() -> tuple[bool, dict[str, Any]]:
    raise AssertionError("the monitor serves its own /monitoring/health")


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    names = Names(settings.namespace, settings.shards)
    redis = create_redis(settings.redis_url)
    broker = Broker(settings.amqp_url, names, f"atendimento-monitor {settings.instance_id}")
    broker.start()
    store = Store(redis, names)
    info = ProcessInfo(SERVICE, settings.instance_id)
    app[VIEW] = SystemView(store, broker, settings.heartbeat_ttl_s, info.started_at)
    heartbeat = asyncio.create_task(
        heartbeat_loop(store, info, settings.heartbeat_interval_s, settings.heartbeat_ttl_s), name="heartbeat"
    )
    yield
    heartbeat.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await heartbeat
    await broker.close()
    await redis.aclose()


async def system_health(request: web.Request) -> web.Response:
    health = await request.app[VIEW].health()
    health["timestamp"] = iso(health["timestamp"])
    return json_response(health, status=503 if health["status"] == "unhealthy" else 200)


async def system_stats(request: web.Request) -> web.Response:
    view = request.app[VIEW]
    try:
        raw = await read_raw(view.store)
    except REDIS_ERRORS:
        raise Problem(503, "Redis is unreachable; statistics cannot be read", headers={"Retry-After": "5"}) from None
    health, services = await asyncio.gather(view.health(), view.services())
    summary = summarize(raw)
    queue = health["checks"]["rabbitmq"]
    body = {
        "timestamp": iso(raw.now),
        "uptime_seconds": round(time.time() - view.started_at, 1),
        "status": health["status"],
        **summary,
        "queue": {
            "depth": queue.get("queue_depth"),
            "consumers": queue.get("consumers"),
            "dead_letters": queue.get("dead_letters"),
        },
        "services": services or [],
        "alerts": [alert.to_dict() for alert in alerts.evaluate(health, summary, services or [])],
    }
    return json_response(body)


async def system_stats_24h(request: web.Request) -> web.Response:
    try:
        raw = await read_raw(request.app[VIEW].store)
    except REDIS_ERRORS:
        raise Problem(503, "Redis is unreachable; statistics cannot be read", headers={"Retry-After": "5"}) from None
    return json_response(last_24h(raw))
