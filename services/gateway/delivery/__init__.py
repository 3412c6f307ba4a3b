"""Outbound delivery of WhatsApp and Telegram replies (SPEC section 4).

The worker publishes a channel's replies, persistent, to the durable queue `{ns}.delivery.{channel}`;
every gateway with that channel configured consumes it as a competing consumer (`sender.py`),
sending through the channel's API client (`clients.py`), splitting long text (`split.py`) and
recording what went out in Redis (`ledger.py`) so a reply is sent once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp

from services.gateway.claims import GatewayStore
from services.gateway.delivery.clients import ChannelClient, TelegramClient, WhatsAppClient
from services.gateway.delivery.sender import DeliveryConsumer, DeliveryRetryPolicy
from shared.broker import Broker
from shared.metrics import DeliveryMetrics
from shared.service import supervised
from shared.settings import Settings
from shared.speech import SpeechConfig, synthesise
from shared.telemetry import client_trace_config


async def channel_clients(settings: Settings, stack: contextlib.AsyncExitStack) -> list[ChannelClient]:
    """A client per configured channel, each with its own HTTP session (closed with `stack`)
    whose requests are CLIENT spans of the message's trace."""
    timeout = aiohttp.ClientTimeout(total=settings.delivery_timeout_s, connect=min(5.0, settings.delivery_timeout_s))

    async def session(peer: str) -> aiohttp.ClientSession:
        return await stack.enter_async_context(
            aiohttp.ClientSession(timeout=timeout, trace_configs=[client_trace_config(peer)])
        )

    clients: list[ChannelClient] = []
    if settings.whatsapp_enabled:
        clients.append(
            WhatsAppClient(await session("whatsapp"), settings.whatsapp_api_base, settings.whatsapp_access_token)
        )
    if settings.telegram_enabled:
        clients.append(
            TelegramClient(await session("telegram"), settings.telegram_api_base, settings.telegram_bot_token)
        )
    return clients


async def _speaker(settings: Settings, stack: contextlib.AsyncExitStack) -> Callable[[str], Awaitable[bytes]] | None:
    """VOICE_REPLIES=on: text to Ogg/Opus speech through `POST /audio/speech`, for the answers to
    voice notes."""
    if not settings.voice_replies:
        return None
    config = SpeechConfig.from_settings(settings)
    session = await stack.enter_async_context(aiohttp.ClientSession(trace_configs=[client_trace_config("speech")]))

    async def speak(text: str) -> bytes:
        return await synthesise(session, config, text)

    return speak


@contextlib.asynccontextmanager
async def running_delivery(
    settings: Settings, broker: Broker, store: GatewayStore, metrics: DeliveryMetrics
) -> AsyncIterator[list[DeliveryConsumer]]:
    """The configured channels' consumers, subscribed in the background (the broker may not be
    up yet); on exit they finish what they hold, within the shutdown grace period."""
    async with contextlib.AsyncExitStack() as stack:
        policy = DeliveryRetryPolicy(timeout_s=settings.delivery_timeout_s, max_attempts=settings.delivery_max_attempts)
        speak = await _speaker(settings, stack)
        consumers = [
            DeliveryConsumer(
                broker, store, client, policy, settings.instance_id, metrics, speak, retention_s=settings.retention_s
            )
            for client in await channel_clients(settings, stack)
        ]
        tasks = [supervised(f"delivery-{c.channel}", c.run) for c in consumers]
        try:
            yield consumers
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*(c.stop(settings.shutdown_grace_s) for c in consumers))
