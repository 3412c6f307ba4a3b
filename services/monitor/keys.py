"""Typed application keys of the monitor."""

from __future__ import annotations

from aiohttp import web
from jinja2 import Environment
from prometheus_client import Counter

from services.monitor.admin.auth import AdminAuth
from services.monitor.admin.basefile import BaseFile
from services.monitor.audit import AuditLog
from services.monitor.deadletters import DeadLetters
from services.monitor.evaluator import Evaluator
from services.monitor.outcomes import OutcomeCollector
from services.monitor.system import SystemView
from shared.broker import Broker
from shared.conversations import Conversations
from shared.handoff import Handoffs
from shared.privacy.erasure import CustomerData
from shared.privacy.retention import Retention
from shared.settings import Settings
from shared.store import Store

SETTINGS = web.AppKey("settings", Settings)
VIEW = web.AppKey("view", SystemView)
STORE = web.AppKey("store", Store)
BROKER = web.AppKey("broker", Broker)
EVALUATOR = web.AppKey("evaluator", Evaluator)
DEAD_LETTERS = web.AppKey("dead_letters", DeadLetters)
HANDOFFS = web.AppKey("handoffs", Handoffs)
CONVERSATIONS = web.AppKey("conversations", Conversations)
OUTCOME_COUNTERS = web.AppKey("outcome_counters", OutcomeCollector)
AUDIT = web.AppKey("audit", AuditLog)
AUTH = web.AppKey("auth", AdminAuth)
TEMPLATES = web.AppKey("templates", Environment)
TOKEN_CHECKS = web.AppKey("token_checks", Counter)
BASE = web.AppKey("base", BaseFile)
CUSTOMER_DATA = web.AppKey("customer_data", CustomerData)
RETENTION = web.AppKey("retention", Retention)
