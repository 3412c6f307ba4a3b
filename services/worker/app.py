"""The worker: consumes the shard queues, generates replies, and serves probes and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from services.worker import kbreload
from services.worker.commit import CommitSettings, Committer
from services.worker.consumer import ShardConsumer
from services.worker.csat import RatingSweeper
from services.worker.engines.base import ChoosingEngine, ReplyEngine
from services.worker.engines.e5 import E5Model
from services.worker.engines.kb import KbEngine, KnowledgeBase, KnowledgeBaseError
from services.worker.engines.openai import OpenAiConfig, OpenAiEngine
from services.worker.engines.policy import ReplyPolicy
from services.worker.engines.text import Language
from services.worker.kbreload import KbReloader, LiveEngine
from services.worker.media import MediaResolver
from services.worker.privacy import CustomerRequests
from services.worker.processor import Processor
from services.worker.push import ReplyPusher
from services.worker.state import WorkerStore
from shared.broker import Broker
from shared.connections import open_connections
from shared.conversations import Conversations, ConversationSettings
from shared.heartbeat import ProcessInfo, heartbeat_loop
from shared.metrics import WorkerMetrics
from shared.privacy.erasure import CustomerData
from shared.recorder import Recorder
from shared.service import supervised
from shared.settings import ConfigError, Settings
from shared.store import redis_check
from shared.web import PROBES, Probes, new_metrics_registry, problem_middleware

log = logging.getLogger(__name__)

SERVICE = "worker"
SETTINGS = web.AppKey("settings", Settings)
ENGINE = web.AppKey("engine", ChoosingEngine)
BROKER = web.AppKey("broker", Broker)
STORE = web.AppKey("store", WorkerStore)
CONSUMER = web.AppKey("consumer", ShardConsumer)
MEDIA = web.AppKey("media", MediaResolver)
METRICS = web.AppKey("metrics", WorkerMetrics)
# The knowledge base's language at start: the rating question is asked in it.
LANGUAGE: web.AppKey[Language] = web.AppKey("language")
RECORDER = web.AppKey("recorder", Recorder)


@dataclass(frozen=True, slots=True)
class EngineFactory:
    """Builds the reply engine from a knowledge base: at start and at every reload, sharing the
    multilingual model, which is loaded once per worker."""

    settings: Settings
    model: E5Model | None

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineFactory:
        if not settings.kb_multilingual:
            return cls(settings, None)
        try:
            return cls(settings, E5Model(cache=settings.kb_cache_dir))
        except (OSError, RuntimeError) as exc:
            raise ConfigError(f"KB_EMBEDDINGS=multilingual: the model cannot be loaded: {exc}") from None

    def build(self, knowledge: KnowledgeBase) -> ReplyPolicy:
        """The LLM engine answers from the base too (grounding, and fallback); the reply policy wraps
        either, and answers the entries chosen from a question back from that same base. A base
        translated into other languages gets one engine per language."""
        engine, kb = self._version(knowledge)
        translations = {language: self._version(knowledge.translated(language)) for language in knowledge.translations}
        escalate = self.settings.handoff_after_fallbacks > 0
        return ReplyPolicy(
            engine,
            knowledge.language,
            catalog=kb,
            escalate=escalate,
            translations=translations,
            hours=self.settings.business_hours,
        )

    def _version(self, knowledge: KnowledgeBase) -> tuple[ReplyEngine, KbEngine]:
        kb = KbEngine(knowledge, model=self.model)
        if self.settings.reply_engine == "openai":
            return OpenAiEngine(OpenAiConfig.from_settings(self.settings), kb), kb
        return kb, kb


FACTORY = web.AppKey("factory", EngineFactory)


def build_engine(factory: EngineFactory) -> LiveEngine:
    """Load the knowledge base now, so a malformed file stops the worker at start, naming the problem.
    Later reloads (kbreload.py) build the same way from the new file."""
    try:
        loaded = kbreload.load(factory.settings.kb_path, factory.build)
    except (KnowledgeBaseError, OSError) as exc:
        raise ConfigError(f"KB_PATH: {exc}") from None
    return LiveEngine(loaded)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[problem_middleware])
    app[SETTINGS] = settings
    factory = EngineFactory.from_settings(settings)
    app[FACTORY] = factory
    engine = build_engine(factory)
    app[ENGINE] = engine
    app[LANGUAGE] = engine.language
    app[MEDIA] = MediaResolver(settings, engine.language, reads_media=settings.reply_engine == "openai")
    registry = new_metrics_registry()
    app[METRICS] = WorkerMetrics.create(registry)
    Probes(lambda: _health(app), registry).install(app)
    app.cleanup_ctx.extend([_resources, _recording, _consuming])
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with open_connections(settings, SERVICE) as connections:
        app[BROKER] = connections.broker
        app[STORE] = WorkerStore(connections.redis, connections.names, memory_turns=settings.memory_turns)
        yield
        await app[ENGINE].close()
        await app[MEDIA].close()


async def _recording(app: web.Application) -> AsyncIterator[None]:
    """The statistics recorder's flushes; the last one after the consumer stopped (cleanup runs in
    reverse), so a clean stop leaves nothing uncounted."""
    store = app[STORE]
    recorder = app[RECORDER] = Recorder(store.redis, store.names)
    flushing = supervised("stats-flush", lambda: recorder.run(app[SETTINGS].stats_flush_interval_s))
    yield
    flushing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await flushing


def _shard_consumer(app: web.Application) -> ShardConsumer:
    """The worker's path: shard lanes (consumer.py) -> processor -> commit."""
    settings, store = app[SETTINGS], app[STORE]
    commit_settings = CommitSettings(
        memory_turns=settings.memory_turns,
        memory_ttl_s=settings.memory_ttl_s,
        handoff_ttl_s=settings.handoff_ttl_s,
        handoff_after_fallbacks=settings.handoff_after_fallbacks,
        conversations=ConversationSettings.from_settings(settings),
    )
    processor = Processor(
        store=store,
        committer=Committer(store.redis, store.names, settings=commit_settings, recorder=app[RECORDER]),
        broker=app[BROKER],
        pusher=ReplyPusher(store.redis, store.names),
        engine=app[ENGINE],
        max_attempts=settings.max_attempts,
        media=app[MEDIA],
        metrics=app[METRICS],
        debounce_ms=settings.debounce_ms,
        log_text=settings.log_message_text,
        privacy=CustomerRequests(CustomerData(store.redis, store.names, app[BROKER]), flush=app[RECORDER].flush),
    )
    return ShardConsumer(
        broker=app[BROKER],
        store=store,
        processor=processor,
        instance_id=settings.instance_id,
        heartbeat_ttl_s=settings.heartbeat_ttl_s,
        concurrency=settings.worker_concurrency,
    )


async def _consuming(app: web.Application) -> AsyncIterator[None]:
    settings, store = app[SETTINGS], app[STORE]
    reloader = _reloader(app)
    if reloader is not None:
        await reloader.start()  # the taught phrasings, before the first message is taken
    consumer = _shard_consumer(app)
    app[CONSUMER] = consumer
    info = ProcessInfo(SERVICE, settings.instance_id)
    heartbeat = supervised(
        "heartbeat",
        lambda: heartbeat_loop(
            store, info, settings.heartbeat_interval_s, settings.heartbeat_ttl_s, lambda: {"shards": consumer.shards}
        ),
    )
    balancing = supervised("shard-balancer", lambda: consumer.run(settings.heartbeat_interval_s))
    lending = supervised("backlog-balancer", consumer.balance)
    sweeper = RatingSweeper(
        Conversations(store.redis, store.names, ConversationSettings.from_settings(settings)),
        app[BROKER],
        app[LANGUAGE],
    )
    sweeping = supervised("conversation-sweeper", sweeper.run)
    reloading = _reloading(app, reloader)
    yield
    sweeping.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sweeping
    if reloading is not None:
        reloading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reloading
    # SIGTERM: stop taking work, finish what is in hand, then leave (the heartbeat goes last, so the
    # others take the shards over only once they are free).
    app[PROBES].draining = True
    for loop in (lending, balancing):
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
    await consumer.stop(settings.shutdown_grace_s)
    heartbeat.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await heartbeat


def _reloader(app: web.Application) -> KbReloader | None:
    settings, engine = app[SETTINGS], app[ENGINE]
    if not isinstance(engine, LiveEngine):
        return None  # (a test may have put an engine of its own in)
    return KbReloader(
        settings.kb_path,
        app[FACTORY].build,
        engine,
        app[STORE],
        settings.instance_id,
        grace_s=settings.openai_timeout_s + 1.0,
    )


def _reloading(app: web.Application, reloader: KbReloader | None) -> asyncio.Task[None] | None:
    """The knowledge-base watcher (KB_RELOAD_INTERVAL_SECONDS; 0: none)."""
    interval = app[SETTINGS].kb_reload_interval_s
    if reloader is None or interval <= 0:
        return None
    return supervised("kb-reload", lambda: reloader.run(interval))


async def _health(app: web.Application) -> tuple[bool, dict[str, Any]]:
    checks: dict[str, Any] = {
        "rabbitmq": {"status": "up" if app[BROKER].connected else "down"},
        "redis": await redis_check(app[STORE].redis),
        "consumer": {
            "status": "up",
            "shards": app[CONSUMER].shards,
            "in_flight": app[CONSUMER].capacity.in_flight,
            "held": app[CONSUMER].held,
            "lent": app[CONSUMER].lent,
        },
    }
    return all(check["status"] == "up" for check in checks.values()), checks
