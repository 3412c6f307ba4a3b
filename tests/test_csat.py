"""Satisfaction ratings (CSAT, SPEC section 2) and conversation outcomes, end to end: a gateway with
the Telegram channel (the Bot API as a local stand-in), a worker, the monitor, real RabbitMQ and
Redis. The quiet timer is swept here by the workers' own sweeper with a clock the test moves;
nothing sleeps.

- the bot answered and the customer was quiet CSAT_AFTER_MINUTES: asked once, with the scores as
  an inline keyboard; a tap is recorded with who handled the conversation, the next message is
  its comment; the conversation's outcome is counted;
- an agent released the conversation: asked at once, recorded for the agent; never while the
  person has it;
- never twice within 24 hours, and a rating nobody asked for is not recorded (nor thanked for: like
  any option not offered, it is asked again);
- the numbers reach /monitoring/stats, the admin area and /metrics (`promtool check metrics`).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from services.monitor.outcomes import Summary, summarise
from services.worker.commit import Committer
from services.worker.csat import RatingSweeper
from services.worker.state import OFFERED_TTL_SECONDS
from shared.connections import Connections, open_connections
from shared.conversations import Conversations, ConversationSettings, Keys
from shared.messages import ReplyContent
from shared.names import Names
from shared.settings import Settings
from tests.support import TEST_SHARDS, Service, Stack, eventually, get_json, post_message, web_id
from tests.support.channel_fakes import TELEGRAM_ENV, FakeChannelApi, post_telegram, telegram_tap, telegram_text
from tests.support.commits import commit_of, message
from tests.support.metrics import Samples, scrape, value
from tests.support.pipeline import read_events, wait_ready

PRAZO = "Qual o prazo de entrega?"
SCORES = [(f"csat:{n}", str(n)) for n in range(1, 6)]
MINUTE = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


ADMIN = {"Authorization": "Bearer csat-test-admin-token"}


def closed_today() -> dict[str, str]:
    """Business hours for the monitor that make it closed now, whatever the hour: today is a holiday."""
    today = datetime.now(ZoneInfo("America/Sao_Paulo")).date()
    return {"BUSINESS_HOURS": "mon-sun 00:00-24:00", "BUSINESS_HOLIDAYS": today.isoformat()}


@pytest.fixture
async def gateway(stack: Stack, api: FakeChannelApi) -> Service:
    await stack.start("gateway", **TELEGRAM_ENV, **api.env())
    await stack.start("worker", CSAT_AFTER_MINUTES="30")
    await stack.start("monitor", ADMIN_TOKEN=ADMIN["Authorization"][7:], ALERT_INTERVAL_SECONDS="0.2", **closed_today())
    await wait_ready(stack)
    return stack.gateway


@pytest.fixture
async def connections(stack: Stack) -> AsyncIterator[Connections]:
    settings = Settings.from_env({"ATENDIMENTO_NAMESPACE": stack.namespace, "ATENDIMENTO_SHARDS": str(TEST_SHARDS)})
    async with open_connections(settings, "test") as opened:

        async def connected() -> bool:
            return opened.broker.connected

        await eventually(connected, what="the test's broker connection")
        yield opened


class Chat:
    """One Telegram chat of the test: what it sends and what the bot sent to it."""

    update_ids = iter(range(910_000_000, 920_000_000))

    def __init__(self, http: aiohttp.ClientSession, gateway: Service, api: FakeChannelApi, chat_id: int) -> None:
        self.http, self.gateway, self.api, self.chat_id = http, gateway, api, chat_id

    async def send(self, update: dict[str, Any]) -> None:
        status, body = await post_telegram(self.http, self.gateway, update)
        assert status == 200, body

    async def write(self, text: str) -> None:
        await self.send(telegram_text(next(self.update_ids), self.chat_id, text))

    async def tap(self, data: str) -> None:
        await self.send(telegram_tap(next(self.update_ids), self.chat_id, data))

    async def received(self, count: int) -> list[Any]:
        async def arrived() -> list[Any] | None:
            sent = self.api.delivered_to(self.chat_id)
            return sent if len(sent) >= count else None

        return await eventually(arrived, what=f"{count} messages to chat {self.chat_id}")


def rating_sweeper(connections: Connections) -> tuple[Clock, Conversations, RatingSweeper]:
    """A sweeper on the test's namespace that asks after 30 quiet minutes, with a clock the test moves."""
    names = Names(connections.names.namespace, TEST_SHARDS)
    clock = Clock()
    conversations = Conversations(connections.redis, names, ConversationSettings(csat_after_s=1800), clock=clock)
    return clock, conversations, RatingSweeper(conversations, connections.broker, "pt")


async def counted(conversations: Conversations) -> Summary:
    # Two days: the test's clock may have moved past midnight while the worker counted on today.
    return summarise([counts for _, counts in await conversations.read_days(2)])


async def test_ratings_after_quiet_and_after_release_recorded_once(
    stack: Stack,
    gateway: Service,
    http: aiohttp.ClientSession,
    api: FakeChannelApi,
    connections: Connections,
    redis: Redis,
) -> None:
    clock, conversations, sweeper = rating_sweeper(connections)
    names = conversations.names
    keys = Keys(names)

    # The bot answers; nothing is asked before the customer was quiet for 30 minutes.
    quiet = Chat(http, gateway, api, 710_000_001)
    await quiet.write(PRAZO)
    await quiet.received(1)
    assert await sweeper.sweep_once() == []
    clock.now += 29 * MINUTE
    assert await sweeper.sweep_once() == []
    clock.now += 2 * MINUTE
    (question,) = await sweeper.sweep_once()
    assert question.conversation_id == "telegram:710000001"
    asked = (await quiet.received(2))[1]
    assert asked.options == SCORES and "1 (ruim) a 5 (ótimo)" in asked.text
    last_logged = await redis.lindex(names.conversation_log_key(question.conversation_id), -1)
    assert last_logged is not None
    logged = orjson.loads(last_logged)
    assert (logged["kind"], logged["handled_by"], logged["reply"]["text"]) == ("csat", "bot", asked.text)
    assert (await counted(conversations)).contained == 1

    # A tap is recorded with who handled the conversation; the next message is its comment.
    await quiet.tap("csat:4")
    thanks = (await quiet.received(3))[2]
    assert thanks.text.startswith("Obrigado pela avaliação!")
    rated_entry = await redis.lindex(names.conversation_log_key(question.conversation_id), -1)
    assert rated_entry is not None and orjson.loads(rated_entry)["csat"] == 4  # shown in its conversation
    totals = await conversations.read_totals()
    assert totals.get("csat:4:bot") == 1 and totals.get("outcome:resolved:telegram") == 1
    assert (await counted(conversations)).csat[4] == 1
    await quiet.write("Muito rápido, obrigado")
    await quiet.received(4)
    (comment,) = [orjson.loads(raw) for raw in await redis.lrange(keys.comments, 0, -1)]
    assert (comment["score"], comment["handled_by"], comment["text"]) == (4, "bot", "Muito rápido, obrigado")

    # Never twice within 24 hours: the next quiet conversation is counted, nobody is asked; a
    # rating nobody asked for is not offered: asked to choose again, and neither recorded nor
    # counted (a stale score tapped starts no conversation).
    await quiet.write(PRAZO)
    await quiet.received(5)
    clock.now += 31 * MINUTE
    assert await sweeper.sweep_once() == []
    assert (await counted(conversations)).contained == 2
    await quiet.tap("csat:1")
    assert (await quiet.received(6))[5].text.startswith("Essa opção não está mais disponível")
    assert (await counted(conversations)).csat == {1: 0, 2: 0, 3: 0, 4: 1, 5: 0}

    # Handed to a person: never asked while the person has it; the agent answers from the admin
    # area, releases it, and the customer is asked at once (whichever worker sweeps first).
    human = Chat(http, gateway, api, 710_000_002)
    await human.write("quero falar com um atendente")
    await human.received(1)
    assert (await counted(conversations)).handed_off == 1
    clock.now += 3 * 60 * MINUTE
    assert await sweeper.sweep_once() == []
    monitor = stack.monitor
    for action, body in (("reply", {"text": "Olá, sou a Ana."}), ("release", {})):
        url = f"{monitor.url}/admin/api/handoffs/{action}"
        async with http.post(url, json={"conversation_id": "telegram:710000002", **body}, headers=ADMIN) as answer:
            assert answer.status == 200, await answer.text()
    await sweeper.sweep_once()
    assert (await human.received(3))[2].options == SCORES
    await human.tap("csat:5")
    await human.received(4)
    assert (await conversations.read_totals()).get("csat:5:agent") == 1
    summary = await counted(conversations)
    assert (summary.csat_responses, summary.csat_avg, summary.first_responses) == (2, 4.5, 1)
    # Replies and fallbacks are counted when each conversation ends: three, none a fallback.
    assert (summary.replies, summary.fallback_rate) == (3, 0)
    await numbers_shown(http, monitor)


async def numbers_shown(http: aiohttp.ClientSession, monitor: Service) -> None:
    """What the worker counted on today's clock, as the monitor shows it."""
    status, stats = await get_json(http, f"{monitor.url}/monitoring/stats")
    assert status == 200
    shown = stats["conversations"]
    assert (shown["started_24h"], shown["handed_off_24h"]) == (3, 1)
    assert (shown["csat_responses_7d"], shown["csat_avg_7d"]) == (2, 4.5)
    async with http.get(f"{monitor.url}/admin/api/outcomes", headers=ADMIN) as answer:
        outcomes = await answer.json()
    week = outcomes["last_7_days"]
    (comment,) = outcomes["comments"]
    assert (comment["score"], comment["handled_by"], comment["text"]) == (4, "bot", "Muito rápido, obrigado")
    assert (week["conversations"], week["handed_off"], week["csat_distribution"]["4"]) == (3, 1, 1)
    assert week["first_response_avg_s"] is not None
    async with http.get(f"{monitor.url}/admin/api/overview", headers=ADMIN) as answer:
        business = (await answer.json())["business"]
    assert business["open"] is False and business["next_opening"].endswith("T00:00:00-03:00")
    async with http.get(f"{monitor.url}/admin/outcomes", headers=ADMIN) as answer:
        page = await answer.text()
    assert answer.status == 200 and 'data-metric="last_7_days.csat_avg" data-value="4.5"' in page
    assert "<q>Muito rápido, obrigado</q>" in page
    async with http.get(f"{monitor.url}/admin/conversation?id=telegram:710000001", headers=ADMIN) as answer:
        page = await answer.text()
    assert answer.status == 200 and 'data-csat="4"' in page

    async def counters() -> Samples | None:
        _, samples = await scrape(http, monitor)
        return samples if value(samples, "atendimento_csat_responses_total", score="5", handled_by="agent") else None

    samples = await eventually(counters, what="the rating counters on the monitor's /metrics")
    assert value(samples, "atendimento_conversations_total", outcome="resolved", channel="telegram") == 2
    assert value(samples, "atendimento_conversations_total", outcome="handed_off", channel="telegram") == 1
    assert value(samples, "atendimento_csat_responses_total", score="4", handled_by="bot") == 1
    text, _ = await scrape(http, monitor)
    promtool_check(text)


def promtool_check(text: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (scripts/ensure-test-tools.sh installs it)")
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    # promtool prints lint findings and exits 1 on any; a clean text gives no output at all.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


async def test_the_chat_page_gets_the_rating_as_chips_and_a_chip_is_recorded(
    stack: Stack, gateway: Service, http: aiohttp.ClientSession, connections: Connections
) -> None:
    """The web channel: the question arrives on the conversation's event stream with the scores as
    options (the chat page shows them as chips), and the chosen one comes back as `option`."""
    clock, conversations, sweeper = rating_sweeper(connections)
    asked = {"user_id": "lia", "conversation_id": "chat", "text": PRAZO}
    assert (await post_message(http, gateway, asked, wait=10))[0] == 200
    connected = asyncio.Event()
    stream = asyncio.create_task(read_events(http, gateway, "chat", 1, connected, user_id="lia"))
    await asyncio.wait_for(connected.wait(), 10)
    clock.now += 31 * MINUTE
    (question,) = await sweeper.sweep_once()
    (event,) = await asyncio.wait_for(stream, 20)
    assert event["message_id"] == question.message_id
    assert [(o["id"], o["label"]) for o in event["reply"]["options"]] == SCORES
    chip = {"user_id": "lia", "conversation_id": "chat", "text": "3", "option": "csat:3"}
    status, thanked = await post_message(http, gateway, chip, wait=10)
    assert status == 200 and thanked["reply"]["text"].startswith("Obrigado pela avaliação!")
    assert (await conversations.read_totals()).get("csat:3:bot") == 1


CHOOSE_AGAIN = "Essa opção não está mais disponível. Por favor, escreva sua pergunta."


async def test_a_rating_never_offered_is_asked_again_not_thanked(
    gateway: Service, http: aiohttp.ClientSession, connections: Connections
) -> None:
    """SPEC 4: `option` is one of the options the conversation's last reply offered. A rating nobody
    asked for (no question yet, or the conversation moved on since) gets the "please choose again"
    any other option not offered gets: no thanks, nothing recorded, and the next message is no
    comment."""
    names = Names(connections.names.namespace, TEST_SHARDS)
    conversations = Conversations(connections.redis, names, ConversationSettings(csat_after_s=1800))
    for option in ("csat:1", "csat:5", "csat:9"):
        forged = {"user_id": "kim", "text": option[-1], "option": option}
        status, answer = await post_message(http, gateway, forged, wait=10)
        assert status == 200
        reply = answer["reply"]
        assert (reply["engine"], reply["kind"]) == ("choice", "clarify"), option
        assert [o["id"] for o in reply["options"]] == ["handoff"], option  # no score among them
        if option == "csat:1":  # nothing offered yet (then: the hand-over, listed to choose again)
            assert reply["text"] == CHOOSE_AGAIN
        assert reply["text"].startswith("Essa opção não está mais disponível."), option
    answered = {"user_id": "kim", "text": PRAZO}
    assert (await post_message(http, gateway, answered, wait=10))[1]["reply"]["kind"] == "answer"
    status, answer = await post_message(http, gateway, {"user_id": "kim", "text": "4", "option": "csat:4"}, wait=10)
    assert status == 200 and answer["reply"]["text"] == CHOOSE_AGAIN
    comment = {"user_id": "kim", "text": "Muito bom o atendimento"}
    assert (await post_message(http, gateway, comment, wait=10))[0] == 200
    assert await conversations.read_comments(10) == []
    assert not any(name.startswith("csat:") for name in await conversations.read_totals())
    assert (await counted(conversations)).conversations == 1  # the scores tapped started none


async def test_a_rating_asked_for_is_chosen_by_its_number_while_it_may_be_given(
    gateway: Service, http: aiohttp.ClientSession, connections: Connections, redis: Redis
) -> None:
    """The scores stay offered as long as the rating may be given (a day), not only the half hour
    other options are; typed, the number chooses one; once rated, another tap is not offered."""
    clock, conversations, sweeper = rating_sweeper(connections)
    asked = {"user_id": "mia", "conversation_id": "chat", "text": PRAZO}
    assert (await post_message(http, gateway, asked, wait=10))[0] == 200
    clock.now += 31 * MINUTE
    (question,) = await sweeper.sweep_once()
    assert question.conversation_id == web_id("mia", "chat")
    assert await redis.ttl(conversations.names.offered_key(question.conversation_id)) > OFFERED_TTL_SECONDS
    typed = {"user_id": "mia", "conversation_id": "chat", "text": " 4. "}
    status, thanked = await post_message(http, gateway, typed, wait=10)
    assert status == 200 and thanked["reply"]["text"].startswith("Obrigado pela avaliação!")
    assert (await conversations.read_totals()).get("csat:4:bot") == 1
    # A score tapped again (a list on WhatsApp stays tappable) is no longer offered, and it is no
    # comment either: the next message written is.
    tapped = {"user_id": "mia", "conversation_id": "chat", "text": "5", "option": "csat:5"}
    status, again = await post_message(http, gateway, tapped, wait=10)
    assert status == 200 and again["reply"]["engine"] == "choice"
    totals = await conversations.read_totals()
    assert totals.get("csat:4:bot") == 1 and not totals.get("csat:5:bot")
    written = {"user_id": "mia", "conversation_id": "chat", "text": "Gostei, foi rápido"}
    assert (await post_message(http, gateway, written, wait=10))[0] == 200
    (comment,) = await conversations.read_comments(10)
    assert (comment["score"], comment["text"]) == (4, "Gostei, foi rápido")


ANSWER = ReplyContent(text="Cinco dias.", engine="kb", confidence=0.9, sources=("prazo",))
CLARIFY = ReplyContent(text="Você quis dizer:", engine="kb", confidence=0.4, kind="clarify")
FALLBACK = ReplyContent(text="Não encontrei.", engine="kb", confidence=0.1, kind="fallback", fallback=True)


async def test_several_sweepers_end_each_conversation_once(redis: Redis) -> None:
    """The quiet timer with any number of workers: claimed atomically, each conversation is ended
    (and asked) once; one still talking is not ended; the outcomes are told apart."""
    names = Names(f"t{uuid.uuid4().hex[:12]}", TEST_SHARDS)
    clock = Clock()
    committer = Committer(redis, names, clock=clock)
    settings = ConversationSettings(csat_after_s=1800)
    sweepers = [Conversations(redis, names, settings, clock=clock) for _ in range(3)]
    try:
        answered = [f"c-{n}" for n in range(30)]
        await committer.commit_all([commit_of(message(c), ANSWER) for c in answered])
        await committer.commit_all([commit_of(message("c-asked-back"), CLARIFY)])
        await committer.commit_all([commit_of(message("c-asked-back"), ANSWER)])
        await committer.commit_all([commit_of(message("c-lost"), FALLBACK)])
        clock.now += 20 * MINUTE
        await committer.commit_all([commit_of(message("c-0"), ANSWER)])  # still talking
        clock.now += 11 * MINUTE
        claimed = await asyncio.gather(*(sweeper.sweep(limit=7) for sweeper in sweepers for _ in range(3)))
        asked = [ask.conversation_id for asks in claimed for ask in asks]
        assert sorted(asked) == sorted([*answered[1:], "c-asked-back"])  # once each; not c-0, not c-lost
        assert all(ask.handled_by == "bot" for asks in claimed for ask in asks)
        counts = summarise([c for _, c in await sweepers[0].read_days(2)])
        assert (counts.conversations, counts.contained, counts.abandoned) == (32, 30, 1)
        assert (counts.resolved_after_clarify, counts.replies, counts.fallbacks) == (1, 32, 1)
        clock.now += 20 * MINUTE  # c-0 is quiet now
        (last,) = await sweepers[1].sweep()
        assert last.conversation_id == "c-0" and last.address["channel"] == "web"
    finally:
        async for key in redis.scan_iter(match=f"{names.namespace}:*"):
            await redis.delete(key)
