"""The customer's language: the bot's own texts follow it, and a translated base answers in it.

Unit tier: the reply policy around the real knowledge-base engine (words only, no model), the
real YAML parser; the end-to-end path (the chat page's language through the gateway and a worker)
is in tests/test_screens.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.worker.engines.base import EngineRequest
from services.worker.engines.kb import KbEngine, KnowledgeBase
from services.worker.engines.kbfile import KnowledgeBaseError, parse
from services.worker.engines.languages import customer_language, detect, parse_language
from services.worker.engines.policy import ReplyPolicy
from shared.messages import HANDOFF_OPTION, ReplyContent

SAMPLE = Path(__file__).resolve().parents[1] / "shared" / "data" / "kb-sample.yaml"

TRANSLATED = {
    "language": "pt",
    "fallback": "Não sei responder isso.",
    "translations": {"en": {"fallback": "I do not know that one."}},
    "entries": [
        {
            "id": "entrega",
            "questions": ["Qual o prazo de entrega?"],
            "answer": "Entregamos em até 5 dias úteis.",
            "translations": {"en": {"questions": ["How long does delivery take?"], "answer": "We deliver in 5 days."}},
        },
        {"id": "pix", "questions": ["Aceitam pix?"], "answer": "Sim, aceitamos pix."},
    ],
}


def policy_for(knowledge: KnowledgeBase) -> ReplyPolicy:
    engine = KbEngine(knowledge)
    translations = {}
    for language in knowledge.translations:
        translated = KbEngine(knowledge.translated(language))
        translations[language] = (translated, translated)
    return ReplyPolicy(engine, knowledge.language, catalog=engine, translations=translations)


def ask(text: str, language: str = "", option: str = "") -> EngineRequest:
    return EngineRequest(text, "web:c1", language=language, option=option)


@pytest.mark.parametrize(
    ("tag", "expected"),
    [("en", "en"), ("en-US", "en"), ("pt_BR", "pt"), ("ES", "es"), ("fr", None), (7, None), ("", None)],
)
def test_a_language_tag_names_one_of_ours_or_none(tag: object, expected: str | None) -> None:
    assert parse_language(tag) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello, how much does the delivery cost to my house?", "en"),
        ("Olá, quanto custa a entrega pra minha casa hoje?", "pt"),
        ("Hola, ¿cuánto cuesta el envío a mi casa hoy?", "es"),
        ("ok", None),
        ("pix?", None),
    ],
)
def test_the_language_of_a_message_is_detected_only_when_clear(text: str, expected: str | None) -> None:
    assert detect(text) == expected


def test_the_channel_s_word_wins_over_the_text() -> None:
    assert customer_language({"language": "en"}, "Olá, quanto custa a entrega pra minha casa?") == "en"
    assert customer_language({}, "Hello, what are your opening hours?") == "en"


async def test_an_english_customer_of_a_portuguese_base_gets_english_system_texts() -> None:
    policy = policy_for(KnowledgeBase.load(SAMPLE))
    fallback = await policy.reply(ask("asdkjh qwpoeiru zxmcnv", language="en"))
    assert fallback.kind == "fallback"
    assert fallback.text.startswith("Sorry")
    assert [option.label for option in fallback.options] == ["Talk to an agent"]
    handoff = await policy.reply(ask("Talk to an agent", language="en", option=HANDOFF_OPTION))
    assert handoff.handoff and handoff.text.startswith("Sure!")
    portuguese = await policy.reply(ask("asdkjh qwpoeiru zxmcnv"))
    assert portuguese.text == KnowledgeBase.load(SAMPLE).fallback
    assert [option.label for option in portuguese.options] == ["Falar com atendente"]


async def test_small_talk_follows_the_customer_s_language() -> None:
    policy = policy_for(KnowledgeBase.load(SAMPLE))
    english = await policy.reply(ask("hello", language="en"))
    portuguese = await policy.reply(ask("olá"))
    assert english.kind == portuguese.kind == "smalltalk"
    assert english.text != portuguese.text and english.text.startswith("Hello")


async def test_a_spanish_customer_gets_spanish_system_texts_and_may_ask_for_a_person_in_spanish() -> None:
    policy = policy_for(KnowledgeBase.load(SAMPLE))
    handoff = await policy.reply(ask("quiero hablar con un agente", language="es"))
    assert handoff.handoff and handoff.text.startswith("¡Claro!")
    fallback = await policy.reply(ask("asdkjh qwpoeiru zxmcnv", language="es"))
    assert fallback.text.startswith("Lo siento") and fallback.options[0].label == "Hablar con un agente"
    # Its options say their language on the way to the channel (WhatsApp's list button reads in it).
    assert fallback.language == "es" and ReplyContent.from_dict(fallback.to_wire()).language == "es"
    assert (await policy.reply(ask("asdkjh qwpoeiru zxmcnv", language="pt"))).language == "pt"
    assert handoff.options == () and handoff.language == ""  # nothing to choose, nothing to say


async def test_a_translated_base_answers_in_the_customer_s_language() -> None:
    policy = policy_for(parse(TRANSLATED, "kb.yaml"))
    english = await policy.reply(ask("How long does delivery take?", language="en"))
    assert (english.kind, english.text, english.sources) == ("answer", "We deliver in 5 days.", ("entrega",))
    portuguese = await policy.reply(ask("Qual o prazo de entrega?", language="pt"))
    assert portuguese.text == "Entregamos em até 5 dias úteis."
    assert (await policy.reply(ask("zzqx wwvy", language="en"))).text == "I do not know that one."
    assert policy.may_be_choice("Talk to an agent") and policy.may_be_choice("Hablar con un agente")


def test_an_untranslated_entry_answers_as_written_in_every_language() -> None:
    english = parse(TRANSLATED, "kb.yaml").translated("en")
    assert [entry.answer for entry in english.entries] == ["We deliver in 5 days.", "Sim, aceitamos pix."]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"translations": {"pt": {"fallback": "x"}}}, "'pt' is the base's own language"),
        ({"translations": {"en": {}}}, "'fallback' must be a non-empty string"),
        ({"translations": {"en": {"fallback": "x", "greeting": "y"}}}, "unknown key 'greeting'"),
        ({"translations": None, "entries": TRANSLATED["entries"]}, "the base has no 'translations: {en:"),
    ],
)
def test_a_malformed_translation_is_refused_naming_where(change: dict[str, object], problem: str) -> None:
    data = yaml.safe_load(yaml.safe_dump({**TRANSLATED, **change}))
    with pytest.raises(KnowledgeBaseError, match=problem.replace("{", r"\{").replace("(", r"\(")):
        parse(data, "kb.yaml")
