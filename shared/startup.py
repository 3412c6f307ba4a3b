"""The one line each service logs once it listens: what it is running with, so an operator reading
the logs knows the port, the reply engine, the knowledge base, the channels and where traces go,
and is warned of a configuration that starts but cannot work as meant."""

from __future__ import annotations

import logging

from shared.settings import Settings

log = logging.getLogger(__name__)


def channels(settings: Settings) -> list[str]:
    return ["web"] + [
        name for name, on in (("whatsapp", settings.whatsapp_enabled), ("telegram", settings.telegram_enabled)) if on
    ]


def tracing_target(settings: Settings) -> str:
    if not settings.otel_exporters:
        return "none (no OTLP endpoint: spans are not exported)"
    return ", ".join(
        f"otlp/{settings.otel_exporter_protocol} {settings.otel_endpoint or '(the SDK default endpoint)'}"
        if name == "otlp"
        else name
        for name in settings.otel_exporters
    )


def log_start(service: str, settings: Settings, port: int, open_files: int) -> None:
    engine = settings.reply_engine if settings.reply_engine == "kb" else f"openai ({settings.openai_model})"
    log.info(
        "%s listening on port %d: engine %s, knowledge base %s, channels %s, tracing %s",
        service,
        port,
        engine,
        settings.kb_path,
        ", ".join(channels(settings)),
        tracing_target(settings),
        extra={"port": port, "engine": settings.reply_engine, "open_files_limit": open_files},
    )
    if settings.reply_engine == "openai" and not settings.openai_api_key:
        log.warning(
            "REPLY_ENGINE=openai without OPENAI_API_KEY: a provider that needs a key refuses every call and "
            "the knowledge base answers instead (fine only for a local server that needs none)"
        )
