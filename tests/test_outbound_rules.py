"""The rules of proactive messages without servers: what a request may hold, the 24-hour window on
an injectable clock, opt-out commands, and WhatsApp's statuses as the Graph API posts them."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from services.gateway.delivery.clients import whatsapp_template
from services.gateway.statuses import parse_statuses
from shared.contacts import WINDOW_S, Clock, Contact, is_opt_out
from shared.messages import OPT_OUT_OPTION, ReplyContent, Template
from shared.outbound import check_sendable, outbound_reply, parse_outbound
from shared.settings import Settings
from shared.web import Problem
from tests.support.channel_fakes import WHATSAPP_ENV, whatsapp_status

CONFIGURED = dataclasses.replace(
    Settings(),
    whatsapp_app_secret=WHATSAPP_ENV["WHATSAPP_APP_SECRET"],
    whatsapp_access_token=WHATSAPP_ENV["WHATSAPP_ACCESS_TOKEN"],
    telegram_bot_token="1:token",
    telegram_secret_token="secret",
)


def refusal(request: dict[str, Any], contact: Contact, now_s: float, settings: Settings = CONFIGURED) -> str | None:
    try:
        check_sendable(parse_outbound(request), contact, settings, now_s)
    except Problem as problem:
        assert problem.status == 422
        return problem.detail
    return None


@pytest.mark.parametrize("text", ["parar", "PARAR", "Sair.", " stop ", "Unsubscribe!", "párar"])
def test_whole_message_opt_out_commands(text: str) -> None:
    assert is_opt_out(text)


@pytest.mark.parametrize("text", ["quero parar de receber a fatura em papel", "stop it please", "sair de casa", ""])
def test_other_messages_do_not_opt_out(text: str) -> None:
    assert not is_opt_out(text)
    assert is_opt_out(text, OPT_OUT_OPTION)  # a tap on the opt-out button does, whatever its label


def test_the_24_hour_window_on_a_moved_clock() -> None:
    clock = Clock()
    wrote = Contact(last_in_ms=clock.now() * 1000, phone_number_id="1065")
    text = {"channel": "whatsapp", "to": "5511987650000", "text": "Oi"}
    template = {"channel": "whatsapp", "to": "5511987650000", "template": {"name": "hello", "language": "pt_BR"}}

    clock.offset_s = WINDOW_S - 60
    assert refusal(text, wrote, clock.now()) is None
    clock.offset_s = WINDOW_S + 60
    detail = refusal(text, wrote, clock.now())
    assert detail is not None and detail.startswith("text: ") and "template" in detail
    assert refusal(template, wrote, clock.now()) is None
    # Telegram has no such window.
    assert refusal({"channel": "telegram", "to": "42", "text": "Oi"}, Contact(), clock.now()) is None


def test_opted_out_and_unconfigured_are_refused_naming_why() -> None:
    request = {"channel": "telegram", "to": "42", "text": "Oi"}
    detail = refusal(request, Contact(opted_out=True), 0.0)
    assert detail is not None and detail.startswith("to: ") and "opted out" in detail
    detail = refusal(request, Contact(), 0.0, settings=Settings())
    assert detail is not None and detail.startswith("channel: ") and "not configured" in detail


def test_a_template_goes_in_the_graph_api_shape() -> None:
    components = ({"type": "body", "parameters": [{"type": "text", "text": "Ana"}]},)
    assert whatsapp_template(Template("order_shipped", "pt_BR", components)) == {
        "name": "order_shipped",
        "language": {"policy": "deterministic", "code": "pt_BR"},
        "components": list(components),
    }
    assert whatsapp_template(Template("hello", "en")) == {
        "name": "hello",
        "language": {"policy": "deterministic", "code": "en"},
    }


def test_the_reply_carries_the_template_on_the_wire() -> None:
    request = parse_outbound(
        {
            "channel": "whatsapp",
            "to": "+5511987650000",
            "template": {"name": "hello", "language": "en"},
            "message_id": "m1",
        }
    )
    reply = outbound_reply(request, Contact(phone_number_id="1065"), CONFIGURED, "gw")
    assert reply.message_id == "outbound:m1" and reply.conversation_id == "whatsapp:1065:5511987650000"
    assert reply.metadata == {"phone_number_id": "1065", "to": "5511987650000"}
    wire = ReplyContent.from_dict(reply.reply.to_wire())
    assert wire.template == Template("hello", "en")
    assert "template" not in reply.reply.to_dict()  # never in the public reply object


def test_statuses_read_as_the_graph_api_posts_them() -> None:
    payload = whatsapp_status("wamid.A", "5511987650000", "read")
    failed = whatsapp_status("wamid.B", "5511987650000", "failed")
    failed["entry"][0]["changes"][0]["value"]["statuses"][0]["errors"] = [
        {"code": 131047, "title": "Re-engagement message", "error_data": {"details": "more than 24 hours"}}
    ]
    payload["entry"] += failed["entry"]
    payload["entry"] += whatsapp_status("wamid.C", "5511987650000", "deleted")["entry"]  # not a status of ours
    [(first, read), (second, fail)] = list(parse_statuses(payload))
    assert (first, read.status, read.failure) == ("wamid.A", "read", None)
    assert second == "wamid.B" and fail.status == "failed" and fail.failure is not None
    assert (fail.failure.code, fail.failure.title, fail.failure.detail) == (
        131047,
        "Re-engagement message",
        "more than 24 hours",
    )
