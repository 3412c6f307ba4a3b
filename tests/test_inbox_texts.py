"""What the agents read, without a browser (unit tier): the customer's name and language as the
channels give them, times in BUSINESS_TIMEZONE and relative, the audit log as sentences."""

from __future__ import annotations

from typing import Any

from services.gateway.handlers.telegram import parse_update
from services.gateway.handlers.whatsapp import parse_notification
from services.monitor.admin.i18n import Locale
from shared.messages import InboundMessage
from tests.support.channel_fakes import telegram_text, whatsapp_text

NOW = 1_796_000_000.0  # 2026-11-30 00:53:20 UTC


def test_whatsapp_profile_name_travels_with_the_message() -> None:
    payload = whatsapp_text("wamid.1", "5511999990000", "oi")
    payload["entry"][0]["changes"][0]["value"]["contacts"][0]["profile"]["name"] = "Maria\x07  Souza"
    (message,) = parse_notification(payload, "gw")
    assert isinstance(message, InboundMessage)
    assert message.metadata["name"] == "Maria Souza"  # control characters and runs of spaces out


def test_a_whatsapp_contact_of_an_unexpected_shape_is_only_no_name() -> None:
    payload = whatsapp_text("wamid.2", "5511999990000", "oi")
    payload["entry"][0]["changes"][0]["value"]["contacts"] = [{"profile": "?"}, 7]
    (message,) = parse_notification(payload, "gw")
    assert isinstance(message, InboundMessage) and "name" not in message.metadata


def test_telegram_first_name_and_language_travel_with_the_message() -> None:
    message = parse_update(telegram_text(10, 42, "hello"), "gw", 1024)
    assert isinstance(message, InboundMessage)
    assert message.metadata == {"chat_id": 42, "name": "Ana", "language": "pt-br"}


def locale(language: str) -> Locale:
    return Locale(language, zone="America/Sao_Paulo", now=NOW)


def test_times_are_shown_in_the_business_time_zone_and_relative() -> None:
    assert locale("en").when(NOW) == "2026-11-29 21:53:20 -03"
    assert locale("pt-BR").when(NOW) == "29/11/2026 21:53:20 -03"
    assert locale("en").ago(NOW - 20) == "just now"
    assert locale("en").ago(NOW - 3 * 3600 - 125) == "3 h 2 min ago"
    assert locale("pt-BR").ago(NOW - 300) == "há 5 min"
    assert locale("en").waiting(NOW - 600) == "waiting 10 min"


def entry(action: str, outcome: str = "ok", detail: str = "", target: str = "whatsapp:1:55") -> dict[str, Any]:
    return {"actor": "Ana", "action": action, "target": target, "outcome": outcome, "detail": detail}


def test_the_audit_log_reads_as_sentences() -> None:
    english, portuguese = locale("en"), locale("pt-BR")
    assert english.sentence(entry("assign")) == "Ana took whatsapp:1:55."
    assert portuguese.sentence(entry("reply_as_agent")) == "Ana respondeu em whatsapp:1:55."
    assert english.sentence(entry("login", target="")) == "Ana signed in."
    assert (
        english.sentence(entry("reply_as_agent", "refused", "assigned to Bia"))
        == "Ana tried to reply in whatsapp:1:55, refused: refused (assigned to Bia)."
    )
    assert english.sentence(entry("login", "wrong_token", target="")) == "Ana tried to sign in, refused: wrong token."
