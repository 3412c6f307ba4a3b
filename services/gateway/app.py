"""The gateway application: channels in, durable queueing, replies back out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp_cors
from aiohttp import web

from services.gateway.access_log import access_log_middleware
from services.gateway.admission import Admission
from services.gateway.api_keys import API_PREFIX, api_key_middleware
from services.gateway.bodies import early_size_middleware
from services.gateway.claims import GatewayStore
from services.gateway.delivery import running_delivery
from services.gateway.error_counts import BackgroundErrors
from services.gateway.handlers import api, outbound, page, sse, status, telegram, whatsapp
from services.gateway.intake import Intake
from services.gateway.keys import (
    BROKER,
    CLOCK,
    CONTACTS,
    DELIVERY,
    ERRORS,
    INTAKE,
    METRICS,
    RATE_LIMITER,
    RECEIPTS,
    ROUTER,
    SETTINGS,
    STORE,
    STREAM_SLOTS,
    TOKENS,
)
from services.gateway.ratelimit import RateLimiter, ip_limit_middleware
from services.gateway.replies import ReplyRouter
from services.gateway.stream_slots import StreamSlots
from services.gateway.validation import MAX_BODY_BYTES
from services.gateway.web_conversations import TOKEN_HEADER, ConversationTokens
from shared.connections import open_connections
from shared.contacts import Clock, ContactBook
from shared.heartbeat import ProcessInfo, heartbeat_loop
from shared.metrics import GatewayMetrics
from shared.receipts import Receipts
from shared.service import supervised
from shared.settings import Settings
from shared.store import redis_check
from shared.telemetry import server_span_middleware
from shared.web import PROBE_PATHS, PROBES, Probes, install_security_headers, new_metrics_registry, problem_middleware

SERVICE = "gateway"


def create_app(settings: Settings) -> web.Application:
    registry = new_metrics_registry()
    metrics = GatewayMetrics.create(registry)
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[
            server_span_middleware,
            access_log_middleware,
            metrics.middleware(),
            problem_middleware,
            early_size_middleware,
            api_key_middleware(settings.gateway_api_keys),
            ip_limit_middleware(RATE_LIMITER, settings.trusted_proxies),
        ],
    )
    install_security_headers(app)
    app.on_response_prepare.append(_count_server_errors)
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[STREAM_SLOTS] = StreamSlots(settings.max_streams_per_ip)
    app[CLOCK] = Clock()
    Probes(lambda: _health(app), registry).install(app)
    app.cleanup_ctx.extend([_resources, _background, _delivery])
    app.on_shutdown.append(_drain)
    _add_routes(app)
    _allow_origins(app, settings.cors_allowed_origins)
    return app


ANY_SEGMENT = "[^/]+"  # a "/" in an id arrives encoded (%2F) and is decoded after matching


def _add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/messages", api.post_message)
    app.router.add_post("/v1/outbound", outbound.post_outbound)
    # An id may hold any character but a control one (validation.check_id); aiohttp's default
    # segment pattern excludes "{" and "}", so an accepted "pedido-{42}" could not be looked up.
    app.router.add_get(f"/v1/messages/{{message_id:{ANY_SEGMENT}}}", status.message_status)
    app.router.add_get(f"/v1/conversations/{{conversation_id:{ANY_SEGMENT}}}/events", sse.conversation_events)
    settings = app[SETTINGS]
    if settings.whatsapp_enabled:
        app.router.add_get("/webhooks/whatsapp", whatsapp.verify)
        app.router.add_post("/webhooks/whatsapp", whatsapp.receive)
    if settings.telegram_enabled:
        app.router.add_post("/webhooks/telegram", telegram.receive)
    app.router.add_get("/", page.chat_page)
    app.router.add_get("/widget.js", page.widget)
    app.router.add_static("/static", page.STATIC_DIR, append_version=False)
    app.router.add_get("/openapi.json", page.openapi_document)


def _allow_origins(app: web.Application, origins: tuple[str, ...]) -> None:
    """CORS for the web API, for the configured browser origins only (CORS_ALLOWED_ORIGINS)."""
    if not origins:
        return
    options = aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]
        allow_credentials=False,  # API keys travel in Authorization, never in cookies
        allow_methods=("GET", "POST"),
        allow_headers=("Authorization", "Content-Type", TOKEN_HEADER, "traceparent", "tracestate"),
        expose_headers=("Retry-After",),
        max_age=600,
    )
    cors = aiohttp_cors.setup(app, defaults=dict.fromkeys(origins, options))
    for resource in list(app.router.resources()):
        if resource.canonical.startswith(API_PREFIX):
            cors.add(resource)


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with open_connections(settings, SERVICE) as connections:
        redis, broker = connections.redis, connections.broker
        store = GatewayStore(redis, connections.names)
        app[STORE] = store
        app[ERRORS] = BackgroundErrors(store)
        app[BROKER] = broker
        limiter = RateLimiter.create(
            store.pipeline, connections.names, settings.rate_limit_per_user, settings.rate_limit_per_ip
        )
        app[RATE_LIMITER] = limiter
        admission = Admission(store.pipeline, connections.names)
        app[INTAKE] = Intake(store=store, broker=broker, limiter=limiter, admission=admission, metrics=app[METRICS])
        app[ROUTER] = ReplyRouter(broker, redis, settings.instance_id)
        app[TOKENS] = ConversationTokens(
            redis, connections.names, settings.conversation_token_secrets, settings.conversation_token_ttl_s
        )
        app[CONTACTS] = ContactBook(redis, connections.names, app[CLOCK])
        app[RECEIPTS] = Receipts(redis, connections.names, settings.retention_s)
        yield
        await store.pipeline.drain()  # the last accepts, while Redis is still connected


async def _background(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    router = app[ROUTER]
    info = ProcessInfo(SERVICE, settings.instance_id)
    tasks = [
        supervised("reply-router", router.run),
        supervised("reply-push", router.listen),
        supervised(
            "heartbeat",
            lambda: heartbeat_loop(
                app[STORE],
                info,
                settings.heartbeat_interval_s,
                settings.heartbeat_ttl_s,
                lambda: {"waiting": router.waiting, "streaming": router.streaming},
            ),
        ),
    ]
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _delivery(app: web.Application) -> AsyncIterator[None]:
    """WhatsApp and Telegram replies out through the channels' APIs (for the configured ones)."""
    async with running_delivery(app[SETTINGS], app[BROKER], app[STORE], app[METRICS].delivery) as consumers:
        app[DELIVERY] = consumers
        yield


async def _count_server_errors(request: web.Request, response: web.StreamResponse) -> None:
    """A 5xx answer to a request carrying work counts as an error of kind "5xx" in the stats (SPEC
    section 5); a probe's 503 is the probe's answer, not an error."""
    if response.status >= 500 and ERRORS in request.app and request.path not in PROBE_PATHS:
        request.app[ERRORS].record("5xx")
        request.app[METRICS].errors.labels("5xx").inc()


async def _drain(app: web.Application) -> None:
    app[PROBES].draining = True
    app[ROUTER].close_streams()


async def _health(app: web.Application) -> tuple[bool, dict[str, Any]]:
    checks: dict[str, Any] = {
        "rabbitmq": {"status": "up" if app[BROKER].connected else "down"},
        "replies": {"status": "up" if app[ROUTER].ready else "down"},
        "redis": await redis_check(app[STORE].redis),
    }
    for consumer in app[DELIVERY]:
        checks[f"delivery_{consumer.channel}"] = {"status": "up" if consumer.ready else "down"}
    return all(check["status"] == "up" for check in checks.values()), checks
