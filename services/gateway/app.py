"""The gateway application: channels in, durable queueing, replies back out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from services.gateway.handlers import api, page, sse
from services.gateway.intake import Intake
from services.gateway.keys import BROKER, INTAKE, PROBES, ROUTER, SETTINGS, STORE
from services.gateway.replies import ReplyRouter
from services.gateway.validation import MAX_BODY_BYTES
from shared.broker import Broker
from shared.heartbeat import ProcessInfo, heartbeat_loop
from shared.names import Names
from shared.settings import Settings
from shared.store import Store, create_redis, redis_check
from shared.web import Probes, new_metrics_registry, problem_middleware, security_headers_middleware

SERVICE = "gateway"


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[problem_middleware, security_headers_middleware])
    app[SETTINGS] = settings
    app[PROBES] = Probes(lambda: _health(app), new_metrics_registry())
    app.cleanup_ctx.extend([_resources, _background])
    app.on_shutdown.append(_drain)
    _add_routes(app)
    return app


def _add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/messages", api.post_message)
    app.router.add_get("/v1/conversations/{conversation_id}/events", sse.conversation_events)
    app.router.add_get("/", page.chat_page)
    app.router.add_static("/static", page.STATIC_DIR, append_version=False)
    app.router.add_get("/openapi.json", page.openapi_document)
    app[PROBES].add_routes(app)


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    names = Names(settings.namespace, settings.shards)
    redis = create_redis(settings.redis_url)
    broker = Broker(settings.amqp_url, names, f"atendimento-gateway {settings.instance_id}")
    broker.start()
    store = Store(redis, names)
    app[STORE] = store
    app[BROKER] = broker
    app[INTAKE] = Intake(store, broker)
    app[ROUTER] = ReplyRouter(broker, settings.instance_id)
    yield
    await broker.close()
    await redis.aclose()


async def _background(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    router = app[ROUTER]
    info = ProcessInfo(SERVICE, settings.instance_id)
    tasks = [
        asyncio.create_task(router.run(), name="reply-router"),
        asyncio.create_task(
            heartbeat_loop(
                app[STORE],
                info,
                settings.heartbeat_interval_s,
                settings.heartbeat_ttl_s,
                lambda: {"waiting": router.waiting, "streaming": router.streaming},
            ),
            name="heartbeat",
        ),
    ]
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _drain(app: web.Application) -> None:
    app[PROBES].draining = True
    app[ROUTER].close_streams()


async def _health(app: web.Application) -> tuple[bool, dict[str, Any]]:
    checks: dict[str, Any] = {
        "rabbitmq": {"status": "up" if app[BROKER].connected else "down"},
        "replies": {"status": "up" if app[ROUTER].ready else "down"},
        "redis": await redis_check(app[STORE].redis),
    }
    return all(check["status"] == "up" for check in checks.values()), checks
