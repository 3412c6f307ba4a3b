"""The one place that reads the environment.

Every service builds a `Settings` once at start with `Settings.from_env()`; nothing else in the
code base looks at `os.environ` (the OpenTelemetry SDK reads its own `OTEL_*` variables, as the
contract requires). A missing or malformed value raises `ConfigError` naming the variable, which
the service entry points turn into one clear line and a non-zero exit.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from redis.connection import parse_url as parse_redis_url

from shared.hours import DEFAULT_TIMEZONE, BusinessHours, parse_holidays, parse_timezone, parse_windows

T = TypeVar("T")

BUNDLED_KB = Path(__file__).resolve().parent / "data" / "kb-sample.yaml"
NAMESPACE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
OTLP_PROTOCOLS = ("grpc", "http/protobuf")
OTEL_EXPORTERS = ("otlp", "console")
HOST_PATTERN_RE = re.compile(r"^\.?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
# The password of a URL (`scheme://user:password@host`, or without the scheme), each of a list's.
URL_PASSWORD_RE = re.compile(r"((?:^|://|,)\s*[^/\s,:@]*:)[^/\s,]*@")
# Settings whose whole value is a credential, besides the *_TOKEN, *_SECRET and *_KEY(S) ones.
SECRET_SETTINGS = frozenset({"ALERT_WEBHOOK_URL"})
# Shard queues: 16 split evenly over 2, 4, 8 and 16 workers, over 3 and 5 within one shard each, and
# cost no migration to deployments already running 16 (README: Scaling).
DEFAULT_SHARDS = 16


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """`{prefix}_CA_FILE`, `{prefix}_CERT_FILE`, `{prefix}_KEY_FILE` (shared/tls.py reads them)."""

    prefix: str
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    # AMQP_URL: one URL, or the nodes of one cluster comma-separated (shared/amqp_nodes.py).
    amqp_url: str = "amqp://guest:guest@localhost:5672/"
    redis_url: str = "redis://localhost:6379/0"
    # REDIS_SENTINELS: when set, the primary is asked of these (shared/redis_client.py); REDIS_URL
    # then gives only the password, the database and the scheme (rediss: TLS).
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_sentinel_service: str = "mymaster"
    # CA bundles (system CAs when unset) and client certificates for rediss:// and amqps://.
    redis_tls: TlsFiles = field(default_factory=lambda: TlsFiles("REDIS"))
    amqp_tls: TlsFiles = field(default_factory=lambda: TlsFiles("AMQP"))
    namespace: str = "atendimento"
    gateway_port: int = 8080
    worker_port: int = 8081
    monitor_port: int = 8082
    # Instance id: names this process in heartbeats and in its private reply queue.
    instance_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}")

    # Pipeline shape
    shards: int = DEFAULT_SHARDS
    max_attempts: int = 5
    # Replies one worker generates at once (LLM calls in flight), across conversations.
    worker_concurrency: int = 64
    heartbeat_interval_s: float = 2.0
    # How often each process sends the statistics it counted to Redis (shared/recorder.py); a
    # SIGKILL loses at most this much of them.
    stats_flush_interval_s: float = 1.0
    shutdown_grace_s: float = 20.0
    # After SIGTERM, readiness answers 503 for this long while everything else is still served, so
    # load balancers stop sending work before the listener closes.
    drain_s: float = 3.0

    # Replies
    reply_engine: str = "kb"
    kb_path: Path = BUNDLED_KB
    # KB_EMBEDDINGS=multilingual: rank with the multilingual model too where words alone are not
    # sure (services/worker/engines/kb.py); off: by words alone (less CPU, fewer right answers).
    kb_multilingual: bool = True
    # KB_CACHE_DIR: where the model's vectors of the base's entries are kept between starts (unset:
    # not kept; every start embeds every entry again, about 0.1 s each on two cores).
    kb_cache_dir: Path | None = None
    # How often each worker checks KB_PATH and the admin's reload request (0: never, reload on restart).
    kb_reload_interval_s: float = 2.0
    openai_base_url: str = "https://api.openai.com/v1"
    openai_api_key: str = ""
    openai_model: str = "gpt-4o-mini"
    # Empty: the built-in pt-BR customer-service persona (services/worker/engines/openai.py).
    openai_system_prompt: str = ""
    # The whole LLM reply, retries and their waits included, ends within this many seconds (then
    # the knowledge base answers); a TCP connect gets at most `openai_connect_timeout_s` of it.
    openai_timeout_s: float = 15.0
    openai_connect_timeout_s: float = 3.0
    openai_max_retries: int = 2
    openai_temperature: float = 0.2
    openai_max_tokens: int = 400
    # Ask the model for `response_format: json_object`; off for servers that refuse the parameter
    # (the reply format is asked in the prompt either way).
    openai_json_mode: bool = True
    # Knowledge-base entries given to the model as the company's information.
    openai_grounding_entries: int = 3
    # After this many failed replies in a row the provider is skipped (the knowledge base answers
    # at once) for the cool-down; then one trial call decides whether it is back.
    openai_breaker_failures: int = 5
    openai_breaker_cooldown_s: float = 30.0
    memory_turns: int = 10
    memory_ttl_s: int = 86_400
    # This many fallback replies in a row hand the conversation to a human (0: never).
    handoff_after_fallbacks: int = 3
    # Messages of one conversation arriving within this window get one reply together (0: off).
    debounce_ms: int = 0
    # BUSINESS_HOURS, BUSINESS_TIMEZONE, BUSINESS_HOLIDAYS (shared/hours.py); no windows: always open.
    business_hours: BusinessHours = field(default_factory=BusinessHours)
    # Quiet minutes after which a finished conversation is asked for a rating (0: no CSAT).
    csat_after_minutes: int = 30

    # Edge
    gateway_api_keys: tuple[str, ...] = ()
    rate_limit_per_user: float = 10.0
    rate_limit_per_ip: float = 50.0
    # Proxies (addresses or networks) whose X-Forwarded-For names the client for the per-IP limit.
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # Browser origins allowed to call /v1/* cross-site (CORS); empty: same origin only.
    cors_allowed_origins: tuple[str, ...] = ()
    # CONVERSATION_TOKEN_SECRET: secrets of the web conversations' tokens, the first signs, all are
    # accepted (rotation); empty: one generated in Redis on first use, shared by every gateway.
    conversation_token_secrets: tuple[str, ...] = ()
    # Sites that may embed the chat page (GET /widget.js opens it in an iframe there).
    chat_embed_origins: tuple[str, ...] = ()
    # CONVERSATION_TOKEN_TTL_SECONDS: a conversation token opens its conversation this long.
    conversation_token_ttl_s: int = 30 * 86_400
    # Slow and greedy clients (shared/edge.py): a connection's request head must arrive within
    # this (also the idle time allowed between requests), a body within that; per client address
    # and process, this many connections (trusted proxies exempt) and event streams (0: no cap).
    http_header_timeout_s: float = 15.0
    http_body_timeout_s: float = 30.0
    max_connections_per_ip: int = 256
    max_streams_per_ip: int = 32
    admin_token: str = ""
    admin_session_s: int = 8 * 3600
    admin_max_failures: int = 5
    admin_lockout_s: int = 900
    admin_refresh_s: int = 30
    # The chat page's look (CHAT_*): empty title and greeting keep the page's own, in its language.
    chat_title: str = ""
    chat_color: str = "#0b7a5c"
    chat_greeting: str = ""
    chat_avatar_url: str = ""

    # Monitor
    alert_webhook_url: str = ""
    alert_interval_s: float = 15.0
    handoff_ttl_s: int = 4 * 3600
    # The zone the admin area shows times in (and business hours are read in).
    business_timezone: str = "America/Sao_Paulo"
    # What customers wrote (conversation logs, unanswered questions, outbound records, dead letters)
    # is kept no longer.
    retention_days: int = 90

    # Channels
    whatsapp_verify_token: str = ""
    whatsapp_app_secret: str = ""
    whatsapp_access_token: str = ""
    whatsapp_api_base: str = "https://graph.facebook.com/v19.0"
    # The business number a proactive message to a customer who never wrote goes out from.
    whatsapp_phone_number_id: str = ""
    telegram_bot_token: str = ""
    telegram_secret_token: str = ""
    telegram_api_base: str = "https://api.telegram.org"
    # Outbound channel sends: one request's time limit, and tries before a reply is dead-lettered.
    delivery_timeout_s: float = 10.0
    delivery_max_attempts: int = 8

    # Media (SPEC 4 "Media"): speech to text and back through an OpenAI-compatible audio API.
    transcription_model: str = "whisper-1"
    # Empty: OPENAI_BASE_URL. Speech (VOICE_REPLIES) is asked of the same provider.
    transcription_base_url: str = ""
    transcription_max_retries: int = 2
    voice_replies: bool = False
    tts_model: str = "tts-1"
    tts_voice: str = "alloy"
    media_max_bytes: int = 16 * 2**20
    # Fetching one media file, one transcription or one speech synthesis ends within this.
    media_timeout_s: float = 20.0
    # Media within bounds (services/worker/media/): a document's text kept, the PDF reader child's
    # memory ceiling and CPU seconds, and how many media files one worker handles at once.
    media_max_text_chars: int = 20_000
    media_extract_memory_bytes: int = 192 * 2**20
    media_extract_cpu_seconds: int = 10
    media_concurrency: int = 4
    # Where media may be downloaded from besides the API bases' own hosts: HTTPS only, and a
    # leading dot takes the domain's subdomains (services/worker/media/hosts.py).
    media_allowed_hosts: tuple[str, ...] = (".fbsbx.com", ".fbcdn.net", ".whatsapp.net", ".telegram.org")

    log_level: str = "INFO"
    # The customer's words in the worker's DEBUG line (masked); off: only their length.
    log_message_text: bool = False
    # Optional log files (combined.log, error.log, audit.log) beside stdout, rotated by size.
    log_dir: Path | None = None
    log_file_max_bytes: int = 10 * 2**20
    log_file_backups: int = 5
    # The OTLP exporter's wire protocol. The SDK has no public way to pick the exporter class from
    # OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL, so it is read and validated here; every other OTEL_*
    # variable (endpoint, headers, timeout, sampler, resource, OTEL_SDK_DISABLED) is the SDK's own.
    otel_exporter_protocol: str = "grpc"
    # Spans leave the process only when asked to: OTEL_TRACES_EXPORTER=otlp (or `console`, or both
    # comma-separated, as the SDK documents), or an OTLP endpoint set
    # (OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT). Without a collector the SDK's default endpoint,
    # localhost:4317, would fill the logs with failed exports. None: spans are not exported.
    otel_exporters: tuple[str, ...] = ()
    # Where spans go (OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT as given; empty: the SDK's default), for
    # the start line only: the SDK reads the variable itself.
    otel_endpoint: str = ""
    # Whether OTEL_TRACES_SAMPLER is set (the SDK reads its value): with nothing exported, spans
    # record only when it asks them to, as the sampled flag they pass on is all they would change.
    otel_sampler_set: bool = False

    @property
    def amqp_urls(self) -> tuple[str, ...]:
        """The RabbitMQ nodes AMQP_URL lists (one, or the nodes of a cluster)."""
        return tuple(self.amqp_url.split(","))

    @property
    def retention_s(self) -> int:
        return self.retention_days * 86_400

    @property
    def heartbeat_ttl_s(self) -> float:
        """A process missing three beats in a row is taken for dead."""
        return self.heartbeat_interval_s * 3

    @property
    def audio_base_url(self) -> str:
        return self.transcription_base_url or self.openai_base_url

    @property
    def transcription_enabled(self) -> bool:
        """SPEC 2: voice notes are transcribed when a key or a base URL is configured."""
        return bool(self.openai_api_key or self.transcription_base_url)

    @property
    def whatsapp_enabled(self) -> bool:
        return bool(self.whatsapp_app_secret and self.whatsapp_access_token)

    @property
    def telegram_enabled(self) -> bool:
        return bool(self.telegram_bot_token and self.telegram_secret_token)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        source = os.environ if env is None else env
        read = _Reader(source)
        defaults = cls()
        embeddings = read.choice("KB_EMBEDDINGS", "multilingual", ("multilingual", "off"))
        otel_endpoint = read.text("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
        otel_endpoint = otel_endpoint or read.text("OTEL_EXPORTER_OTLP_ENDPOINT", "")
        settings = cls(
            amqp_url=read.urls("AMQP_URL", defaults.amqp_url, ("amqp", "amqps")),
            redis_url=read.url("REDIS_URL", defaults.redis_url, ("redis", "rediss", "unix")),
            redis_sentinels=read.host_ports("REDIS_SENTINELS"),
            redis_sentinel_service=read.text("REDIS_SENTINEL_SERVICE", defaults.redis_sentinel_service),
            redis_tls=read.paired(
                TlsFiles("REDIS", read.file("REDIS_CA_FILE"), read.file("REDIS_CERT_FILE"), read.file("REDIS_KEY_FILE"))
            ),
            amqp_tls=read.paired(
                TlsFiles("AMQP", read.file("AMQP_CA_FILE"), read.file("AMQP_CERT_FILE"), read.file("AMQP_KEY_FILE"))
            ),
            namespace=read.namespace("ATENDIMENTO_NAMESPACE", defaults.namespace),
            gateway_port=read.port("GATEWAY_PORT", defaults.gateway_port),
            worker_port=read.port("WORKER_PORT", defaults.worker_port),
            monitor_port=read.port("MONITOR_PORT", defaults.monitor_port),
            instance_id=read.text("INSTANCE_ID", defaults.instance_id),
            shards=read.integer("ATENDIMENTO_SHARDS", defaults.shards, 1, 256),
            max_attempts=read.integer("MAX_ATTEMPTS", defaults.max_attempts, 1, 100),
            worker_concurrency=read.integer("WORKER_CONCURRENCY", defaults.worker_concurrency, 1, 10_000),
            heartbeat_interval_s=read.number("HEARTBEAT_INTERVAL_SECONDS", defaults.heartbeat_interval_s, 0.1, 60),
            stats_flush_interval_s=read.number(
                "STATS_FLUSH_INTERVAL_SECONDS", defaults.stats_flush_interval_s, 0.05, 60
            ),
            shutdown_grace_s=read.number("SHUTDOWN_GRACE_SECONDS", defaults.shutdown_grace_s, 0, 600),
            drain_s=read.number("DRAIN_SECONDS", defaults.drain_s, 0, 120),
            reply_engine=read.choice("REPLY_ENGINE", defaults.reply_engine, ("kb", "openai")),
            kb_path=read.path("KB_PATH", defaults.kb_path),
            kb_multilingual=embeddings == "multilingual",
            kb_cache_dir=read.directory("KB_CACHE_DIR"),
            kb_reload_interval_s=read.number("KB_RELOAD_INTERVAL_SECONDS", defaults.kb_reload_interval_s, 0, 3600),
            openai_base_url=read.url("OPENAI_BASE_URL", defaults.openai_base_url, ("http", "https")),
            openai_api_key=read.text("OPENAI_API_KEY", ""),
            openai_model=read.text("OPENAI_MODEL", defaults.openai_model),
            openai_system_prompt=read.text("OPENAI_SYSTEM_PROMPT", ""),
            openai_timeout_s=read.number("OPENAI_TIMEOUT_SECONDS", defaults.openai_timeout_s, 0.1, 600),
            openai_connect_timeout_s=read.number(
                "OPENAI_CONNECT_TIMEOUT_SECONDS", defaults.openai_connect_timeout_s, 0.1, 60
            ),
            openai_max_retries=read.integer("OPENAI_MAX_RETRIES", defaults.openai_max_retries, 0, 10),
            openai_temperature=read.number("OPENAI_TEMPERATURE", defaults.openai_temperature, 0, 2),
            openai_max_tokens=read.integer("OPENAI_MAX_TOKENS", defaults.openai_max_tokens, 1, 100_000),
            openai_json_mode=read.choice("OPENAI_JSON_MODE", "on", ("on", "off")) == "on",
            openai_grounding_entries=read.integer("OPENAI_GROUNDING_ENTRIES", defaults.openai_grounding_entries, 0, 20),
            openai_breaker_failures=read.integer("OPENAI_BREAKER_FAILURES", defaults.openai_breaker_failures, 1, 1000),
            openai_breaker_cooldown_s=read.number(
                "OPENAI_BREAKER_COOLDOWN_SECONDS", defaults.openai_breaker_cooldown_s, 0.1, 3600
            ),
            memory_turns=read.integer("MEMORY_TURNS", defaults.memory_turns, 0, 200),
            memory_ttl_s=read.integer("MEMORY_TTL_SECONDS", defaults.memory_ttl_s, 60, 90 * 86_400),
            handoff_after_fallbacks=read.integer("HANDOFF_AFTER_FALLBACKS", defaults.handoff_after_fallbacks, 0, 100),
            debounce_ms=read.integer("DEBOUNCE_MS", defaults.debounce_ms, 0, 60_000),
            business_hours=read.business_hours(),
            csat_after_minutes=read.integer("CSAT_AFTER_MINUTES", defaults.csat_after_minutes, 0, 7 * 24 * 60),
            gateway_api_keys=read.csv("GATEWAY_API_KEYS"),
            rate_limit_per_user=read.number("RATE_LIMIT_PER_USER", defaults.rate_limit_per_user, 0, 1e6),
            rate_limit_per_ip=read.number("RATE_LIMIT_PER_IP", defaults.rate_limit_per_ip, 0, 1e6),
            trusted_proxies=read.networks("TRUSTED_PROXIES"),
            cors_allowed_origins=read.origins("CORS_ALLOWED_ORIGINS"),
            conversation_token_secrets=read.secrets("CONVERSATION_TOKEN_SECRET"),
            chat_embed_origins=read.origins("CHAT_EMBED_ORIGINS"),
            conversation_token_ttl_s=read.integer(
                "CONVERSATION_TOKEN_TTL_SECONDS", defaults.conversation_token_ttl_s, 60, 366 * 86_400
            ),
            http_header_timeout_s=read.number("HTTP_HEADER_TIMEOUT_SECONDS", defaults.http_header_timeout_s, 1, 600),
            http_body_timeout_s=read.number("HTTP_BODY_TIMEOUT_SECONDS", defaults.http_body_timeout_s, 1, 600),
            max_connections_per_ip=read.integer("MAX_CONNECTIONS_PER_IP", defaults.max_connections_per_ip, 0, 10**6),
            max_streams_per_ip=read.integer("MAX_STREAMS_PER_IP", defaults.max_streams_per_ip, 0, 10**6),
            admin_token=read.text("ADMIN_TOKEN", ""),
            admin_session_s=read.integer("ADMIN_SESSION_SECONDS", defaults.admin_session_s, 60, 7 * 86_400),
            admin_max_failures=read.integer("ADMIN_MAX_FAILURES", defaults.admin_max_failures, 1, 1000),
            admin_lockout_s=read.integer("ADMIN_LOCKOUT_SECONDS", defaults.admin_lockout_s, 1, 86_400),
            admin_refresh_s=read.integer("ADMIN_REFRESH_SECONDS", defaults.admin_refresh_s, 1, 3600),
            alert_webhook_url=read.url("ALERT_WEBHOOK_URL", "", ("http", "https")),
            alert_interval_s=read.number("ALERT_INTERVAL_SECONDS", defaults.alert_interval_s, 0.1, 3600),
            handoff_ttl_s=read.integer("HANDOFF_TTL_SECONDS", defaults.handoff_ttl_s, 60, 30 * 86_400),
            business_timezone=read.timezone("BUSINESS_TIMEZONE", defaults.business_timezone),
            chat_title=read.text("CHAT_TITLE", "")[:60],
            chat_color=read.color("CHAT_COLOR", defaults.chat_color),
            chat_greeting=read.text("CHAT_GREETING", "")[:500],
            chat_avatar_url=read.url("CHAT_AVATAR_URL", "", ("http", "https")),
            retention_days=read.integer("RETENTION_DAYS", defaults.retention_days, 1, 3650),
            whatsapp_verify_token=read.text("WHATSAPP_VERIFY_TOKEN", ""),
            whatsapp_app_secret=read.text("WHATSAPP_APP_SECRET", ""),
            whatsapp_access_token=read.text("WHATSAPP_ACCESS_TOKEN", ""),
            whatsapp_api_base=read.url("WHATSAPP_API_BASE", defaults.whatsapp_api_base, ("http", "https")),
            whatsapp_phone_number_id=read.text("WHATSAPP_PHONE_NUMBER_ID", ""),
            telegram_bot_token=read.text("TELEGRAM_BOT_TOKEN", ""),
            telegram_secret_token=read.text("TELEGRAM_SECRET_TOKEN", ""),
            telegram_api_base=read.url("TELEGRAM_API_BASE", defaults.telegram_api_base, ("http", "https")),
            delivery_timeout_s=read.number("DELIVERY_TIMEOUT_SECONDS", defaults.delivery_timeout_s, 0.5, 120),
            delivery_max_attempts=read.integer("DELIVERY_MAX_ATTEMPTS", defaults.delivery_max_attempts, 1, 100),
            transcription_model=read.text("TRANSCRIPTION_MODEL", defaults.transcription_model),
            transcription_base_url=read.url("TRANSCRIPTION_BASE_URL", "", ("http", "https")),
            transcription_max_retries=read.integer(
                "TRANSCRIPTION_MAX_RETRIES", defaults.transcription_max_retries, 0, 10
            ),
            voice_replies=read.choice("VOICE_REPLIES", "off", ("on", "off")) == "on",
            tts_model=read.text("TTS_MODEL", defaults.tts_model),
            tts_voice=read.text("TTS_VOICE", defaults.tts_voice),
            media_max_bytes=read.integer("MEDIA_MAX_BYTES", defaults.media_max_bytes, 1024, 2**31),
            media_timeout_s=read.number("MEDIA_TIMEOUT_SECONDS", defaults.media_timeout_s, 1, 600),
            media_max_text_chars=read.integer("MEDIA_MAX_TEXT_CHARS", defaults.media_max_text_chars, 100, 1_000_000),
            media_extract_memory_bytes=read.integer(
                "MEDIA_EXTRACT_MEMORY_BYTES", defaults.media_extract_memory_bytes, 64 * 2**20, 2**34
            ),
            media_extract_cpu_seconds=read.integer(
                "MEDIA_EXTRACT_CPU_SECONDS", defaults.media_extract_cpu_seconds, 1, 600
            ),
            media_concurrency=read.integer("MEDIA_CONCURRENCY", defaults.media_concurrency, 1, 64),
            media_allowed_hosts=read.hosts("MEDIA_ALLOWED_HOSTS", defaults.media_allowed_hosts),
            log_level=read.choice("LOG_LEVEL", defaults.log_level, ("DEBUG", "INFO", "WARNING", "ERROR")),
            log_message_text=read.choice("LOG_MESSAGE_TEXT", "off", ("on", "off")) == "on",
            log_dir=read.directory("LOG_DIR"),
            log_file_max_bytes=read.integer("LOG_FILE_MAX_BYTES", defaults.log_file_max_bytes, 1024, 2**40),
            log_file_backups=read.integer("LOG_FILE_BACKUPS", defaults.log_file_backups, 1, 1000),
            otel_exporter_protocol=read.choice(
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                read.choice("OTEL_EXPORTER_OTLP_PROTOCOL", defaults.otel_exporter_protocol, OTLP_PROTOCOLS),
                OTLP_PROTOCOLS,
            ),
            otel_exporters=read.exporters(
                "OTEL_TRACES_EXPORTER", ("otlp",) if otel_endpoint else defaults.otel_exporters
            ),
            otel_endpoint=otel_endpoint,
            otel_sampler_set=bool(read.text("OTEL_TRACES_SAMPLER", "")),
        )
        if settings.reply_engine == "openai" and not settings.openai_model:
            raise ConfigError("OPENAI_MODEL must name a model when REPLY_ENGINE=openai")
        return settings


def _shown(name: str, raw: str) -> str:
    """A malformed value as its error line shows it. The line is printed past the logs' masking
    (shared/service.py), so a secret setting's value is not shown at all (a chat webhook URL holds
    its key in the path), and a URL's password is masked (`amqp://user:***@host`)."""
    if name in SECRET_SETTINGS or name.endswith(("_TOKEN", "_SECRET", "_KEY", "_KEYS")):
        return "<not shown>"
    return repr(URL_PASSWORD_RE.sub(r"\1***@", raw))


def _check_redis_url(raw: str) -> None:
    """What redis-py would make of the URL: its query options and port (ValueError when malformed),
    and a database that is a number (redis-py quietly takes a path such as `/zero` for database 0)."""
    parse_redis_url(raw)  # type: ignore[no-untyped-call]
    parts = urlsplit(raw)
    database = parts.path.strip("/") if parts.scheme != "unix" else ""
    if database and not database.isdigit():
        raise ValueError


@dataclass(frozen=True, slots=True)
class _Reader:
    env: Mapping[str, str]

    def _get(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def _parse(self, name: str, default: T, parse: Callable[[str], T], expected: str) -> T:
        raw = self._get(name)
        if raw is None:
            return default
        try:
            return parse(raw)
        except ValueError:
            raise ConfigError(f"{name}={_shown(name, raw)} is not valid: expected {expected}") from None

    def text(self, name: str, default: str) -> str:
        return self._get(name) or default

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        def parse(raw: str) -> int:
            value = int(raw)
            if not low <= value <= high:
                raise ValueError
            return value

        return self._parse(name, default, parse, f"a whole number from {low} to {high}")

    def number(self, name: str, default: float, low: float, high: float) -> float:
        def parse(raw: str) -> float:
            value = float(raw)
            if not low <= value <= high:
                raise ValueError
            return value

        return self._parse(name, default, parse, f"a number from {low:g} to {high:g}")

    def timezone(self, name: str, default: str) -> str:
        def parse(raw: str) -> str:
            try:
                ZoneInfo(raw)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError from None
            return raw

        return self._parse(name, default, parse, "an IANA time zone such as America/Sao_Paulo")

    def color(self, name: str, default: str) -> str:
        def parse(raw: str) -> str:
            if not re.fullmatch(r"#[0-9a-fA-F]{6}", raw):
                raise ValueError
            return raw.lower()

        return self._parse(name, default, parse, "a colour as #rrggbb")

    def port(self, name: str, default: int) -> int:
        return self.integer(name, default, 1, 65_535)

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        def parse(raw: str) -> str:
            value = raw.upper() if default.isupper() else raw.lower()
            if value not in allowed:
                raise ValueError
            return value

        return self._parse(name, default, parse, "one of " + ", ".join(allowed))

    def exporters(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        """OTEL_TRACES_EXPORTER as the SDK reads it: `none` (no exporter), or a comma-separated list
        of exporters, of which the SDK's own `otlp` and `console` are installed here."""

        def parse(raw: str) -> tuple[str, ...]:
            names = [item.strip().lower() for item in raw.split(",")]
            if names == ["none"]:
                return ()
            if not all(item in OTEL_EXPORTERS for item in names):
                raise ValueError
            return tuple(dict.fromkeys(names))

        return self._parse(name, default, parse, "none, or otlp and/or console comma-separated")

    def url(self, name: str, default: str, schemes: tuple[str, ...]) -> str:
        def parse(raw: str) -> str:
            parts = urlsplit(raw)
            if parts.scheme not in schemes or not (parts.netloc or parts.scheme == "unix"):
                raise ValueError
            if parts.port == 0:  # reading `port` raises ValueError for one that is no number up to 65535
                raise ValueError
            if parts.scheme in ("redis", "rediss", "unix"):
                _check_redis_url(raw)
            return raw

        return self._parse(
            name, default, parse, "a well-formed URL starting with " + " or ".join(f"{s}://" for s in schemes)
        )

    def urls(self, name: str, default: str, schemes: tuple[str, ...]) -> str:
        """One URL or several comma-separated (the nodes of one cluster), all of one scheme."""

        def parse(raw: str) -> str:
            urls = [item.strip() for item in raw.split(",") if item.strip()]
            for url in urls:
                parts = urlsplit(url)
                if parts.scheme not in schemes or not parts.netloc:
                    raise ValueError
                if parts.port == 0:  # as in `url`
                    raise ValueError
            if not urls or len({urlsplit(url).scheme for url in urls}) > 1:
                raise ValueError
            return ",".join(urls)

        expected = (
            "well-formed URLs starting with "
            + " or ".join(f"{s}://" for s in schemes)
            + ", comma-separated, one scheme"
        )
        return self._parse(name, default, parse, expected)

    def host_ports(self, name: str) -> tuple[tuple[str, int], ...]:
        def parse(raw: str) -> tuple[tuple[str, int], ...]:
            pairs = []
            for item in self.csv(name):
                host, _, port = item.rpartition(":")
                if not host or not port.isdigit() or not 0 < int(port) < 65_536:
                    raise ValueError
                pairs.append((host.strip("[]"), int(port)))
            return tuple(pairs)

        return self._parse(name, (), parse, "comma-separated host:port pairs (sentinel-0:26379,sentinel-1:26379)")

    def file(self, name: str) -> Path | None:
        def parse(raw: str) -> Path | None:
            path = Path(raw)
            if not path.is_file() or not os.access(path, os.R_OK):
                raise ValueError
            return path

        return self._parse(name, None, parse, "the path of a readable file")

    @staticmethod
    def paired(files: TlsFiles) -> TlsFiles:
        if (files.cert_file is None) != (files.key_file is None):
            raise ConfigError(f"{files.prefix}_CERT_FILE and {files.prefix}_KEY_FILE go together: set both or neither")
        return files

    def namespace(self, name: str, default: str) -> str:
        def parse(raw: str) -> str:
            if not NAMESPACE_RE.fullmatch(raw):
                raise ValueError
            return raw

        return self._parse(name, default, parse, "1-63 lowercase letters, digits, '-' or '_'")

    def path(self, name: str, default: Path) -> Path:
        def parse(raw: str) -> Path:
            path = Path(raw)
            if not path.is_file():
                raise ValueError
            return path

        return self._parse(name, default, parse, "the path of a readable file")

    def directory(self, name: str) -> Path | None:
        """A directory this process can write to, created when missing; None when unset."""

        def parse(raw: str) -> Path | None:
            path = Path(raw)
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError:
                raise ValueError from None
            if not os.access(path, os.W_OK):
                raise ValueError
            return path

        return self._parse(name, None, parse, "a writable directory")

    def networks(self, name: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        def parse(raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
            return tuple(ipaddress.ip_network(item, strict=False) for item in self.csv(name))

        return self._parse(name, (), parse, "comma-separated IP addresses or networks (10.0.0.0/8)")

    def origins(self, name: str) -> tuple[str, ...]:
        def parse(raw: str) -> tuple[str, ...]:
            origins = self.csv(name)
            for origin in origins:
                parts = urlsplit(origin)
                if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
                    raise ValueError
            return tuple(origin.lower() for origin in origins)

        return self._parse(name, (), parse, "comma-separated origins such as https://shop.example.com")

    def secrets(self, name: str) -> tuple[str, ...]:
        def parse(raw: str) -> tuple[str, ...]:
            values = self.csv(name)
            if any(len(value) < 16 for value in values):
                raise ValueError
            return values

        return self._parse(name, (), parse, "comma-separated secrets of at least 16 characters each")

    def business_hours(self) -> BusinessHours:
        """BUSINESS_HOURS, BUSINESS_TIMEZONE and BUSINESS_HOLIDAYS, each error naming its own."""
        return BusinessHours(
            self._detailed("BUSINESS_HOURS", (), parse_windows),
            self._detailed("BUSINESS_TIMEZONE", parse_timezone(DEFAULT_TIMEZONE), parse_timezone),
            self._detailed("BUSINESS_HOLIDAYS", frozenset(), parse_holidays),
        )

    def _detailed(self, name: str, default: T, parse: Callable[[str], T]) -> T:
        """Like `_parse`, for formats whose parser says what is wrong in its ValueError."""
        raw = self._get(name)
        if raw is None:
            return default
        try:
            return parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{name}={_shown(name, raw)} is not valid: {exc}") from None

    def csv(self, name: str) -> tuple[str, ...]:
        raw = self._get(name) or ""
        return tuple(item.strip() for item in raw.split(",") if item.strip())

    def hosts(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        """Host names, comma-separated, lower-cased; `.example.com` stands for its subdomains."""

        def parse(raw: str) -> tuple[str, ...]:
            hosts = tuple(item.strip().lower() for item in raw.split(",") if item.strip())
            if not all(HOST_PATTERN_RE.match(host) for host in hosts):
                raise ValueError(raw)
            return hosts

        return self._parse(name, default, parse, "comma-separated host names (a leading dot: its subdomains)")
