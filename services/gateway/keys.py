"""Typed application keys of the gateway."""

from __future__ import annotations

from aiohttp import web

from services.gateway.claims import GatewayStore
from services.gateway.delivery.sender import DeliveryConsumer
from services.gateway.error_counts import BackgroundErrors
from services.gateway.intake import Intake
from services.gateway.ratelimit import RateLimiter
from services.gateway.replies import ReplyRouter
from services.gateway.stream_slots import StreamSlots
from services.gateway.web_conversations import ConversationTokens
from shared.broker import Broker
from shared.contacts import Clock, ContactBook
from shared.metrics import GatewayMetrics
from shared.receipts import Receipts
from shared.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", GatewayStore)
INTAKE = web.AppKey("intake", Intake)
ROUTER = web.AppKey("router", ReplyRouter)
BROKER = web.AppKey("broker", Broker)
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)
DELIVERY = web.AppKey("delivery", list[DeliveryConsumer])
ERRORS = web.AppKey("errors", BackgroundErrors)
TOKENS = web.AppKey("tokens", ConversationTokens)
METRICS = web.AppKey("metrics", GatewayMetrics)
STREAM_SLOTS = web.AppKey("stream_slots", StreamSlots)
# Proactive messages: the customers' 24-hour windows and opt-outs, and what became of each send.
CLOCK = web.AppKey("clock", Clock)
CONTACTS = web.AppKey("contacts", ContactBook)
RECEIPTS = web.AppKey("receipts", Receipts)
