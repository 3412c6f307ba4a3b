"""A customer's requests about their data, as the reply policy recognises them (issue 23), and how an
operator names a customer: unit tier, no servers."""

from __future__ import annotations

import pytest

from services.worker.engines import privacy
from services.worker.engines.base import EngineRequest
from services.worker.engines.kb import KbEngine, KnowledgeBase
from services.worker.engines.policy import ReplyPolicy, choice_key
from shared import unanswered
from shared.messages import InboundMessage, Option
from shared.privacy.customer import Customer, user_scope
from tests.support import SAMPLE_PT

CATALOG = KbEngine(KnowledgeBase.load(SAMPLE_PT))
POLICY = ReplyPolicy(CATALOG, "pt", catalog=CATALOG)


@pytest.mark.parametrize(
    ("text", "asked"),
    [
        ("apagar meus dados", "erase"),
        ("Quero APAGAR todos os meus dados, por favor", "erase"),
        ("por favor excluam minhas informações", "erase"),
        ("pode excluir meus dados?", "erase"),
        ("delete my data", "erase"),
        ("Please erase all my personal data", "erase"),
        ("direito ao esquecimento", "erase"),
        ("meus dados", "export"),
        ("Quero os meus dados pessoais", "export"),
        ("quais dados vocês têm sobre mim?", "export"),
        ("my data", "export"),
        ("what data do you hold about me", "export"),
        ("como atualizo meus dados cadastrais?", None),  # a question for the base, not a request
        ("esqueci minha senha", None),
        ("qual o prazo de entrega?", None),
        ("where is my data plan?", None),
    ],
)
def test_requests_are_recognised_in_both_languages(text: str, asked: str | None) -> None:
    assert privacy.asked(text) == asked


async def test_an_erasure_is_asked_to_be_confirmed_and_only_the_offered_confirmation_erases() -> None:
    asked = await POLICY.reply(EngineRequest("quero apagar meus dados", "c"))
    # A question back with options (SPEC section 6), not an entry's answer.
    assert asked.engine == privacy.ASKED and asked.kind == "clarify" and asked.sources == ()
    assert [o.id for o in asked.options] == [privacy.ERASE_OPTION, privacy.KEEP_OPTION]
    assert asked.text.startswith("Você quer que eu apague") and "1. Sim, apagar" in asked.text

    offered = asked.options
    for chosen in (
        EngineRequest("Sim, apagar", "c", option=privacy.ERASE_OPTION, offered=offered),
        EngineRequest("1", "c", offered=offered),  # typed, by its number
        EngineRequest("sim apagar", "c", offered=offered),  # typed, by its label
    ):
        assert POLICY.may_be_choice(chosen.text) or chosen.option
        done = await POLICY.reply(chosen)
        assert done.engine == privacy.ERASED and done.reset and "apaguei" in done.text
        assert done.kind == "answer"  # what was done about their request (as is the copy recorded)
    kept = await POLICY.reply(EngineRequest("2", "c", offered=offered))
    assert kept.engine == privacy.ASKED and "não apaguei nada" in kept.text and kept.kind == "answer"
    # Not offered (forged, or the conversation moved on): asked again, nothing erased.
    forged = await POLICY.reply(EngineRequest("Sim", "c", option=privacy.ERASE_OPTION, offered=()))
    assert forged.engine == "choice"
    stale = await POLICY.reply(EngineRequest("Sim", "c", option=privacy.ERASE_OPTION, offered=(Option("x", "y"),)))
    assert stale.engine == "choice"


async def confirmation(language: str = "") -> tuple[Option, ...]:
    asked = await POLICY.reply(EngineRequest("quero apagar meus dados", "c", language=language))
    return asked.options


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("sim", ""),
        ("Sim!", ""),
        ("S", ""),
        ("pode", ""),
        ("Pode apagar.", ""),
        ("sim, pode apagar", ""),
        ("confirmo", ""),
        ("yes", ""),
        ("Y", ""),
        ("sure", ""),
        ("Yes, delete it", ""),
        ("sí", "es"),  # the customer's language too
    ],
)
async def test_a_plain_yes_confirms_the_erasure_it_was_asked_about(text: str, language: str) -> None:
    offered = await confirmation(language)
    assert POLICY.may_be_choice(text)  # so the worker reads the options offered for it
    done = await POLICY.reply(EngineRequest(text, "c", offered=offered, language=language))
    assert done.engine == privacy.ERASED and done.reset


@pytest.mark.parametrize("text", ["não", "Nao.", "n", "no", "No!", "cancelar", "cancel", "não, obrigado"])
async def test_a_plain_no_keeps_the_data(text: str) -> None:
    offered = await confirmation()
    assert POLICY.may_be_choice(text)
    kept = await POLICY.reply(EngineRequest(text, "c", offered=offered))
    assert kept.engine == privacy.ASKED and "não apaguei nada" in kept.text and not kept.options


@pytest.mark.parametrize("text", ["ok", "talvez", "sim, mas qual o prazo de entrega?", "si", "3"])
async def test_anything_else_while_asked_is_an_ordinary_message(text: str) -> None:
    offered = await confirmation()
    reply = await POLICY.reply(EngineRequest(text, "c", offered=offered))
    assert reply.engine not in (privacy.ERASED, privacy.ASKED)


async def test_yes_and_no_choose_nothing_without_the_confirmation_pending() -> None:
    entries = (Option("prazo-entrega", "Qual o prazo de entrega?"), Option("frete", "Quanto custa o frete?"))
    for offered in ((), entries, (Option("csat:1", "1"),)):
        for text in ("sim", "yes", "não", "no"):
            reply = await POLICY.reply(EngineRequest(text, "c", offered=offered))
            assert reply.engine not in (privacy.ERASED, privacy.ASKED) and reply.kind != "answer", (text, offered)


def test_each_answer_word_is_a_yes_or_a_no_in_every_language_and_compared_as_typed() -> None:
    for word in privacy.ANSWER_WORDS:
        answers = {privacy.answer_to_confirmation(word, [language]) for language in ("pt", "en", "es")}
        assert len(answers - {None}) == 1, word
        assert choice_key(word) == word  # as a typed message is compared


async def test_the_confirmation_is_not_a_question_the_base_could_not_answer() -> None:
    """It is a question back (`clarify`), but the customer's words are not for the knowledge base's
    operators: neither its unanswered questions nor its suggested phrasings list them."""
    asked = await POLICY.reply(EngineRequest("quero apagar meus dados", "c"))
    answered = unanswered.Answered("quero apagar meus dados", asked, asked)
    assert unanswered.kind_of(answered) is None and unanswered.suggestion_of(answered) is None


async def test_a_copy_is_asked_for_in_english() -> None:
    english = ReplyPolicy(CATALOG, "en", catalog=CATALOG)
    asked = await english.reply(EngineRequest("my data", "c"))
    assert asked.engine == privacy.EXPORT and "within 15 days" in asked.text


@pytest.mark.parametrize(
    ("channel", "given", "parsed"),
    [
        ("whatsapp", "+55 (11) 98765-4321", "5511987654321"),
        ("telegram", "-100123", "-100123"),
        ("web", "ana@example.com", "ana@example.com"),
    ],
)
def test_an_operator_names_a_customer_by_channel_and_id(channel: str, given: str, parsed: str) -> None:
    assert Customer.parse(channel, given).id == parsed


@pytest.mark.parametrize(
    ("channel", "given", "field"),
    [("sms", "1", "channel"), ("whatsapp", "ana", "id"), ("telegram", "@ana", "id"), ("web", "", "id")],
)
def test_a_wrong_customer_names_its_field(channel: str, given: str, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        Customer.parse(channel, given)


def test_which_conversations_are_a_customers() -> None:
    phone = Customer("whatsapp", "5511987654321")
    assert phone.owns("whatsapp:106540352242922:5511987654321")
    assert not phone.owns("whatsapp:106540352242922:55119876543210")
    assert not phone.owns("telegram:5511987654321")
    chat = Customer("telegram", "42")
    assert chat.owns("telegram:42") and not chat.owns("telegram:420")
    web = Customer("web", "ana")
    assert web.owns(f"web:{user_scope('ana')}:chat") and not web.owns(f"web:{user_scope('bia')}:chat")
    message = InboundMessage("m", "telegram:42", "7", "oi", channel="telegram")
    assert Customer.of_message(message) == chat
    assert phone.pseudonym("ns") != phone.pseudonym("other") and "5511" not in phone.pseudonym("ns")
