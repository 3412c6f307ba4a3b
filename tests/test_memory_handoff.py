"""Conversation memory, `/reset`, and handing a conversation to a human (SPEC section 6).

End to end through gateway, RabbitMQ, worker and Redis with the knowledge-base engine; the commit
at the heart of the handoff rules (silence is decided atomically when a reply is committed) is also
driven directly against the real Redis, where the race it closes can be staged exactly.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from services.gateway.claims import GatewayStore
from services.worker.commit import SILENT_REPLY, CommitSettings, Committer
from services.worker.engines.base import EngineRequest
from services.worker.engines.kb import KbEngine, KnowledgeBase
from services.worker.engines.policy import ReplyPolicy, asks_for_human
from shared.handoff import HandoffInfo, Handoffs
from shared.messages import ReplyContent
from shared.names import Names
from tests.support import ROOT, SAMPLE_PT, TEST_SHARDS, Stack, eventually, post_message, web_id
from tests.support.commits import commit_of, message
from tests.support.pipeline import read_events, wait_ready

HUMAN = "quero falar com um atendente"
PRAZO = "Qual o prazo de entrega?"
OFF_TOPIC = ["qual a capital da australia?", "quem ganhou a copa de 2002?", "como faço bolo de cenoura"]


async def logged(redis: Redis, names: Names, conversation: str) -> list[dict[str, Any]]:
    return [orjson.loads(raw) for raw in await redis.lrange(names.conversation_log_key(conversation), 0, -1)]


async def memory(redis: Redis, names: Names, conversation: str) -> list[dict[str, str]]:
    return [orjson.loads(raw) for raw in await redis.lrange(names.memory_key(conversation), 0, -1)]


async def test_memory_reset_and_handoff_end_to_end(stack: Stack, http: aiohttp.ClientSession, redis: Redis) -> None:
    gateway = await stack.start("gateway")
    await stack.start("worker", MEMORY_TURNS="2", MEMORY_TTL_SECONDS="600", HANDOFF_AFTER_FALLBACKS="3")
    await wait_ready(stack)
    names = Names(stack.namespace, TEST_SHARDS)
    handoffs = Handoffs(redis, names)

    async def ask(conversation: str, text: str, wait: float = 10, **extra: str) -> tuple[int, dict[str, Any]]:
        body = {"user_id": "rui", "conversation_id": conversation, "text": text, **extra}
        return await post_message(http, gateway, body, wait=wait)

    # Memory: bounded to MEMORY_TURNS turns, with a TTL; `/reset` clears it and says so.
    chat = f"mem-{uuid.uuid4().hex}"
    for text in (PRAZO, "tem frete grátis?", "aceita pix?"):
        assert (await ask(chat, text))[0] == 200
    remembered = await memory(redis, names, web_id("rui", chat))
    assert [t["text"] for t in remembered if t["role"] == "user"] == ["tem frete grátis?", "aceita pix?"]
    assert 0 < await redis.ttl(names.memory_key(web_id("rui", chat))) <= 600
    status, reset = await ask(chat, "/reset")
    assert status == 200 and reset["reply"]["engine"] == "command"
    assert reset["reply"]["text"] == "Pronto! Esqueci nossa conversa até aqui. Como posso ajudar?"
    assert await memory(redis, names, web_id("rui", chat)) == []

    # Asking for a human: a reply saying a person will take over, and the handoff starts.
    human = f"human-{uuid.uuid4().hex}"
    connected = asyncio.Event()
    stream = asyncio.create_task(read_events(http, gateway, human, 2, connected, user_id="rui"))
    await asyncio.wait_for(connected.wait(), 10)
    status, asked = await ask(human, HUMAN)
    assert status == 200 and asked["reply"]["handoff"] is True and asked["reply"]["engine"] == "handoff"
    assert "atendente humano" in asked["reply"]["text"]
    info = await handoffs.get(web_id("rui", human))
    assert info is not None and info.reason == HUMAN and info.user_id == "rui" and info.channel == "web"

    # While a human has it, the bot does not answer: accepted (202), logged for the agent, never sent.
    status, silent = await ask(human, PRAZO, wait=1, message_id=f"{human}-silent")
    assert status == 202 and silent["status"] == "queued"

    async def silenced_in_log() -> bool:
        return any(e.get("silenced") and e["text"] == PRAZO for e in await logged(redis, names, web_id("rui", human)))

    await eventually(silenced_in_log, what="the silenced message in the conversation log")
    status, again = await ask(human, PRAZO, wait=0, message_id=f"{human}-silent")
    assert (status, again.get("duplicate")) == (202, True)

    # Released (the admin's button): the bot answers again. The stream got exactly the handoff
    # reply and this one: the silenced reply was never sent.
    assert await handoffs.release(web_id("rui", human))
    status, back = await ask(human, PRAZO)
    assert status == 200 and back["reply"]["engine"] == "kb" and back["reply"]["sources"] == ["prazo-entrega"]
    events = await asyncio.wait_for(stream, 10)
    assert [e["message_id"] for e in events] == [asked["message_id"], back["message_id"]]

    # Repeated fallbacks in a row (HANDOFF_AFTER_FALLBACKS=3) also hand the conversation over.
    lost = f"lost-{uuid.uuid4().hex}"
    replies = [(await ask(lost, text))[1]["reply"] for text in OFF_TOPIC]
    assert [r["handoff"] for r in replies] == [False, False, True]
    assert replies[0]["sources"] == [] and "atendente humano" in replies[2]["text"]
    assert await handoffs.active(web_id("rui", lost))
    assert (await ask(lost, PRAZO, wait=1))[0] == 202


ANSWER = ReplyContent(text="Cinco dias.", engine="kb", confidence=0.9, sources=("prazo",))
HANDOFF = ReplyContent(text="Um atendente vai continuar.", engine="handoff", confidence=1.0, handoff=True)


async def test_a_reply_committed_after_the_handoff_began_is_silenced(redis: Redis) -> None:
    """The worker generated a reply, then an agent took the conversation before the commit: the
    reply is stored silenced (never sent, not shown as the answer), logged for the agent, and it
    leaves the bot's memory alone. In one batch, a handoff also silences the replies after it."""
    names = Names(f"t{uuid.uuid4().hex[:12]}", TEST_SHARDS)
    store = GatewayStore(redis, names)
    committer = Committer(redis, names, settings=CommitSettings(handoff_ttl_s=1))
    try:
        taken = message("c-taken")
        await Handoffs(redis, names).start("c-taken", HandoffInfo(channel="web", user_id="ana"))
        (standing,) = await committer.commit_all([commit_of(taken, ANSWER)])
        assert standing.silenced and standing.reply == SILENT_REPLY  # the unsent text is kept nowhere
        assert await store.stored_reply(taken.message_id) is None
        assert await store.stored_reply(taken.message_id, silenced=True) == standing
        (entry,) = await logged(redis, names, "c-taken")
        assert entry["silenced"] is True and entry["text"] == PRAZO and entry["reply"]["text"] == ""
        assert await memory(redis, names, "c-taken") == []

        asking, following = message("c-batch", HUMAN), message("c-batch")
        first, second = await committer.commit_all([commit_of(asking, HANDOFF), commit_of(following, ANSWER)])
        assert (first.silenced, first.reply.handoff, second.silenced) == (False, True, True)
        assert await store.stored_reply(asking.message_id) == first
        # Listed for the admin area by the same atomic step that started it.
        assert await redis.zscore(names.handoffs_key, "c-batch") is not None

        # The handoff the worker started expires by itself (HANDOFF_TTL_SECONDS; 1 s here).
        handoffs = Handoffs(redis, names)
        assert await handoffs.active("c-batch")

        async def expired() -> bool:
            return not await handoffs.active("c-batch")

        await eventually(expired, timeout=5, what="the handoff to expire")
        (after,) = await committer.commit_all([commit_of(message("c-batch"), ANSWER)])
        assert not after.silenced
    finally:
        async for key in redis.scan_iter(match=f"{names.namespace}:*"):
            await redis.delete(key)


@pytest.mark.parametrize(
    ("text", "language"),
    [
        (HUMAN, "pt"),
        ("Quero falar com um ATENDENTE!", "pt"),
        ("me passa pra um humano por favor", "pt"),
        ("tem como falar com uma pessoa de verdade?", "pt"),
        ("preciso falar com alguém", "pt"),
        ("atendente", "pt"),
        ("human agent", "pt"),
        ("I want to talk to a human", "en"),
        ("can I speak to someone?", "en"),
        ("connect me to a representative", "en"),
        ("agent please", "en"),
    ],
)
def test_requests_for_a_human_are_recognised(text: str, language: str) -> None:
    assert asks_for_human(text, language)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("qual o horário do atendimento?", "pt"),
        ("quero saber se a pessoa que recebe precisa de documento", "pt"),
        ("o atendente me disse que o prazo era 5 dias", "pt"),
        ("vcs atendem no sabado?", "pt"),
        ("what are your support hours?", "en"),
        ("can someone else receive my order?", "en"),
        ("how many people can use the wifi", "en"),
    ],
)
def test_questions_that_mention_people_are_not_requests_for_one(text: str, language: str) -> None:
    assert not asks_for_human(text, language)  # type: ignore[arg-type]


async def test_the_policy_answers_in_the_base_language() -> None:
    english_kb = KbEngine(KnowledgeBase.load(ROOT / "shared" / "data" / "kb-sample-en.yaml"))
    english = ReplyPolicy(english_kb, "en", catalog=english_kb)
    handoff = await english.reply(_request("I want to talk to a human"))
    assert handoff.handoff and handoff.text.startswith("Sure! I am calling a human agent")
    assert (await english.reply(_request("/reset"))).reset
    portuguese_kb = KbEngine(KnowledgeBase.load(SAMPLE_PT))
    portuguese = ReplyPolicy(portuguese_kb, "pt", catalog=portuguese_kb)
    fallback = await portuguese.reply(_request(OFF_TOPIC[0]))
    assert fallback.fallback and fallback.escalation is not None and fallback.escalation.handoff
    answer = await portuguese.reply(_request(PRAZO))
    assert answer.sources == ("prazo-entrega",) and answer.escalation is None


def _request(text: str) -> EngineRequest:
    return EngineRequest(text, "c-1")


async def test_a_handoff_an_agent_renews_stays_listed_past_its_first_expiry(redis: Redis) -> None:
    """An agent's reply renews the handoff (`Handoffs.start` again): its place in the agents' queue,
    which the listing prunes by, moves with the expiry; it does not drop out of the inbox while the
    bot stays silent."""
    names = Names(f"t{uuid.uuid4().hex[:12]}", TEST_SHARDS)
    handoffs = Handoffs(redis, names, ttl_s=600)
    try:
        asked_long_ago = HandoffInfo(channel="web", user_id="ana", started_at=time.time() - 3600)
        await handoffs.start("c-renewed", asked_long_ago)  # as an agent's reply does, an hour on
        page = await handoffs.page(0, 10)
        assert list(page.items) == ["c-renewed"] and page.total == 1
        assert 590 < await redis.ttl(names.handoff_key("c-renewed")) <= 600
    finally:
        async for key in redis.scan_iter(match=f"{names.namespace}:*"):
            await redis.delete(key)
