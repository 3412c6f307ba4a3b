"""The monitor: health, statistics, alerts and metrics for the whole system, and the admin area."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from aiohttp import web

from services.monitor.admin import pages
from services.monitor.admin.auth import AdminAuth, token_checks_counter
from services.monitor.admin.basefile import BaseFile
from services.monitor.admin.guard import admin_guard
from services.monitor.admin.routes import add_routes as add_admin_routes
from services.monitor.admin.routes import no_store
from services.monitor.alerts import WebhookNotifier
from services.monitor.audit import AuditLog
from services.monitor.deadletters import DeadLetters
from services.monitor.evaluator import Evaluator
from services.monitor.gauges import SystemCollector
from services.monitor.health import health_json
from services.monitor.keys import (
    AUDIT,
    AUTH,
    BASE,
    BROKER,
    CONVERSATIONS,
    CUSTOMER_DATA,
    DEAD_LETTERS,
    EVALUATOR,
    HANDOFFS,
    OUTCOME_COUNTERS,
    RETENTION,
    SETTINGS,
    STORE,
    TEMPLATES,
    TOKEN_CHECKS,
    VIEW,
)
from services.monitor.observation import observe, stats_body
from services.monitor.outcomes import OutcomeCollector, stats_block
from services.monitor.problems import unreachable
from services.monitor.stats_reader import iso, last_24h, read_raw
from services.monitor.system import SystemView
from shared.connections import open_connections
from shared.conversations import Conversations, ConversationSettings
from shared.handoff import Handoffs
from shared.heartbeat import ProcessInfo, heartbeat_loop
from shared.privacy import retention
from shared.privacy.erasure import CustomerData
from shared.service import supervised
from shared.settings import Settings
from shared.store import REDIS_ERRORS, Store
from shared.telemetry import server_span_middleware
from shared.web import (
    Probes,
    install_security_headers,
    json_response,
    new_metrics_registry,
    problem_middleware,
)

SERVICE = "monitor"


def create_app(settings: Settings) -> web.Application:
    # The server span first, as the gateway's: an agent's reply or a replay starts there.
    app = web.Application(middlewares=[server_span_middleware, problem_middleware, no_store, admin_guard])
    install_security_headers(app)
    app[SETTINGS] = settings
    app[TEMPLATES] = pages.templates()
    app[BASE] = BaseFile(settings.kb_path)
    registry = new_metrics_registry()
    app[TOKEN_CHECKS] = token_checks_counter(registry)
    registry.register(SystemCollector(lambda: app[EVALUATOR].latest if EVALUATOR in app else None))
    app[OUTCOME_COUNTERS] = OutcomeCollector()
    registry.register(app[OUTCOME_COUNTERS])
    # The monitor's /monitoring/health is the whole system's (SPEC section 5), routed below.
    Probes(None, registry).install(app)
    app.router.add_get("/monitoring/health", system_health)
    app.router.add_get("/monitoring/stats", system_stats)
    app.router.add_get("/monitoring/stats/24h", system_stats_24h)
    add_admin_routes(app)
    app.cleanup_ctx.extend([_resources, _background])
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with open_connections(settings, SERVICE) as connections:
        names, redis, broker = connections.names, connections.redis, connections.broker
        store = Store(redis, names)
        app[STORE] = store
        app[BROKER] = broker
        app[VIEW] = SystemView(store, broker, settings.heartbeat_ttl_s, time.time(), settings.business_hours.timezone)
        app[DEAD_LETTERS] = DeadLetters(broker, redis)
        app[HANDOFFS] = Handoffs(redis, names, settings.handoff_ttl_s)
        app[CONVERSATIONS] = Conversations(redis, names, ConversationSettings.from_settings(settings))
        app[AUDIT] = AuditLog(redis, names)
        app[CUSTOMER_DATA] = CustomerData(redis, names, broker)
        app[RETENTION] = retention.Retention(redis, names, broker, settings.retention_days)
        app[AUTH] = AdminAuth(
            redis,
            names,
            settings.admin_token,
            session_s=settings.admin_session_s,
            max_failures=settings.admin_max_failures,
            lockout_s=settings.admin_lockout_s,
            checks=app[TOKEN_CHECKS],
        )
        yield


async def _background(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    notifier = WebhookNotifier(settings.alert_webhook_url, settings.namespace) if settings.alert_webhook_url else None
    # An alert must hold for one heartbeat TTL before it is announced (see AlertTracker).
    app[EVALUATOR] = Evaluator(app[VIEW], settings.alert_interval_s, notifier, settings.heartbeat_ttl_s)
    info = ProcessInfo(SERVICE, settings.instance_id, started_at=app[VIEW].started_at)
    tasks = [
        supervised("alert-evaluator", app[EVALUATOR].run),
        supervised(
            "heartbeat",
            lambda: heartbeat_loop(app[STORE], info, settings.heartbeat_interval_s, settings.heartbeat_ttl_s),
        ),
        supervised(
            "outcome-counters", lambda: app[OUTCOME_COUNTERS].run(app[CONVERSATIONS], settings.alert_interval_s)
        ),
    ]
    tasks.append(supervised("retention", lambda: retention.run(app[RETENTION])))
    if notifier is not None:
        tasks.append(supervised("alert-webhook", notifier.run))
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def system_health(request: web.Request) -> web.Response:
    # Probed often: dependencies and heartbeats only, none of the statistics.
    view = request.app[VIEW]
    health = await view.health(await view.services())
    return json_response(
        health_json(health, iso(health["timestamp"])), status=503 if health["status"] == "unhealthy" else 200
    )


async def system_stats(request: web.Request) -> web.Response:
    observation, conversations = await asyncio.gather(
        observe(request.app[VIEW]), stats_block(request.app[CONVERSATIONS])
    )
    return json_response(stats_body(observation, request.app[VIEW].started_at, conversations))


async def system_stats_24h(request: web.Request) -> web.Response:
    try:
        raw = await read_raw(request.app[STORE])
    except REDIS_ERRORS:
        raise unreachable("Redis", "statistics cannot be read") from None
    return json_response(last_24h(raw))
