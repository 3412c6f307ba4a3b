"""Options offered with a reply, and choosing one (SPEC section 6): the options live in the
conversation's state in Redis, written with the reply's commit and read only for a message that
may be a choice; the reply policy resolves the choice.

The policy is driven directly with a stand-in engine that asks back (a question back is
deterministic that way, whatever the knowledge-base engine decides), the commit and the worker's
first read against the real Redis, and the whole path end to end through gateway, RabbitMQ, worker
and Redis. The gateway does not take `option` yet: such messages are published on the broker as a
gateway would.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aio_pika
import aiohttp
import pytest
from redis.asyncio import Redis

from services.worker.commit import Commit, CommitSettings, Committer
from services.worker.engines.base import EngineRequest
from services.worker.engines.kb import KbEngine, KnowledgeBase
from services.worker.engines.policy import ReplyPolicy
from services.worker.engines.text import Language
from services.worker.state import OFFERED_TTL_SECONDS, Offered, WorkerStore
from shared.messages import HANDOFF_OPTION, InboundMessage, Option, ReplyContent
from shared.names import Names
from tests.support import (
    AMQP_URL,
    ROOT,
    SAMPLE_PT,
    TEST_SHARDS,
    Stack,
    eventually,
    post_message,
    stored_reply,
    web_id,
)
from tests.support.commits import commit_of, message
from tests.support.pipeline import wait_ready, worker_in_process
from tests.support.redis_monitor import monitoring

CATALOG = KbEngine(KnowledgeBase.load(SAMPLE_PT))
ENGLISH = KbEngine(KnowledgeBase.load(ROOT / "shared" / "data" / "kb-sample-en.yaml"))
AMBIGUOUS = "e a entrega?"
OFF_TOPIC = "qual a capital da australia?"
PAYMENT = "Quais as formas de pagamento?"  # answered with two buttons of its own


def candidate(catalog: KbEngine, entry_id: str) -> Option:
    return next(Option(e.id, e.label) for e in catalog.kb.entries if e.id == entry_id)


PRAZO, FRETE = candidate(CATALOG, "prazo-entrega"), candidate(CATALOG, "frete")
HANDOFF = Option(HANDOFF_OPTION, "Falar com atendente")


class AskingBack:
    """An engine that asks back on AMBIGUOUS (the candidates and no text, as the knowledge-base
    engine will) and answers anything else from the base; it records what reached it."""

    name = "kb"
    uses_history = False

    def __init__(self, catalog: KbEngine, candidates: tuple[Option, ...]) -> None:
        self.catalog = catalog
        self.candidates = candidates
        self.texts: list[str] = []

    async def reply(self, request: EngineRequest) -> ReplyContent:
        self.texts.append(request.text)
        if request.text == AMBIGUOUS:
            return ReplyContent(text="", engine=self.name, confidence=0.4, kind="clarify", options=self.candidates)
        return await self.catalog.reply(request)

    async def close(self) -> None:
        return None


def policy(catalog: KbEngine = CATALOG, language: Language = "pt") -> tuple[ReplyPolicy, AskingBack]:
    engine = AskingBack(catalog, (PRAZO, FRETE) if catalog is CATALOG else (candidate(catalog, "plans"),))
    return ReplyPolicy(engine, language, catalog=catalog), engine


def request(text: str, option: str = "", offered: tuple[Option, ...] = (), offered_for: str = "") -> EngineRequest:
    return EngineRequest(text, "c-1", option=option, offered=offered, offered_for=offered_for)


OFFERED = (PRAZO, FRETE, HANDOFF)


# The reply policy -------------------------------------------------------------------------------
async def test_a_question_back_lists_its_options_numbered_with_a_person_last() -> None:
    portuguese, _ = policy()
    asked = await portuguese.reply(request(AMBIGUOUS))
    assert asked.kind == "clarify" and asked.options == OFFERED and asked.sources == ()
    assert asked.text == (
        "Não tenho certeza se entendi. Você quis dizer:\n1. Qual o prazo de entrega?\n2. Quanto custa o frete?\n"
        "3. Falar com atendente\nToque numa opção ou responda com o número."
    )
    assert asked.escalation is None  # not a failure: it never escalates
    english, _ = policy(ENGLISH, "en")
    asked = await english.reply(request(AMBIGUOUS))
    assert asked.options[-1] == Option(HANDOFF_OPTION, "Talk to an agent")
    assert asked.text.startswith("I am not sure I understood. Did you mean:\n1. ")
    assert asked.text.endswith("\n2. Talk to an agent\nTap an option or reply with its number.")


@pytest.mark.parametrize(
    ("text", "option"),
    [
        ("Quanto custa o frete?", "frete"),  # a tap: the option's id, its label as text
        ("2", ""),
        (" 2. ", ""),
        ("quanto custa o FRETE", ""),  # the label, however it is written
    ],
)
async def test_choosing_an_entry_offered_answers_it(text: str, option: str) -> None:
    chooser, engine = policy()
    chosen = await chooser.reply(request(text, option, OFFERED, offered_for=AMBIGUOUS))
    assert (chosen.kind, chosen.sources, chosen.confidence) == ("answer", ("frete",), 1.0)
    assert chosen.text == CATALOG.entry_reply("frete").text  # type: ignore[union-attr]
    assert chosen.resolves == AMBIGUOUS and not chosen.handoff
    assert engine.texts == []  # resolved by the policy, not guessed by the engine


@pytest.mark.parametrize(("text", "option"), [("Falar com atendente", HANDOFF_OPTION), ("3", "")])
async def test_choosing_the_person_hands_over(text: str, option: str) -> None:
    chooser, _ = policy()
    chosen = await chooser.reply(request(text, option, OFFERED))
    assert (chosen.kind, chosen.handoff, chosen.engine) == ("handoff", True, "handoff")


async def test_an_entrys_own_button_is_answered_as_its_label_typed() -> None:
    chooser, engine = policy()
    buttons = (Option.button("Posso parcelar?"), Option.button("Boleto vencido"))
    for text, option in (("Posso parcelar?", "Posso parcelar?"), ("1", "")):
        engine.texts.clear()
        chosen = await chooser.reply(request(text, option, buttons))
        assert chosen.sources == ("parcelamento",) and chosen.resolves == ""
        assert engine.texts == ["Posso parcelar?"]


async def test_an_option_not_offered_gets_please_choose_again_never_an_answer() -> None:
    chooser, engine = policy()
    # Forged (never offered) while options are in force: those options again, for the same question.
    forged = await chooser.reply(request("Cancelamento", "cancelamento", OFFERED, offered_for=AMBIGUOUS))
    assert (forged.kind, forged.sources, forged.options, forged.question) == ("clarify", (), OFFERED, AMBIGUOUS)
    assert forged.text.startswith("Essa opção não está mais disponível. Por favor, escolha de novo:\n1. Qual o prazo")
    # Stale (expired, or the conversation moved on): nothing offered any more.
    stale = await chooser.reply(request("Quanto custa o frete?", "frete"))
    assert (stale.kind, stale.sources, stale.options) == ("clarify", (), (HANDOFF,))
    assert stale.text == "Essa opção não está mais disponível. Por favor, escreva sua pergunta."
    assert engine.texts == []
    english, _ = policy(ENGLISH, "en")
    assert (await english.reply(request("x", "plans"))).text.startswith("That option is no longer available.")
    # Asking for a person is never out of date.
    assert (await chooser.reply(request("Falar com atendente", HANDOFF_OPTION))).handoff


async def test_a_number_or_label_naming_nothing_offered_is_an_ordinary_message() -> None:
    chooser, engine = policy()
    assert (await chooser.reply(request("5", "", OFFERED))).kind != "answer"
    assert (await chooser.reply(request("Qual o prazo de entrega?"))).sources == ("prazo-entrega",)
    assert engine.texts == ["5", "Qual o prazo de entrega?"]


@pytest.mark.parametrize(
    ("text", "may_be"),
    [
        ("2", True),
        (" 9. ", True),
        ("Falar com atendente", True),
        ("posso parcelar", True),  # a button's label
        ("QUAL o prazo de entrega", True),  # an entry's label
        ("0", False),
        ("10", False),
        ("Qual o prazo de entrega? Moro longe", False),
        ("oi", False),
    ],
)
def test_which_texts_may_be_a_choice(text: str, may_be: bool) -> None:
    assert policy()[0].may_be_choice(text) is may_be


# The commit and the first read, against the real Redis -----------------------------------------
@pytest.fixture
async def names(redis: Redis) -> AsyncIterator[Names]:
    names = Names(f"t{uuid.uuid4().hex[:12]}", TEST_SHARDS)
    try:
        yield names
    finally:
        async for key in redis.scan_iter(match=f"{names.namespace}:*"):
            await redis.delete(key)


def clarify(options: tuple[Option, ...] = OFFERED, question: str = "") -> ReplyContent:
    return ReplyContent(text="?", engine="kb", confidence=0.4, kind="clarify", options=options, question=question)


async def test_the_commit_keeps_the_options_of_the_last_reply_only(redis: Redis, names: Names) -> None:
    store, committer = WorkerStore(redis, names), Committer(redis, names)
    key = names.offered_key("c-1")

    async def offered(text: str) -> Offered:
        state = await store.begin(message("c-1", text), redelivered=False, with_history=False, with_offered=True)
        return state.offered

    await committer.commit_all([commit_of(message("c-1", AMBIGUOUS), clarify())])
    assert await offered("2") == Offered(OFFERED, AMBIGUOUS)
    assert 0 < await redis.ttl(key) <= OFFERED_TTL_SECONDS
    # Offered again after a stale choice: still for the question that led to them.
    await committer.commit_all([commit_of(message("c-1", "cancelamento"), clarify(question=AMBIGUOUS))])
    assert await offered("2") == Offered(OFFERED, AMBIGUOUS)
    # A merged message's effects belong to the reply it was merged into: nothing changes.
    merged = commit_of(message("c-1", "x"), ReplyContent(text="ok", engine="kb", confidence=0.9))
    await committer.commit_all([replace(merged, reply=replace(merged.reply, merged_into="m-other"))])
    assert await offered("2") == Offered(OFFERED, AMBIGUOUS)
    # A reply without options: nothing may be chosen any more.
    answer = ReplyContent(text="Cinco dias.", engine="kb", confidence=0.9, sources=("prazo-entrega",))
    await committer.commit_all([commit_of(message("c-1", "Qual o prazo?"), answer)])
    assert not await redis.exists(key)
    assert await offered("2") == Offered()


async def test_a_question_back_neither_counts_as_a_fallback_nor_ends_the_streak(redis: Redis, names: Names) -> None:
    committer = Committer(redis, names, settings=CommitSettings(handoff_after_fallbacks=2))
    escalation = ReplyContent(text="Um atendente.", engine="handoff", confidence=0.1, handoff=True, kind="handoff")
    fallback = ReplyContent(
        text="Não sei.", engine="kb", confidence=0.1, fallback=True, kind="fallback", options=(HANDOFF,)
    )

    def failing(text: str) -> Commit:
        item = commit_of(message("c-2", text), fallback)
        return replace(item, escalation=replace(item.reply, reply=escalation))

    (first,) = await committer.commit_all([failing(OFF_TOPIC)])
    (asked,) = await committer.commit_all([commit_of(message("c-2", AMBIGUOUS), clarify())])
    assert not first.reply.handoff and not asked.reply.handoff
    assert await redis.get(names.fallback_streak_key("c-2")) == "1"
    (second,) = await committer.commit_all([failing(OFF_TOPIC)])
    assert second.reply.handoff  # the second fallback in a row, the question back between them aside
    assert not await redis.exists(names.offered_key("c-2"))  # the hand-over offers nothing


async def test_the_first_read_reads_nothing_unless_asked(redis: Redis, names: Names) -> None:
    store = WorkerStore(redis, names)
    await redis.set(names.offered_key("c-3"), Offered(OFFERED, AMBIGUOUS).to_bytes())
    plain = await store.begin(message("c-3"), redelivered=False, with_history=False, with_offered=False)
    assert plain.offered == Offered() and plain.attempt == 1 and plain.stored_reply is None
    both = await store.begin(message("c-3"), redelivered=True, with_history=True, with_offered=True)
    assert both.offered == Offered(OFFERED, AMBIGUOUS) and both.attempt == 1 and both.history == []


# End to end -------------------------------------------------------------------------------------
async def publish_choice(namespace: str, conversation: str, user_id: str, option: str, text: str) -> str:
    """Queue a message choosing `option` as a gateway would (the gateway's API does not take it yet)."""
    names = Names(namespace, TEST_SHARDS)
    chosen = InboundMessage(f"choice-{uuid.uuid4().hex}", conversation, user_id, text, option=option)
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        exchange = await channel.get_exchange(names.inbound_exchange)
        body = aio_pika.Message(chosen.to_bytes(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await exchange.publish(body, str(names.shard_of(conversation)))
    finally:
        await connection.close()
    return chosen.message_id


async def reply_to(namespace: str, message_id: str) -> dict[str, Any]:
    async def stored() -> dict[str, Any] | None:
        return await stored_reply(namespace, message_id)

    return dict((await eventually(stored, what=f"the reply to {message_id}"))["reply"])


async def test_offered_options_are_chosen_end_to_end(stack: Stack, http: aiohttp.ClientSession, redis: Redis) -> None:
    gateway = await stack.start("gateway")
    await stack.start("worker")
    await wait_ready(stack)
    names = Names(stack.namespace, TEST_SHARDS)

    async def ask(chat: str, text: str) -> dict[str, Any]:
        status, body = await post_message(http, gateway, {"user_id": "bia", "conversation_id": chat, "text": text}, 10)
        assert status == 200, body
        return dict(body["reply"])

    async def choose(chat: str, option: str, text: str) -> dict[str, Any]:
        return await reply_to(
            stack.namespace, await publish_choice(stack.namespace, web_id("bia", chat), "bia", option, text)
        )

    # (a) The base's fallback offers a person; the state has a TTL; choosing `handoff` hands over.
    lost = f"lost-{uuid.uuid4().hex}"
    fallback = await ask(lost, OFF_TOPIC)
    assert fallback["kind"] == "fallback" and fallback["options"] == [HANDOFF.to_dict()]
    assert 0 < await redis.ttl(names.offered_key(web_id("bia", lost))) <= OFFERED_TTL_SECONDS
    handed = await choose(lost, HANDOFF_OPTION, HANDOFF.label)
    assert (handed["kind"], handed["handoff"]) == ("handoff", True)

    # (b) An answer's own buttons: typing "1" answers the first as if its label were typed. (e) The
    # plain question read nothing from Redis before its answer; the "1" read the options offered.
    pay = f"pay-{uuid.uuid4().hex}"
    offered_key, memory_key = names.offered_key(web_id("bia", pay)), names.memory_key(web_id("bia", pay))
    async with monitoring(stack.namespace) as commands:
        paid = await ask(pay, PAYMENT)
        first = await ask(pay, "1")

        async def chosen_read() -> bool:
            return bool(commands.reads_of(offered_key))

        # MONITOR streams commands in order: once the "1"'s read is in, the question's would be too.
        await eventually(chosen_read, timeout=5, what="the read of the options offered")
        assert len(commands.reads_of(offered_key)) == 1 and commands.reads_of(memory_key) == []
    assert [o["id"] for o in paid["options"]] == ["Posso parcelar?", "Boleto vencido"]
    assert first["sources"] == ["parcelamento"] and first["kind"] == "answer"

    # (c) Stale: the last reply offered nothing, or the state expired; forged: never offered.
    # Each gets "please choose again", never an entry's answer.
    assert not await redis.exists(offered_key)
    stale = await choose(pay, "Boleto vencido", "Boleto vencido")
    assert (stale["kind"], stale["sources"], stale["options"]) == ("clarify", [], [HANDOFF.to_dict()])
    assert stale["text"] == "Essa opção não está mais disponível. Por favor, escreva sua pergunta."
    await ask(pay, PAYMENT)
    await redis.delete(offered_key)  # as when its TTL runs out
    expired = await choose(pay, "Posso parcelar?", "Posso parcelar?")
    assert (expired["kind"], expired["sources"]) == ("clarify", [])
    await ask(pay, PAYMENT)
    forged = await choose(pay, "prazo-entrega", "Qual o prazo de entrega?")
    assert (forged["kind"], forged["sources"]) == ("clarify", [])
    assert [o["id"] for o in forged["options"]] == ["Posso parcelar?", "Boleto vencido"]
    assert forged["text"].startswith("Essa opção não está mais disponível. Por favor, escolha de novo:\n1. Posso")


@pytest.fixture
async def asking_worker(stack: Stack) -> AsyncIterator[AskingBack]:
    """The real worker in this process, its engine asking back on AMBIGUOUS."""
    chooser, engine = policy()
    async with worker_in_process(stack.env(), chooser):
        yield engine


async def test_a_question_back_is_answered_by_number_or_label_end_to_end(
    stack: Stack, asking_worker: AskingBack, http: aiohttp.ClientSession, redis: Redis
) -> None:
    gateway = await stack.start("gateway")
    await wait_ready(stack)
    names = Names(stack.namespace, TEST_SHARDS)
    chat = f"ask-{uuid.uuid4().hex}"

    async def ask(text: str) -> dict[str, Any]:
        status, body = await post_message(http, gateway, {"user_id": "caio", "conversation_id": chat, "text": text}, 10)
        assert status == 200, body
        return dict(body["reply"])

    asked = await ask(AMBIGUOUS)
    assert asked["kind"] == "clarify" and [o["id"] for o in asked["options"]] == ["prazo-entrega", "frete", "handoff"]
    assert "\n2. Quanto custa o frete?\n" in asked["text"]
    state = await redis.get(names.offered_key(web_id("caio", chat)))
    assert state is not None and Offered.from_bytes(state) == Offered(OFFERED, AMBIGUOUS)
    by_number = await ask("2")
    assert (by_number["kind"], by_number["sources"], by_number["confidence"]) == ("answer", ["frete"], 1.0)
    await ask(AMBIGUOUS)
    by_label = await ask("qual o prazo de entrega")
    assert (by_label["sources"], by_label["confidence"]) == (["prazo-entrega"], 1.0)
    assert asking_worker.texts == [AMBIGUOUS, AMBIGUOUS]  # the choices never reached the engine
