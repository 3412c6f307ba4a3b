"""Business hours (SPEC sections 2 and 6): parsed and validated at start; outside them a request for
a person gets an away message naming the next opening, in the conversation's language, the
handoff waits in the agents' queue, the bot silent as for any handoff; inside them a handoff as always.

Time comes from a clock the test sets, never from sleeping."""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from services.worker.commit import Committer
from services.worker.engines.base import EngineRequest
from services.worker.engines.kb import KbEngine, KnowledgeBase
from services.worker.engines.policy import ReplyPolicy
from services.worker.state import WorkerStore
from shared.handoff import HandoffInfo, Handoffs
from shared.hours import BusinessHours, parse_holidays, parse_timezone, parse_windows
from shared.messages import ReplyContent
from shared.names import Names
from shared.settings import ConfigError, Settings
from tests.support import PRAZO, ROOT, SAMPLE_PT, TEST_SHARDS, Stack, eventually, get_json, post_message, web_id
from tests.support.commits import commit_of, message
from tests.support.pipeline import wait_ready

SAO_PAULO = ZoneInfo("America/Sao_Paulo")
HOURS = "mon-fri 08:00-18:00; sat 08:00-12:00"


def hours(holidays: str = "", timezone: str = "America/Sao_Paulo") -> BusinessHours:
    return BusinessHours(parse_windows(HOURS), parse_timezone(timezone), parse_holidays(holidays))


def at(text: str, zone: ZoneInfo = SAO_PAULO) -> float:
    """An epoch time from a local wall-clock time, `2026-12-05 13:00`."""
    return datetime.fromisoformat(text).replace(tzinfo=zone).timestamp()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# Parsing and validation at start ----------------------------------------------------------------
def test_the_settings_read_hours_time_zone_and_holidays() -> None:
    settings = Settings.from_env(
        {"BUSINESS_HOURS": "seg-sex 08:00-12:00, 13:00-18:00", "BUSINESS_HOLIDAYS": "2026-12-25, 2027-01-01"}
    )
    business = settings.business_hours
    assert len(business.windows) == 10 and business.timezone.key == "America/Sao_Paulo"
    assert business.is_open(at("2026-12-07 12:59")) is False  # lunch
    assert business.is_open(at("2026-12-07 13:00")) is True
    assert business.is_open(at("2026-12-25 10:00")) is False  # a Friday, and a holiday
    assert Settings.from_env({}).business_hours.always_open  # unset: always open


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BUSINESS_HOURS", "mon-fry 08:00-18:00"),
        ("BUSINESS_HOURS", "mon 18:00-08:00"),
        ("BUSINESS_HOURS", "mon 8h-18h"),
        ("BUSINESS_HOURS", "mon-fri"),
        ("BUSINESS_TIMEZONE", "Mars/Olympus"),
        ("BUSINESS_HOLIDAYS", "2026-02-30"),
        ("CSAT_AFTER_MINUTES", "soon"),
    ],
)
def test_a_malformed_setting_stops_the_start_naming_it(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({name: value})
    message_text = str(raised.value)
    assert message_text.startswith(f"{name}=") and "\n" not in message_text


# The next opening -------------------------------------------------------------------------------
def test_the_next_opening_skips_the_weekend() -> None:
    # Saturday 13:00: closed since noon; Sunday closed; back on Monday 08:00.
    opening = hours().next_opening(at("2026-12-05 13:00"))
    assert opening == datetime(2026, 12, 7, 8, 0, tzinfo=SAO_PAULO)
    assert hours().next_opening(at("2026-12-07 09:00")) is None  # open now


def test_the_next_opening_skips_a_holiday() -> None:
    # Thursday 2026-12-24 after hours; Christmas (Friday) is a holiday: back on Saturday 08:00.
    opening = hours("2026-12-25").next_opening(at("2026-12-24 19:30"))
    assert opening == datetime(2026, 12, 26, 8, 0, tzinfo=SAO_PAULO)
    # Early the same morning: later that day.
    assert hours().next_opening(at("2026-12-24 06:00")) == datetime(2026, 12, 24, 8, 0, tzinfo=SAO_PAULO)


def test_the_time_zone_is_honoured() -> None:
    # 10:30 UTC on a Monday is 07:30 in São Paulo (closed) and 10:30 in Lisbon (open): the same
    # instant is judged by each business's own clock.
    instant = at("2026-12-07 10:30", ZoneInfo("UTC"))
    assert hours().is_open(instant) is False
    assert hours(timezone="Europe/Lisbon").is_open(instant) is True
    assert hours().next_opening(instant) == datetime(2026, 12, 7, 8, 0, tzinfo=SAO_PAULO)


# The away message -------------------------------------------------------------------------------
def policy(language: str, clock: Clock, holidays: str = "") -> ReplyPolicy:
    path = SAMPLE_PT if language == "pt" else ROOT / "shared" / "data" / "kb-sample-en.yaml"
    kb = KbEngine(KnowledgeBase.load(path))
    return ReplyPolicy(kb, kb.kb.language, catalog=kb, hours=hours(holidays), clock=clock)


async def ask(reply_policy: ReplyPolicy, text: str) -> ReplyContent:
    return await reply_policy.reply(EngineRequest(text, "c-1"))


async def test_outside_hours_a_person_is_promised_at_the_next_opening_in_portuguese() -> None:
    clock = Clock(at("2026-12-05 13:00"))  # Saturday afternoon
    away = await ask(policy("pt", clock), "quero falar com um atendente")
    assert away.handoff and away.kind == "handoff"
    assert "segunda-feira, 07/12, às 08:00" in away.text and "fila" in away.text
    assert away.away_until == at("2026-12-07 08:00")
    clock.now = at("2026-12-24 19:30")  # Christmas Eve after hours, Christmas a holiday
    over_holiday = await ask(policy("pt", clock, holidays="2026-12-25"), "quero falar com um atendente")
    assert "sábado, 26/12, às 08:00" in over_holiday.text
    clock.now = at("2026-12-07 19:00")  # Monday evening: tomorrow
    assert "amanhã às 08:00" in (await ask(policy("pt", clock), "atendente")).text
    clock.now = at("2026-12-07 06:00")  # Monday early: today
    assert "hoje às 08:00" in (await ask(policy("pt", clock), "atendente")).text


async def test_outside_hours_a_person_is_promised_at_the_next_opening_in_english() -> None:
    clock = Clock(at("2026-12-05 13:00"))
    away = await ask(policy("en", clock), "I want to talk to a human")
    assert "on Monday, December 7, at 08:00" in away.text and away.away_until == at("2026-12-07 08:00")
    clock.now = at("2026-12-24 19:30")
    holiday = await ask(policy("en", clock, holidays="2026-12-25"), "human agent")
    assert "on Saturday, December 26, at 08:00" in holiday.text


async def test_an_escalation_outside_hours_is_an_away_message_too() -> None:
    reply_policy = policy("pt", Clock(at("2026-12-05 13:00")))
    fallback = await ask(reply_policy, "qual a capital da australia?")
    assert fallback.escalation is not None and fallback.escalation.away_until == at("2026-12-07 08:00")
    assert "segunda-feira" in fallback.escalation.text


async def test_inside_hours_a_handoff_as_always() -> None:
    handoff = await ask(policy("pt", Clock(at("2026-12-07 10:00"))), "quero falar com um atendente")
    assert handoff.handoff and handoff.away_until == 0.0
    assert handoff.text.startswith("Certo! Vou chamar um atendente humano")


# The commit: waits in the queue from the opening on, the bot silent meanwhile ---------------------
ANSWER = ReplyContent(text="Cinco dias.", engine="kb", confidence=0.9, sources=("prazo",))


async def test_an_away_handoff_waits_in_the_queue_until_hours_after_the_opening(redis: Redis) -> None:
    names = Names(f"t{uuid.uuid4().hex[:12]}", TEST_SHARDS)
    clock = Clock(at("2026-12-05 13:00"))
    committer = Committer(redis, names, clock=clock)
    handoffs = Handoffs(redis, names)
    try:
        away = await ask(policy("pt", clock), "quero falar com um atendente")
        (asked,) = await committer.commit_all([commit_of(message("c-away", "quero falar com um atendente"), away)])
        assert asked.reply.handoff and not asked.silenced
        info = await handoffs.get("c-away")
        assert info is not None and info.away_until == at("2026-12-07 08:00")
        # In the agents' queue from the opening on, and alive until HANDOFF_TTL_SECONDS after it:
        # asked for on a Saturday, it still waits for them on Monday.
        assert await redis.zscore(names.handoffs_key, "c-away") == at("2026-12-07 08:00")
        until_opening = at("2026-12-07 08:00") - clock.now
        assert await redis.ttl(names.handoff_key("c-away")) > until_opening + handoffs.ttl_s - 60
        # The conversation is the agents' already: what the customer writes meanwhile waits for them.
        (meanwhile,) = await committer.commit_all([commit_of(message("c-away"), ANSWER)])
        assert meanwhile.silenced
    finally:
        async for key in redis.scan_iter(match=f"{names.namespace}:*"):
            await redis.delete(key)


async def test_the_llm_path_generates_nothing_while_the_handoff_waits_for_the_opening(redis: Redis) -> None:
    """An engine that reads the memory learns first whether the conversation is handed to a person
    (and then generates nothing): also while the handoff waits for the next opening."""
    names = Names(f"t{uuid.uuid4().hex[:12]}", TEST_SHARDS)
    store, handoffs = WorkerStore(redis, names), Handoffs(redis, names)
    try:
        away = HandoffInfo(channel="web", user_id="ana", away_until=time.time() + 3600)
        await handoffs.start("c-away", away)
        assert await redis.ttl(names.handoff_key("c-away")) > 3600 + handoffs.ttl_s - 60
        state = await store.begin(message("c-away"), redelivered=False, with_history=True, with_offered=False)
        assert state.handed_off is True
    finally:
        async for key in redis.scan_iter(match=f"{names.namespace}:*"):
            await redis.delete(key)


# End to end: the services as deployed ----------------------------------------------------------
ADMIN = {"Authorization": "Bearer hours-test-admin-token"}


async def test_out_of_hours_end_to_end_until_an_agent_answers(
    stack: Stack, http: aiohttp.ClientSession, redis: Redis
) -> None:
    """Closed all day (today is a holiday): the away message names tomorrow's opening, the handoff
    is listed for the agents, the bot is silent meanwhile; an agent may answer before the opening."""
    today = datetime.now(SAO_PAULO).date().isoformat()
    closed = {"BUSINESS_HOURS": "mon-sun 00:00-24:00", "BUSINESS_HOLIDAYS": today}
    gateway = await stack.start("gateway")
    await stack.start("worker", **closed)
    monitor = await stack.start("monitor", ADMIN_TOKEN=ADMIN["Authorization"][7:], **closed)
    await wait_ready(stack)

    async def ask(text: str) -> tuple[int, dict[str, Any]]:
        return await post_message(http, gateway, {"user_id": "rui", "conversation_id": "away", "text": text}, wait=10)

    status, away = await ask("quero falar com um atendente")
    assert status == 200 and away["reply"]["handoff"] is True
    assert "amanhã às 00:00" in away["reply"]["text"] and "fila" in away["reply"]["text"]
    async with http.get(f"{monitor.url}/admin/api/overview", headers=ADMIN) as answer:
        overview = await answer.json()
    (listed,) = overview["handoffs"]
    assert listed["conversation_id"] == web_id("rui", "away") and listed["away_until"] is not None
    assert overview["business"]["open"] is False
    status, meanwhile = await post_message(
        http, gateway, {"user_id": "rui", "conversation_id": "away", "text": PRAZO}, wait=1
    )
    assert status == 202 and meanwhile["status"] == "queued"

    async def silenced() -> bool:
        log_key = Names(stack.namespace, TEST_SHARDS).conversation_log_key(web_id("rui", "away"))
        entries = [orjson.loads(raw) for raw in await redis.lrange(log_key, 0, -1)]
        return any(e.get("silenced") and e["text"] == PRAZO for e in entries)

    await eventually(silenced, what="the message written while nobody is there stored silenced, for the agents")

    reply = {"conversation_id": web_id("rui", "away"), "text": "Oi, sou a Ana, estou aqui."}

    async def monitor_publishes() -> bool:  # the agent's reply goes out through its RabbitMQ connection
        _, health = await get_json(http, f"{monitor.url}/monitoring/health")
        return bool(health.get("checks", {}).get("rabbitmq", {}).get("status") == "up")

    await eventually(monitor_publishes, what="the monitor connected to RabbitMQ")
    async with http.post(f"{monitor.url}/admin/api/handoffs/reply", json=reply, headers=ADMIN) as answer:
        assert answer.status == 200, await answer.text()
    async with http.get(f"{monitor.url}/admin/api/overview", headers=ADMIN) as answer:
        (taken,) = (await answer.json())["handoffs"]  # still in the queue, the agent's now
    assert taken["conversation_id"] == web_id("rui", "away") and taken["away_until"] is None
