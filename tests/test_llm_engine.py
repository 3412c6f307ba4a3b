"""The LLM engine (REPLY_ENGINE=openai, SPEC section 6) against a local OpenAI-compatible server.

`FakeLlm` (tests/support/fake_llm.py) is a small aiohttp app speaking the `/v1/chat/completions`
wire format; the project's real client (services/worker/engines/openai.py) calls it, in the worker
process for the end-to-end test and in this process for the failure cases, where the time a reply
takes is what is checked.
"""

from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import replace
from typing import Any

import aiohttp
import orjson
import pytest

from services.worker.engines.base import Document, EngineRequest, Turn
from services.worker.engines.kb import KbEngine, KnowledgeBase
from services.worker.engines.openai import (
    DEFAULT_SYSTEM_PROMPT,
    GROUNDING_HEADER,
    NO_GROUNDING,
    REPLY_FORMAT,
    CircuitBreaker,
    OpenAiConfig,
    OpenAiEngine,
    _answer_so_far,
    _grounding_text,
)
from shared.messages import Option, ReplyContent
from shared.settings import Settings
from tests.support import PRAZO, SAMPLE_PT, Stack, eventually, free_port, get_json, post_message
from tests.support.fake_llm import LLM_TEXT, Completion, FakeLlm, candidates, says
from tests.support.metrics import scrape, value
from tests.support.pipeline import wait_ready


@pytest.fixture(scope="module")
def kb() -> KbEngine:
    return KbEngine(KnowledgeBase.load(SAMPLE_PT))


def user_turns(request: dict[str, Any]) -> list[tuple[str, str]]:
    """(role, content) of the conversation in a recorded request, system messages left out."""
    return [(m["role"], m["content"]) for m in request["body"]["messages"] if m["role"] != "system"]


# -- end to end: gateway, RabbitMQ, the worker's engine, Redis memory -------------------------


async def test_the_request_carries_the_prompt_the_grounding_and_the_previous_turn(
    stack: Stack, http: aiohttp.ClientSession, llm: FakeLlm
) -> None:
    gateway = await stack.start("gateway")
    worker = await stack.start(
        "worker",
        REPLY_ENGINE="openai",
        OPENAI_BASE_URL=llm.url,
        OPENAI_API_KEY="sk-test",
        OPENAI_MODEL="tiny",
        OPENAI_TIMEOUT_SECONDS="2",
    )
    monitor = await stack.start("monitor")
    await wait_ready(stack)
    conversation = f"llm-{uuid.uuid4().hex}"

    async def ask(text: str) -> dict[str, Any]:
        status, body = await post_message(
            http, gateway, {"user_id": "lia", "conversation_id": conversation, "text": text}, wait=10
        )
        assert status == 200, body
        return body

    first = await ask(PRAZO)
    assert first["reply"] == {
        "text": LLM_TEXT,
        "engine": "openai",
        "confidence": first["reply"]["confidence"],
        "handoff": False,
        "sources": ["prazo-entrega"],
        "kind": "answer",
        "options": [],
    }
    sent = llm.requests[0]
    assert sent["authorization"] == "Bearer sk-test" and sent["body"]["model"] == "tiny"
    assert sent["body"]["response_format"] == {"type": "json_object"}
    system = [m["content"] for m in sent["body"]["messages"] if m["role"] == "system"]
    assert system[0] == DEFAULT_SYSTEM_PROMPT and system[1].endswith(REPLY_FORMAT)
    # The candidates, each with its id, title, questions, answer and score; the cited one among them.
    entry = {e.id: e for e in KnowledgeBase.load(SAMPLE_PT).entries}["prazo-entrega"]
    given = {candidate["id"]: candidate for candidate in candidates(sent["body"])}
    assert given["prazo-entrega"] == {
        "id": entry.id,
        "title": entry.label,
        "questions": list(entry.questions),
        "answer": entry.answer,
        "score": given["prazo-entrega"]["score"],
    }
    assert abs(first["reply"]["confidence"] - given["prazo-entrega"]["score"]) < 0.01
    assert user_turns(sent) == [("user", PRAZO)]

    await ask("e pro interior?")
    assert user_turns(llm.requests[1]) == [("user", PRAZO), ("assistant", LLM_TEXT), ("user", "e pro interior?")]

    reset = await ask("/reset")
    assert reset["reply"]["engine"] == "command" and "Esqueci nossa conversa" in reset["reply"]["text"]
    assert len(llm.requests) == 2  # the command is the worker's, not the model's
    await ask("tem frete grátis?")
    assert user_turns(llm.requests[2]) == [("user", "tem frete grátis?")]

    # Token usage is counted in the stats (3 LLM replies of 42 + 7 tokens).
    async def tokens_counted() -> bool:
        _, stats = await get_json(http, monitor.url + "/monitoring/stats")
        return bool(stats["tokens_24h"] == {"prompt": 126, "completion": 21})

    await eventually(tokens_counted, timeout=5, what="the tokens in /monitoring/stats")
    # And in the worker's Prometheus metrics, with one completion latency per LLM reply.
    _, samples = await scrape(http, worker)
    assert value(samples, "atendimento_llm_tokens_total", kind="prompt") == 126
    assert value(samples, "atendimento_llm_tokens_total", kind="completion") == 21
    assert value(samples, "atendimento_llm_request_duration_seconds_count") == 3
    assert value(samples, "atendimento_replies_total", engine="openai", channel="web") == 3

    # A provider that hangs past OPENAI_TIMEOUT_SECONDS: the knowledge base answers instead.
    llm.script.append("hang")
    fallback = await ask(PRAZO)
    assert fallback["reply"]["engine"] == "kb-fallback" and fallback["reply"]["sources"] == ["prazo-entrega"]


def test_the_system_prompt_and_limits_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {"OPENAI_SYSTEM_PROMPT": "You are Ana, of ACME.", "OPENAI_TIMEOUT_SECONDS": "7.5", "OPENAI_MAX_RETRIES": "0"}
    )
    config = OpenAiConfig.from_settings(settings)
    assert (config.system_prompt, config.timeout_s, config.max_retries) == ("You are Ana, of ACME.", 7.5, 0)
    assert OpenAiConfig.from_settings(Settings.from_env({})).system_prompt == DEFAULT_SYSTEM_PROMPT


# -- failures: always a reply, within OPENAI_TIMEOUT_SECONDS ----------------------------------

TIMEOUT_S = 2.0
# Scheduling slack on a loaded test machine: the bound is the configured timeout, not this.
SLACK_S = 1.0


def engine_for(url: str, kb: KbEngine, **overrides: Any) -> OpenAiEngine:
    config = OpenAiConfig(base_url=url, model="tiny", timeout_s=TIMEOUT_S, connect_timeout_s=0.5, max_retries=2)
    return OpenAiEngine(replace(config, **overrides), kb)


async def timed_reply(engine: OpenAiEngine, text: str = PRAZO) -> tuple[str, float]:
    started = time.monotonic()
    content = await engine.reply(EngineRequest(text, "c-1", (Turn("user", "oi"), Turn("assistant", "Olá!"))))
    assert content.text
    return content.engine, time.monotonic() - started


@pytest.mark.parametrize(
    ("script", "engine_name", "calls"),
    [
        ([500], "openai", 2),  # retried, then answered
        ([503, 502, 500], "kb-fallback", 3),  # every retry failed
        ([("429", 1)], "openai", 2),  # retried after Retry-After
        ([("429", 30)], "kb-fallback", 1),  # Retry-After past the time limit: no point waiting
        (["hang"], "kb-fallback", 1),  # no answer within the time limit
        ([400], "kb-fallback", 1),  # not retriable
    ],
)
async def test_a_failing_provider_still_gets_a_reply_within_the_bound(
    llm: FakeLlm, kb: KbEngine, script: list[Any], engine_name: str, calls: int
) -> None:
    llm.script.extend(script)
    engine = engine_for(llm.url, kb)
    try:
        name, elapsed = await timed_reply(engine)
    finally:
        await engine.close()
    assert name == engine_name
    assert len(llm.requests) == calls
    assert elapsed < TIMEOUT_S + SLACK_S
    if script[0] == ("429", 1):
        assert llm.arrivals[1] - llm.arrivals[0] >= 1.0  # Retry-After was honoured


async def test_a_refused_connection_falls_back_to_the_knowledge_base(kb: KbEngine) -> None:
    engine = engine_for(f"http://127.0.0.1:{free_port()}/v1", kb)
    try:
        name, elapsed = await timed_reply(engine)
    finally:
        await engine.close()
    assert name == "kb-fallback"
    assert elapsed < TIMEOUT_S + SLACK_S


async def test_with_the_circuit_open_the_knowledge_base_answers_without_waiting(llm: FakeLlm, kb: KbEngine) -> None:
    engine = engine_for(llm.url, kb, max_retries=0, timeout_s=1.0, breaker_failures=2, breaker_cooldown_s=1.0)
    try:
        llm.script.extend(["hang", "hang"])
        for _ in range(2):
            assert (await timed_reply(engine))[0] == "kb-fallback"
        assert engine.breaker.state == "open" and len(llm.requests) == 2

        name, elapsed = await timed_reply(engine)
        assert name == "kb-fallback" and len(llm.requests) == 2  # the provider was not called
        assert elapsed < 0.5  # far under the 1 s a call to the hanging provider would cost

        # After the cool-down one trial call goes through; the provider is back, the circuit closes.
        async def back() -> bool:
            return (await timed_reply(engine))[0] == "openai"

        await eventually(back, timeout=5, interval=0.2, what="the trial call after the cool-down")
        assert engine.breaker.state == "closed" and len(llm.requests) == 3
    finally:
        await engine.close()


def test_the_circuit_breaker_opens_lets_one_trial_through_and_closes() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failures=2, cooldown_s=10.0, clock=lambda: now[0])
    breaker.failed()
    assert breaker.state == "closed" and breaker.allow()
    breaker.failed()
    assert breaker.state == "open" and not breaker.allow()
    now[0] = 10.0
    assert breaker.state == "half-open"
    assert breaker.allow() and not breaker.allow()  # one trial at a time
    breaker.abandoned()  # the trial was cancelled: the next call may try
    assert breaker.allow()
    breaker.failed()  # the trial failed: open for another cool-down
    assert breaker.state == "open" and not breaker.allow()
    now[0] = 20.0
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.state == "closed" and breaker.allow() and breaker.allow()


def test_the_candidates_carry_id_title_questions_answer_and_score(kb: KbEngine) -> None:
    grounding = kb.search("quanto custa o frete e qual o prazo de entrega", limit=3)
    text = _grounding_text(grounding)
    assert text.startswith(GROUNDING_HEADER)
    listed = orjson.loads(text.removeprefix(GROUNDING_HEADER))
    assert listed == [
        {
            "id": entry.id,
            "title": entry.label,
            "questions": list(entry.questions),
            "answer": entry.answer,
            "score": round(score, 2),
        }
        for entry, score in grounding
    ]
    assert {"frete", "prazo-entrega"} <= {candidate["id"] for candidate in listed}
    assert _grounding_text([]) == NO_GROUNDING


# -- what the model says: the three kinds of SPEC section 6, read as untrusted ----------------


async def model_says(
    llm: FakeLlm,
    kb: KbEngine,
    step: Any,
    text: str = PRAZO,
    *,
    history: tuple[Turn, ...] = (),
    documents: tuple[Document, ...] = (),
    **overrides: Any,
) -> ReplyContent:
    """The engine's reply to `text` (in a conversation of `history`, with `documents` sent) when
    the model's output is `step` (a Completion)."""
    llm.script.append(step)
    engine = engine_for(llm.url, kb, **overrides)
    try:
        return await engine.reply(EngineRequest(text, "c-1", history=history, documents=documents))
    finally:
        await engine.close()


async def test_an_answer_keeps_only_the_sources_that_were_among_the_candidates(llm: FakeLlm, kb: KbEngine) -> None:
    said = "O frete é grátis acima de R$ 299 e a entrega leva até 5 dias úteis."
    # Cited by id, by title (as models do), and an id never given.
    cited = ["frete", "Qual o prazo de entrega?", "inventada"]
    content = await model_says(llm, kb, says("answer", said, sources=cited), "quanto custa o frete e qual o prazo?")
    assert (content.kind, content.text, content.engine) == ("answer", said, "openai")
    assert content.sources == ("frete", "prazo-entrega")
    assert content.options == () and not content.fallback
    assert content.usage is not None and content.usage.prompt_tokens == 42


async def test_an_answer_from_an_entry_with_buttons_offers_them(llm: FakeLlm, kb: KbEngine) -> None:
    """SPEC 4 and 6: an entry's own buttons are options of the reply that answers from it, whichever
    engine wrote the text (the knowledge base's answer carries them); at most 3, each its label as id."""
    said = "Aceitamos Pix, boleto e cartões de crédito."
    asked = "Quais as formas de pagamento?"
    content = await model_says(llm, kb, says("answer", said, sources=["formas-pagamento"]), asked)
    assert (content.kind, content.sources) == ("answer", ("formas-pagamento",))
    assert content.options == (Option.button("Posso parcelar?"), Option.button("Boleto vencido"))
    # Several sources: their buttons in the order cited, each once.
    content = await model_says(llm, kb, says("answer", said, sources=["frete", "formas-pagamento"]), asked)
    assert content.options == (Option.button("Posso parcelar?"), Option.button("Boleto vencido"))


async def test_an_answer_resting_only_on_invented_entries_is_the_bases_fallback(llm: FakeLlm, kb: KbEngine) -> None:
    invented = says("answer", "Entregamos em 2 horas por drone.", sources=["entrega-por-drone"])
    content = await model_says(llm, kb, invented)
    assert (content.kind, content.text, content.sources) == ("fallback", kb.kb.fallback, ())
    assert content.fallback and content.engine == "openai" and content.confidence <= 0.25


async def test_an_answer_citing_no_entry_is_kept_without_sources(llm: FakeLlm, kb: KbEngine) -> None:
    """What the customer's own document, or the conversation, says cites no entry (module docstring)."""
    said = "Pelo documento que você enviou, o total da fatura é R$ 123,45."
    invoice = (Document("fatura.pdf", "Fatura 0042. Total: R$ 123,45."),)
    asked = "o total da minha fatura está certo?"  # no entry of the base is close to it
    content = await model_says(llm, kb, says("answer", said), asked, documents=invoice)
    assert (content.kind, content.text, content.sources, content.fallback) == ("answer", said, (), False)
    earlier = (Turn("user", "minha fatura deu R$ 123,45"), Turn("assistant", "Certo, anotei o valor."))
    content = await model_says(llm, kb, says("answer", "O total é R$ 123,45."), asked, history=earlier)
    assert (content.kind, content.sources, content.fallback) == ("answer", (), False)


async def test_an_answer_with_nothing_to_rest_on_is_the_bases_fallback(llm: FakeLlm, kb: KbEngine) -> None:
    """No entry close to the message, no conversation, nothing sent: an answer citing nothing can
    only hold facts the model made up (SPEC 6: it never invents them), so it is not shown."""
    invented = says("answer", "O total da sua fatura é R$ 123,45 e vence dia 10.")
    content = await model_says(llm, kb, invented, "o total da minha fatura está certo?")
    assert candidates(llm.requests[-1]["body"]) == []  # the model was told it knows nothing of it
    assert (content.kind, content.text, content.sources) == ("fallback", kb.kb.fallback, ())
    assert content.fallback and content.engine == "openai" and content.confidence <= 0.25


async def test_a_question_back_offers_the_candidates_it_names_with_their_titles(llm: FakeLlm, kb: KbEngine) -> None:
    entries = {entry.id: entry for entry, _ in kb.search("entrega", limit=3)}
    assert {"prazo-entrega", "entrega-atrasada"} <= set(entries)
    question = "Você quis dizer o prazo de entrega ou um pedido atrasado?"
    step = says("clarify", question, options=["prazo-entrega", "inventada", "entrega-atrasada", "prazo-entrega"])
    content = await model_says(llm, kb, step, "entrega")
    assert (content.kind, content.text, content.engine, content.sources) == ("clarify", question, "openai", ())
    # The invented id is dropped, the repeated one offered once; the policy adds the hand-over.
    assert content.options == (
        Option("prazo-entrega", entries["prazo-entrega"].label),
        Option("entrega-atrasada", entries["entrega-atrasada"].label),
    )
    assert not content.fallback


async def test_a_question_back_offering_no_candidate_is_the_bases_fallback(llm: FakeLlm, kb: KbEngine) -> None:
    content = await model_says(llm, kb, says("clarify", "Você quis dizer X ou Y?", options=["x", "y"]), "entrega")
    assert (content.kind, content.text, content.options) == ("fallback", kb.kb.fallback, ())
    assert content.fallback and content.engine == "openai"


async def test_not_knowing_is_a_fallback_in_the_models_words(llm: FakeLlm, kb: KbEngine) -> None:
    said = "Não tenho essa informação. Quer falar com um atendente?"
    content = await model_says(llm, kb, says("unknown", said, sources=["troca"]), "qual a cor do céu?")
    assert (content.kind, content.text, content.sources, content.options) == ("fallback", said, (), ())
    assert content.fallback and content.engine == "openai" and content.confidence <= 0.25


async def test_a_greeting_is_smalltalk_without_sources(llm: FakeLlm, kb: KbEngine) -> None:
    content = await model_says(llm, kb, says("smalltalk", "Olá! Como posso ajudar?", sources=["frete"]), "oi")
    assert (content.kind, content.text, content.sources, content.fallback) == (
        "smalltalk",
        "Olá! Como posso ajudar?",
        (),
        False,
    )
    sent = llm.requests[-1]["body"]
    assert sent["messages"][1]["content"] == NO_GROUNDING + "\n\n" + REPLY_FORMAT


async def test_a_reply_object_wrapped_in_a_fence_and_prose_is_read(llm: FakeLlm, kb: KbEngine) -> None:
    """Without JSON mode (OPENAI_JSON_MODE=off) models wrap the object; the parameter is not sent."""
    wrapped = Completion(f"Claro!\n```json\n{says('answer', LLM_TEXT, sources=['prazo-entrega']).content}\n```")
    content = await model_says(llm, kb, wrapped, json_mode=False)
    assert (content.kind, content.text, content.sources, content.engine) == (
        "answer",
        LLM_TEXT,
        ("prazo-entrega",),
        "openai",
    )
    assert "response_format" not in llm.requests[-1]["body"]


@pytest.mark.parametrize(
    "output",
    [
        LLM_TEXT,  # plain text: could say anything
        '{"kind": "answer", "text": "Entregamos em até 5 dias',  # cut short (max_tokens)
        '{"kind": "maybe", "text": "Talvez.", "sources": ["prazo-entrega"]}',  # a kind it was not given
        '{"kind": "answer", "text": "", "sources": ["prazo-entrega"]}',  # no text
        '["answer", "Entregamos em até 5 dias úteis."]',  # JSON, not the object
    ],
)
async def test_unreadable_model_output_is_never_shown_the_knowledge_base_answers(
    llm: FakeLlm, kb: KbEngine, output: str
) -> None:
    llm.script.append(Completion(output))
    engine = engine_for(llm.url, kb, breaker_failures=1)
    try:
        content = await engine.reply(EngineRequest(PRAZO, "c-1"))
        # It counts as a failed reply: a model that cannot keep to the format is not asked again and again.
        assert engine.breaker.state == "open"
    finally:
        await engine.close()
    assert replace(content, engine="kb") == await kb.reply(EngineRequest(PRAZO, "c-1"))
    assert content.engine == "kb-fallback" and len(llm.requests) == 1  # not retried


# -- streaming: an answer's text as it grows ----------------------------------------------------


async def streamed(llm: FakeLlm, kb: KbEngine, step: Completion, text: str = PRAZO) -> tuple[ReplyContent, list[str]]:
    deltas: list[str] = []

    async def on_delta(so_far: str) -> None:
        deltas.append(so_far)

    llm.script.append(step)
    engine = engine_for(llm.url, kb)
    try:
        content = await engine.reply(EngineRequest(text, "c-1", on_delta=on_delta))
    finally:
        await engine.close()
    assert llm.requests[-1]["body"]["stream"] is True
    return content, deltas


async def test_an_answer_streams_its_text_only_each_delta_the_text_so_far(llm: FakeLlm, kb: KbEngine) -> None:
    said = 'Entregamos em até 5 dias úteis nas capitais.\nNo interior, "até 10" 😀 \\ fim.'
    content, deltas = await streamed(llm, kb, says("answer", said, sources=["prazo-entrega"]))
    assert (content.kind, content.text, content.sources) == ("answer", said, ("prazo-entrega",))
    assert len(deltas) >= 5 and deltas[-1] == said  # never a piece of JSON, only the text
    assert all(said.startswith(delta) for delta in deltas)
    assert all(len(a) < len(b) for a, b in itertools.pairwise(deltas))  # each grows


async def test_a_question_back_is_not_streamed_but_arrives_whole(llm: FakeLlm, kb: KbEngine) -> None:
    step = says("clarify", "Você quis dizer o prazo de entrega?", options=["prazo-entrega"])
    content, deltas = await streamed(llm, kb, step, "entrega")
    assert content.kind == "clarify" and [option.id for option in content.options] == ["prazo-entrega"]
    assert deltas == []


def test_the_streamed_text_is_decoded_whatever_the_cut() -> None:
    """Chunks end anywhere: inside an escape, half a surrogate pair, before the text has started."""
    said = 'Até 5 "dias"\núteis 😀 \\ é fim'
    raw = orjson.dumps({"kind": "answer", "text": said, "sources": []}).decode().replace("😀", "\\ud83d\\ude00")
    raw = raw.replace("é fim", "\\u00e9 fim")
    shown = [_answer_so_far(raw[:cut]) for cut in range(len(raw) + 1)]
    assert all(said.startswith(text) for text in shown)
    assert shown[-1] == said
    assert _answer_so_far('```json\n{"kind": "answer", "text": "Olá') == "Olá"
    assert _answer_so_far('{"kind": "clarify", "text": "Você quis') == ""
    assert _answer_so_far('{"text": "Olá", "kind": "answer"}') == ""  # text first: shown when whole


async def test_the_model_is_told_the_customer_s_language(llm: FakeLlm, kb: KbEngine) -> None:
    llm.script.append(says("smalltalk", "Hello! How can I help?"))
    engine = engine_for(llm.url, kb)
    try:
        await engine.reply(EngineRequest("hello there", "c-1", language="en"))
    finally:
        await engine.close()
    system = [m["content"] for m in llm.requests[-1]["body"]["messages"] if m["role"] == "system"]
    assert system[-1] == 'The customer writes in English: write "text" in English.'
