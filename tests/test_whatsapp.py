"""WhatsApp Cloud API channel (SPEC 4): verification, signed webhooks, dedupe by wamid, statuses
and unsupported types, replies out through a local stand-in of the Graph API."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest

from services.gateway.delivery.clients import WHATSAPP_LIST_BUTTON, WHATSAPP_LIST_BUTTONS, whatsapp_interactive
from services.gateway.delivery.split import units
from services.gateway.handlers.whatsapp import text_only_reply
from shared.messages import HANDOFF_OPTION, InboundMessage, Option, ReplyContent
from tests.support import Service, Stack, eventually, queued_inbound, stored_reply
from tests.support.channel_fakes import (
    GRAPH_VERSION,
    PHONE_NUMBER_ID,
    WHATSAPP_ENV,
    FakeChannelApi,
    Received,
    kb_answer,
    post_whatsapp,
    whatsapp_message,
    whatsapp_status,
    whatsapp_tap,
    whatsapp_text,
)
from tests.support.pipeline import wait_ready
from tests.support.replies import Replies, reply

PRAZO = "Qual o prazo de entrega?"
PRAZO_ANSWER = kb_answer("prazo-entrega")
TEXT_ONLY = "não consigo ler esse tipo de mensagem"


@pytest.fixture
async def graph() -> AsyncIterator[FakeChannelApi]:
    api = await FakeChannelApi().start()
    try:
        yield api
    finally:
        await api.close()


async def replies_to(graph: FakeChannelApi, sender: str, count: int) -> list[str]:
    async def arrived() -> list[str] | None:
        texts = [r.text for r in graph.delivered_to(sender)]
        return texts if len(texts) >= count else None

    return await eventually(arrived, what=f"{count} WhatsApp replies to {sender}")


@pytest.fixture
async def gateway(stack: Stack, graph: FakeChannelApi) -> Service:
    """A gateway with the WhatsApp channel and a worker; each test uses senders of its own."""
    await stack.start("gateway", **WHATSAPP_ENV, **graph.env())
    await stack.start("worker")
    await wait_ready(stack)
    return stack.gateway


async def test_verification_handshake(gateway: Service, http: aiohttp.ClientSession) -> None:
    url = f"{gateway.url}/webhooks/whatsapp"
    right = {
        "hub.mode": "subscribe",
        "hub.verify_token": WHATSAPP_ENV["WHATSAPP_VERIFY_TOKEN"],
        "hub.challenge": "1158201444",
    }
    async with http.get(url, params=right) as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        assert await response.text() == "1158201444"
    for wrong in ({**right, "hub.verify_token": "guess"}, {**right, "hub.mode": "unsubscribe"}, {"hub.challenge": "1"}):
        async with http.get(url, params=wrong) as response:
            assert response.status == 403
            assert response.content_type == "application/problem+json"
            assert (await response.json())["detail"].startswith("hub.")


async def test_signed_text_message_is_answered_through_the_graph_api(
    gateway: Service, http: aiohttp.ClientSession, graph: FakeChannelApi
) -> None:
    sender = "5511987650001"
    wamid = "wamid.HBgNNTUxMTk4NzY1MDAwMRUCABIYFjNFQjBDMEFGM0Q1"
    payload = whatsapp_text(wamid, sender, PRAZO)

    for bad in (None, "sha256=" + "0" * 64, "sha1=abc", "garbage"):
        status, problem = await post_whatsapp(http, gateway, payload, signature=bad)
        assert status == 401, problem
        assert problem["detail"].startswith("X-Hub-Signature-256")
    assert graph.received == []  # nothing unsigned got in

    status, body = await post_whatsapp(http, gateway, payload)
    assert status == 200, body
    assert body == {"accepted": 1, "duplicates": 0}

    [reply] = await replies_to(graph, sender, 1)
    [request] = graph.delivered_to(sender)
    assert request.path == f"/{GRAPH_VERSION}/{PHONE_NUMBER_ID}/messages"
    assert request.headers["Authorization"] == f"Bearer {WHATSAPP_ENV['WHATSAPP_ACCESS_TOKEN']}"
    assert request.body == {"messaging_product": "whatsapp", "to": sender, "type": "text", "text": {"body": reply}}
    assert reply == PRAZO_ANSWER

    # The conversation is per business number and sender; the reply is stored under the wamid.
    stored = await stored_reply(gateway.env["ATENDIMENTO_NAMESPACE"], wamid)
    assert stored is not None and stored["conversation_id"] == f"whatsapp:{PHONE_NUMBER_ID}:{sender}"


async def test_same_wamid_three_times_gets_one_reply(
    gateway: Service, http: aiohttp.ClientSession, graph: FakeChannelApi
) -> None:
    one, two = "5511987650002", "5511987650003"

    # Meta retrying one after the other, and the same notification arriving concurrently.
    first = whatsapp_text("wamid.sequential-1", one, PRAZO)
    results = [await post_whatsapp(http, gateway, first) for _ in range(3)]
    concurrent = whatsapp_text("wamid.concurrent-1", two, PRAZO)
    results += await asyncio.gather(*(post_whatsapp(http, gateway, concurrent) for _ in range(3)))
    assert all(status == 200 for status, _ in results), results
    assert sum(body["accepted"] for _, body in results) == 2
    assert sum(body["duplicates"] for _, body in results) == 4

    # A later message of each sender is answered after the first (one conversation, in order):
    # once its reply is out, a second reply to the repeated wamid could only have come before it.
    for sender in (one, two):
        status, _ = await post_whatsapp(http, gateway, whatsapp_text(f"wamid.later-{sender}", sender, "obrigado"))
        assert status == 200
    for sender in (one, two):
        replies = await replies_to(graph, sender, 2)
        assert PRAZO_ANSWER in replies[0]
        assert PRAZO_ANSWER not in replies[1]
        assert len(graph.delivered_to(sender)) == 2


async def test_statuses_and_unsupported_types_get_no_knowledge_reply(
    gateway: Service, http: aiohttp.ClientSession, graph: FakeChannelApi
) -> None:
    sender = "5511987650004"

    status, body = await post_whatsapp(http, gateway, whatsapp_status("wamid.ours-1", sender, "read"))
    assert (status, body) == (200, {"accepted": 0, "duplicates": 0})
    status, body = await post_whatsapp(
        http,
        gateway,
        whatsapp_message("wamid.reaction-1", sender, "reaction", {"message_id": "wamid.x", "emoji": "👍"}),
    )
    assert (status, body) == (200, {"accepted": 0, "duplicates": 0})
    location = whatsapp_message(
        "wamid.location-1", sender, "location", {"latitude": -23.55, "longitude": -46.63, "name": PRAZO}
    )
    for _ in range(2):  # a retried notification is still answered once
        status, _ = await post_whatsapp(http, gateway, location)
        assert status == 200
    status, _ = await post_whatsapp(http, gateway, whatsapp_text("wamid.after-location", sender, PRAZO))
    assert status == 200

    replies = await replies_to(graph, sender, 2)
    assert TEXT_ONLY in replies[0]
    assert PRAZO_ANSWER not in replies[0]  # the location's name did not reach the knowledge base
    assert PRAZO_ANSWER in replies[1]
    assert len(graph.delivered_to(sender)) == 2


def test_the_text_only_reply_is_not_an_answer() -> None:
    """A sticker or a location gets "please write": nothing was answered (SPEC 6: an `answer` is an
    entry's, with its id in `sources`), like the worker's polite reply to media it cannot handle."""
    message = InboundMessage(
        "wamid.s", f"whatsapp:{PHONE_NUMBER_ID}:5511987650009", "5511987650009", "", channel="whatsapp"
    )
    reply = text_only_reply(message).reply
    assert (reply.kind, reply.engine, reply.sources, reply.options) == ("smalltalk", "channel", (), ())


async def test_malformed_signed_notification_names_the_field(gateway: Service, http: aiohttp.ClientSession) -> None:
    payload = whatsapp_text("wamid.bad", "5511987650005", PRAZO)
    del payload["entry"][0]["changes"][0]["value"]["messages"][0]["from"]
    status, problem = await post_whatsapp(http, gateway, payload)
    assert status == 400
    assert problem["detail"].startswith("entry[0].changes[0].value.messages[0].from")


async def test_one_notifications_messages_are_queued_in_the_order_they_came(
    stack: Stack, http: aiohttp.ClientSession, graph: FakeChannelApi
) -> None:
    """15 messages of one sender in one notification (no worker running: the queue is read as is)."""
    gateway = await stack.start("gateway", **WHATSAPP_ENV, **graph.env())
    await wait_ready(stack)
    sender = "5511955550015"
    payload = whatsapp_text(f"wamid.batch-{uuid.uuid4().hex}-0", sender, "linha 0")
    messages = payload["entry"][0]["changes"][0]["value"]["messages"]
    for i in range(1, 15):
        messages.append({**messages[0], "id": f"wamid.batch-{uuid.uuid4().hex}-{i}", "text": {"body": f"linha {i}"}})
    status, body = await post_whatsapp(http, gateway, payload)
    assert status == 200 and body["accepted"] == 15
    queued = await queued_inbound(stack.namespace, 15)
    assert [message.text for message in queued] == [f"linha {i}" for i in range(15)]


HANDOFF = Option(HANDOFF_OPTION, "Falar com atendente")
# A question back: candidate entries (id and title) and the hand-over.
CANDIDATES = (
    Option("prazo-entrega", "Prazo de entrega"),
    Option("frete", "Valor do frete"),
    Option("troca-devolucao", "Trocas e devoluções"),
    HANDOFF,
)
LONG_LABEL = "Quanto tempo demora a entrega para o interior do estado?"  # 56 characters


def test_options_fit_reply_buttons_or_become_a_list() -> None:
    """Reply buttons only when Graph takes them (at most 3, distinct titles of at most 20
    characters); a list message otherwise, each row's title within 24 characters and the whole
    label, when cut, as its description."""
    three = whatsapp_interactive("Como posso ajudar?", CANDIDATES[1:])
    assert three == {
        "type": "button",
        "body": {"text": "Como posso ajudar?"},
        "action": {
            "buttons": [
                {"type": "reply", "reply": {"id": "frete", "title": "Valor do frete"}},
                {"type": "reply", "reply": {"id": "troca-devolucao", "title": "Trocas e devoluções"}},
                {"type": "reply", "reply": {"id": "handoff", "title": "Falar com atendente"}},
            ]
        },
    }
    four = whatsapp_interactive("Você quis dizer...?", CANDIDATES)
    assert four == {
        "type": "list",
        "body": {"text": "Você quis dizer...?"},
        "action": {
            "button": WHATSAPP_LIST_BUTTON,
            "sections": [{"rows": [{"id": o.id, "title": o.label} for o in CANDIDATES]}],
        },
    }
    assert all(0 < units(button) <= 20 for button in (WHATSAPP_LIST_BUTTON, *WHATSAPP_LIST_BUTTONS.values()))

    # One label over 20 characters: never a button title, so a list; cut to 24 with its description.
    long = whatsapp_interactive("Qual delas?", (Option("prazo-interior", LONG_LABEL), HANDOFF))
    assert long["type"] == "list"
    [row, handoff] = long["action"]["sections"][0]["rows"]
    assert row["id"] == "prazo-interior" and units(row["title"]) <= 24 and row["title"].endswith("…")
    assert LONG_LABEL.startswith(row["title"].removesuffix("…")) and row["description"] == LONG_LABEL
    assert handoff == {"id": "handoff", "title": "Falar com atendente"}  # not cut: no description
    # 21 to 24 characters: a list row as is.
    fits_row = whatsapp_interactive("Qual?", (Option("a", "Trocas, devoluções e +"),))
    assert fits_row["action"]["sections"][0]["rows"] == [{"id": "a", "title": "Trocas, devoluções e +"}]
    # The same title twice is refused as buttons; more than 10 options, the first 10 rows.
    twice = whatsapp_interactive("Qual?", (Option("a", "Frete"), Option("b", "Frete")))
    assert twice["type"] == "list"
    many = whatsapp_interactive("Qual?", tuple(Option(f"e{n}", f"Entrada {n}") for n in range(12)))
    assert [r["id"] for r in many["action"]["sections"][0]["rows"]] == [f"e{n}" for n in range(10)]
    # An emoji counts double where Graph may: 19 characters with one is 20 units, still a button.
    assert whatsapp_interactive("?", (Option("x", "Falar com humano 🙂"),))["type"] == "button"
    assert whatsapp_interactive("?", (Option("x", "Falar com o humano 🙂"),))["type"] == "list"


def with_options(recipient: str, text: str, options: tuple[Option, ...]) -> ReplyContent:
    content = reply("whatsapp", recipient, text).reply
    return dataclasses.replace(content, kind="clarify", options=options)


async def deliveries(graph: FakeChannelApi, sender: str, count: int) -> list[Received]:
    async def arrived() -> list[Received] | None:
        got = graph.delivered_to(sender)
        return got if len(got) >= count else None

    return await eventually(arrived, what=f"{count} WhatsApp deliveries to {sender}")


async def test_options_go_out_interactive_and_taps_come_back_as_options(
    stack: Stack, http: aiohttp.ClientSession, graph: FakeChannelApi
) -> None:
    """Replies with options, published as the worker publishes them, leave through the gateway's
    real Graph client; taps on buttons and list rows reach the queue (no worker: read as is) with
    the option's id, and a template's quick-reply button still arrives as its text."""
    await stack.start("gateway", **WHATSAPP_ENV, **graph.env())
    await wait_ready(stack)
    buttons, listed, cut, split = "5511966660001", "5511966660002", "5511966660003", "5511966660004"
    spanish = "5511966660005"
    long_question = "Você quis dizer uma destas? " + "Escolha a que mais se parece com a sua pergunta. " * 100
    async with Replies(stack.namespace) as replies:
        for recipient, text, options in (
            (buttons, "Posso ajudar com algo mais?", CANDIDATES[1:]),
            (listed, "Você quis dizer...?", CANDIDATES),
            (cut, "Qual delas?", (Option("prazo-interior", LONG_LABEL), HANDOFF)),
            (split, long_question, CANDIDATES),
        ):
            message = reply("whatsapp", recipient, text)
            await replies.publish(dataclasses.replace(message, reply=with_options(recipient, text, options)))
        # The worker names the options' language: the list opens with a button in it.
        content = dataclasses.replace(with_options(spanish, "¿Quisiste decir...?", CANDIDATES), language="es")
        await replies.publish(dataclasses.replace(reply("whatsapp", spanish, ""), reply=content))

        [sent] = await deliveries(graph, buttons, 1)
        assert sent.interactive == "button" and sent.options == [(o.id, o.label) for o in CANDIDATES[1:]]
        [sent] = await deliveries(graph, listed, 1)
        assert sent.body == {
            "messaging_product": "whatsapp",
            "to": listed,
            "type": "interactive",
            "interactive": {
                "type": "list",
                "body": {"text": "Você quis dizer...?"},
                "action": {
                    "button": WHATSAPP_LIST_BUTTON,
                    "sections": [{"rows": [{"id": o.id, "title": o.label} for o in CANDIDATES]}],
                },
            },
        }
        [sent] = await deliveries(graph, spanish, 1)
        assert sent.interactive == "list" and sent.body["interactive"]["action"]["button"] == "Opciones"
        [sent] = await deliveries(graph, cut, 1)
        assert sent.interactive == "list" and [i for i, _ in sent.options] == ["prazo-interior", "handoff"]
        assert all(units(label) <= 24 for label in sent.labels)
        # A question longer than an interactive body (1024): text first, as long as a text message
        # may be (4096), the options with a last part that fits the interactive body.
        parts = await deliveries(graph, split, 2)
        assert [p.interactive for p in parts] == [None, "list"] and units(parts[1].text) <= 1024
        assert 1024 < units(parts[0].text) <= 4096
        assert all(p.options == [] for p in parts[:-1])
        # Nothing anywhere carried a reply button titled over 20 characters.
        assert all(units(label) <= 20 for r in graph.delivered if r.interactive == "button" for label in r.labels)

    taps = [
        whatsapp_tap("wamid.tap-button", listed, "handoff", "Falar com atendente"),
        whatsapp_tap("wamid.tap-row", listed, "prazo-entrega", "Prazo de entrega", row=True),
        whatsapp_message("wamid.tap-template", listed, "button", {"payload": "PARAR", "text": "Parar promoções"}),
    ]
    for tap in taps:
        status, body = await post_whatsapp(http, stack.gateway, tap)
        assert (status, body) == (200, {"accepted": 1, "duplicates": 0})
    queued = await queued_inbound(stack.namespace, 3)
    assert [(m.message_id, m.option, m.text) for m in queued] == [
        ("wamid.tap-button", "handoff", "Falar com atendente"),
        ("wamid.tap-row", "prazo-entrega", "Prazo de entrega"),
        # A template's quick reply is no option of ours; this one, an opt-out, is the opt-out option.
        ("wamid.tap-template", "opt_out", "Parar promoções"),
    ]
    assert {m.conversation_id for m in queued} == {f"whatsapp:{PHONE_NUMBER_ID}:{listed}"}

    # A tap without the id it must carry is refused, naming the field.
    bad = whatsapp_message("wamid.tap-bad", listed, "interactive", {"type": "list_reply", "list_reply": {"title": "x"}})
    status, problem = await post_whatsapp(http, stack.gateway, bad)
    field = "entry[0].changes[0].value.messages[0].interactive.list_reply.id"
    assert (status, problem["detail"]) == (400, f"{field}: must be a non-empty string")
