"""What every reply engine shares: commands, requests for a human, and when to give up on the bot.

`ReplyPolicy` wraps the configured engine (knowledge base or LLM):
  * `/reset` clears the conversation's memory and says so (the worker's commit does the clearing);
  * on WhatsApp and Telegram, an opt-out command ("parar", "sair", "stop", "unsubscribe", or an
    opt-out button) is confirmed briefly (the gateway records it: shared/contacts.py);
  * a customer asking for a person ("quero falar com um atendente", "can I talk to a human?") gets
    `handoff: true` and a reply saying a person will take over; the commit starts the handoff, and
    the bot stays silent in that conversation until an agent releases it or it expires;
  * a fallback reply carries the escalation to send instead when it is one fallback too many in a
    row (the commit counts them, HANDOFF_AFTER_FALLBACKS), and offers the hand-over;
  * a question back (`clarify`: the engine's candidate entries, no text) gets the hand-over as its
    last option and a text listing them all, numbered, so that typing a number works everywhere;
  * choosing one of the options the last reply offered (`EngineRequest.option`, or typing its
    number or label, or a plain yes or no to an erasure's confirmation) resolves it: an entry
    gets its answer, `handoff` hands over, an entry's own button is answered as if its label were
    typed. A choice of something not offered (expired, the conversation moved on, or never
    offered) gets "please choose again", never an answer.
  * outside business hours (BUSINESS_HOURS) a request for a person, or an escalation, says when
    people are back (`away_until`): the handoff is recorded and waits in the agents' queue, the bot
    silent meanwhile as for any handoff;
  * a satisfaction rating (a `csat:N` option, services/worker/csat.py asks for it, with the scores
    as the options offered) is thanked for, and the commit records it (`ReplyContent.csat`); like
    any option, a score the last reply did not offer gets "please choose again", not a thanks.
  * a customer asking to erase their data, or for a copy of it, is answered by engines/privacy.py's
    rules: an erasure is confirmed with two options first (a question back, `clarify`); what is
    done then, or the copy recorded, is the `answer` to their request.
The replies are in the customer's language (EngineRequest.language: pt, en or es; languages.py),
else the knowledge base's; a base translated into that language answers from its translation.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from shared.commands import is_reset
from shared.contacts import is_opt_out
from shared.conversations import RATING_OPTION_PREFIX
from shared.hours import BusinessHours
from shared.messages import HANDOFF_OPTION, Option, ReplyContent

from . import privacy
from .base import EngineRequest, ReplyEngine
from .kb import KbEngine, KnowledgeBase
from .languages import REPLY_LANGUAGES, ReplyLanguage, parse_language
from .smalltalk import SmallTalkDetector
from .text import LANGUAGES, Language, fold, words_of
from .texts import REPLIES

# Web conversations (services/gateway/web_conversations.py) get no proactive messages to opt out of.
WEB_PREFIX = "web:"
# A satisfaction rating's option id: `csat:1` .. `csat:5`.
CSAT_PREFIX = RATING_OPTION_PREFIX
CSAT_SCORES = range(1, 6)


# Matched against the folded message ("Não" -> "nao"), words separated by single spaces.
# A request names a person ("atendente", "humano", "agent") after a verb of talking, calling or
# wanting, or is nothing but that name. Generic words for people ("pessoa", "alguém", "someone")
# count only after a verb of talking ("falar com alguém"), so "quero saber se a pessoa que recebe
# precisa de documento" or "qual o horário do atendimento?" are questions, not requests.
def _alternatives(words: str) -> str:
    return "(?:" + "|".join(sorted(words.split("|"), key=len, reverse=True)) + ")"


_PT_ARTICLES = r"(?:(?:um|uma|o|a|os|as|c|com|de|pra|pro|para|por|me) )*"
_PT_PERSON = _alternatives(
    "atendente|atendentes|humano|humana|humanos|operador|operadora|ser humano|funcionario|funcionaria"
    "|pessoa real|pessoa de verdade|gente de verdade|gerente|supervisor|supervisora|responsavel"
)
_PT_ANYONE = _alternatives("pessoa|alguem|gente")
_EN_ARTICLES = r"(?:(?:a|an|the|to|with|me|through|your|one|of|some) )*"
_EN_PERSON = _alternatives(
    "human|humans|human being|agent|agents|representative|rep|operator|real person|live person|manager"
    "|supervisor|staff member|customer service|customer support"
)
_EN_ANYONE = _alternatives("person|someone|somebody|anyone|anybody|people")

_ES_ARTICLES = r"(?:(?:un|una|el|la|los|las|con|de|para|por|me|a) )*"
_ES_PERSON = _alternatives(
    "agente|agentes|humano|humana|operador|operadora|ser humano|persona real|asesor|asesora|encargado|gerente"
)
_ES_ANYONE = _alternatives("persona|alguien")

_HUMAN_REQUEST: Mapping[ReplyLanguage, re.Pattern[str]] = {
    "pt": re.compile(
        rf"\b(?:falar|fala|falo|conversar|converso) {_PT_ARTICLES}(?:{_PT_PERSON}|{_PT_ANYONE})\b"
        rf"|\b(?:chamar|chama|chame|passar|passa|passe|transferir|transfere|transfira|coloca|coloque"
        rf"|quero|queria|preciso|gostaria|desejo) {_PT_ARTICLES}{_PT_PERSON}\b"
        r"|\batendimento (?:humano|humanizado|pessoal)\b|\batendente (?:real|de verdade|humano)\b"
        rf"|^{_PT_ARTICLES}{_PT_PERSON}(?: por favor)?$"
    ),
    "en": re.compile(
        rf"\b(?:talk|speak|chat) {_EN_ARTICLES}(?:{_EN_PERSON}|{_EN_ANYONE})\b"
        rf"|\b(?:connect|transfer|put|get|want|need|request|call) {_EN_ARTICLES}{_EN_PERSON}\b"
        r"|\b(?:human|live|real) (?:agent|support|person|being|representative|operator)\b"
        rf"|^{_EN_ARTICLES}{_EN_PERSON}(?: please)?$"
    ),
    "es": re.compile(
        rf"\b(?:hablar|habla|hablo|conversar) {_ES_ARTICLES}(?:{_ES_PERSON}|{_ES_ANYONE})\b"
        rf"|\b(?:quiero|quisiera|necesito|llamar|llama|pasame|paseme|transferir) {_ES_ARTICLES}{_ES_PERSON}\b"
        r"|\batencion (?:humana|personal)\b"
        rf"|^{_ES_ARTICLES}{_ES_PERSON}(?: por favor)?$"
    ),
}
_WORDS = re.compile(r"[a-z0-9]+")


_SMALL_TALK: Mapping[Language, SmallTalkDetector] = {language: SmallTalkDetector(language) for language in LANGUAGES}


def asks_for_human(text: str, language: ReplyLanguage) -> bool:
    """Whether the message asks to talk to a person (in `language`, and in English everywhere:
    customers of Brazilian shops write "human agent" too)."""
    return _names_a_person(choice_key(text), {language, "en"})


def _names_a_person(key: str, languages: set[ReplyLanguage]) -> bool:
    """`asks_for_human` in any of `languages`, of the message's `choice_key` (its folded words)."""
    return any(_HUMAN_REQUEST[lang].search(key) for lang in languages)


def csat_request(language: Language) -> ReplyContent:
    """The question asking for a 1-5 rating, the scores as options (services/worker/csat.py)."""
    options = tuple(Option(f"{CSAT_PREFIX}{score}", str(score)) for score in CSAT_SCORES)
    text = REPLIES[language]["csat_ask"]
    return ReplyContent(text=text, engine="csat", confidence=1.0, kind="smalltalk", options=options, language=language)


def _in_language(content: ReplyContent, language: str) -> ReplyContent:
    """Options say their language (the escalation's too), so that the words the channel adds around
    them (WhatsApp's list button) are in it."""
    if content.escalation is not None:
        content = replace(content, escalation=_in_language(content.escalation, language))
    return replace(content, language=language) if content.options else content


# Typed choices: "2", "2.", or a label however it is cased, accented or punctuated.
_NUMBERS = frozenset("123456789")


def choice_key(text: str) -> str:
    """A typed text as it is compared with option numbers and labels ("Posso parcelar?" -> "posso parcelar")."""
    return " ".join(_WORDS.findall(fold(text)))


def typed_choice(key: str, offered: tuple[Option, ...], languages: Iterable[str] = ()) -> Option | None:
    """The offered option that a message (its `choice_key`) names by its number (1 is the first)
    or its label, or, while an erasure's confirmation is offered, by a plain yes or no in one of
    `languages` ("sim", "yes", "não": engines/privacy.py)."""
    if not offered:  # (the common message: nothing to choose from)
        return None
    if key in _NUMBERS:
        return offered[int(key) - 1] if int(key) <= len(offered) else None
    labelled = next((option for option in offered if choice_key(option.label) == key), None)
    if labelled is not None:
        return labelled
    answered = privacy.answer_to_confirmation(key, languages)
    return next((option for option in offered if option.id == answered), None) if answered else None


def _labels(kbs: Iterable[KnowledgeBase]) -> frozenset[str]:
    """Every text that may choose an option with these bases, but numbers: the labels of entries,
    their buttons, the hand-over and the erasure's confirmation in every language, and the plain
    yes and no words that answer that confirmation."""
    labels = [texts[key] for texts in REPLIES.values() for key in ("offer", "privacy_yes", "privacy_no")]
    for kb in kbs:
        labels += [entry.label for entry in kb.entries]
        labels += [button for entry in kb.entries for button in entry.buttons]
    return frozenset(choice_key(label) for label in labels) | privacy.ANSWER_WORDS


@dataclass(frozen=True, slots=True)
class Voice:
    """How the policy answers a customer of one language: the system texts, and the engine and
    base of that language (the base's own when it is not translated into it)."""

    language: ReplyLanguage
    engine: ReplyEngine
    catalog: KbEngine

    @property
    def texts(self) -> Mapping[str, str]:
        return REPLIES[self.language]

    @property
    def handoff_option(self) -> Option:
        return Option(HANDOFF_OPTION, self.texts["offer"])

    @property
    def privacy_options(self) -> tuple[Option, Option]:
        """The confirmation of an erasure the customer asked for (engines/privacy.py)."""
        return (
            Option(privacy.ERASE_OPTION, self.texts["privacy_yes"]),
            Option(privacy.KEEP_OPTION, self.texts["privacy_no"]),
        )

    @property
    def translated(self) -> bool:
        """Whether the base speaks this language (else its fallback is replaced by ours)."""
        return self.catalog.kb.language == self.language


# The engine and base answering in one language a base is translated into (EngineFactory.build).
Version = tuple[ReplyEngine, KbEngine]


class ReplyPolicy:
    """A ReplyEngine around another one; see the module's docstring. `catalog` is the knowledge
    base the engine answers from (an entry chosen by its id gets its answer from there);
    `translations` the engine and base of each language the base is translated into. The reply
    is in the customer's language (`EngineRequest.language`), else the base's."""

    def __init__(
        self,
        engine: ReplyEngine,
        language: Language,
        *,
        catalog: KbEngine,
        escalate: bool = True,
        translations: Mapping[Language, Version] | None = None,
        hours: BusinessHours | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.name = engine.name
        self.uses_history = engine.uses_history
        self.language = language
        self._catalog = catalog
        self._escalate = escalate
        versions: dict[ReplyLanguage, Version] = {language: (engine, catalog)}
        for other, version in (translations or {}).items():
            versions[other] = version
        self._voices = {lang: Voice(lang, *versions.get(lang, (engine, catalog))) for lang in REPLY_LANGUAGES}
        self._labels = _labels(catalog.kb for _, catalog in versions.values())
        self._hours = hours or BusinessHours()
        self._clock = clock

    def may_be_choice(self, text: str) -> bool:
        key = choice_key(text)
        return key in _NUMBERS or key in self._labels

    def voice(self, request: EngineRequest) -> Voice:
        """The customer's language's voice (the base's when the request names none of ours)."""
        return self._voices[parse_language(request.language) or self.language]

    async def reply(self, request: EngineRequest) -> ReplyContent:
        voice = self.voice(request)
        return _in_language(await self._reply(voice, request), voice.language)

    async def _reply(self, voice: Voice, request: EngineRequest) -> ReplyContent:
        if is_reset(request.text):
            return ReplyContent(
                text=voice.texts["reset"], engine="command", confidence=1.0, reset=True, kind="smalltalk"
            )
        if not request.conversation_id.startswith(WEB_PREFIX) and is_opt_out(request.text, request.option):
            return ReplyContent(text=voice.texts["opt_out"], engine="command", confidence=1.0, kind="smalltalk")
        if request.option:
            chosen = next((option for option in request.offered if option.id == request.option), None)
            if chosen is not None:
                return await self._resolve(voice, chosen, request)
            # Asking for a person is never out of date, offered or not.
            return self._handoff(voice) if request.option == HANDOFF_OPTION else self._choose_again(voice, request)
        key = choice_key(request.text)  # (read as a typed choice, then as a request for a person)
        # A plain yes or no answers an erasure's confirmation in the customer's language, the
        # base's or English (customers of Brazilian shops write "yes" too).
        typed = typed_choice(key, request.offered, (voice.language, self.language, "en"))
        if typed is not None:
            return await self._resolve(voice, typed, request)
        if _names_a_person(key, {self.language, voice.language, "en"}):
            return self._handoff(voice)
        asked = privacy.asked(request.text)
        if asked is not None:
            return self._privacy_asked(voice, asked)
        return self._offering(voice, self._greeted(voice, request, await voice.engine.reply(request)))

    async def _resolve(self, voice: Voice, chosen: Option, request: EngineRequest) -> ReplyContent:
        """The reply to an option the last reply offered."""
        if chosen.id == HANDOFF_OPTION:
            return self._handoff(voice)
        if chosen.id in privacy.OPTIONS:
            return self._privacy_chosen(voice, chosen.id)
        if chosen.id.startswith(CSAT_PREFIX):
            return self._rated(voice, chosen.id, request)
        if chosen.id == chosen.label:  # an entry's own button: as if the customer typed it
            return await self.reply(replace(request, text=chosen.label, option="", offered=(), offered_for=""))
        answer = voice.catalog.entry_reply(chosen.id)
        if answer is None:  # the base was reloaded without that entry since it was offered
            return self._choose_again(voice, request)
        return replace(answer, kind="answer", resolves=request.offered_for)

    @staticmethod
    def _greeted(voice: Voice, request: EngineRequest, content: ReplyContent) -> ReplyContent:
        """Small talk in the customer's language when the base speaks another ("hello" to a
        Portuguese base gets "Hello!"), where that language has small talk of its own."""
        if content.kind != "smalltalk" or voice.translated:
            return content
        language = next((known for known in LANGUAGES if known == voice.language), None)
        if language is None:
            return content
        scan = _SMALL_TALK[language].scan(words_of(request.text, language))
        return replace(content, text=scan.reply()) if scan.only_small_talk else content

    def _offering(self, voice: Voice, content: ReplyContent) -> ReplyContent:
        """The engine's reply with what the policy adds: a question back's text and the hand-over,
        a fallback's hand-over, text in the customer's language, and escalation."""
        if content.kind == "clarify":
            options = (*(o for o in content.options if o.id != HANDOFF_OPTION), voice.handoff_option)
            return replace(content, options=options, text=content.text or self._numbered(voice, "clarify", options))
        if content.fallback and not content.options:
            content = replace(content, options=(voice.handoff_option,))
        if content.fallback and not voice.translated:
            content = replace(content, text=voice.texts["fallback"])
        if content.fallback and self._escalate:
            escalation = replace(self._handoff(voice, "escalation"), confidence=content.confidence)
            content = replace(content, escalation=escalation)
        return content

    def _choose_again(self, voice: Voice, request: EngineRequest) -> ReplyContent:
        """A choice of something not offered: the options in force again (for the same question),
        or, with none, a request to write the question, and the hand-over."""
        if request.offered:
            text, options = self._numbered(voice, "stale", request.offered), request.offered
        else:
            text, options = voice.texts["ask"], (voice.handoff_option,)
        return ReplyContent(
            text=text, engine="choice", confidence=1.0, kind="clarify", options=options, question=request.offered_for
        )

    @staticmethod
    def _numbered(voice: Voice, lead: str, options: tuple[Option, ...]) -> str:
        listed = (f"{number}. {option.label}" for number, option in enumerate(options, start=1))
        return "\n".join((voice.texts[lead], *listed, voice.texts["pick"]))

    def _handoff(self, voice: Voice, text: str = "handoff") -> ReplyContent:
        """A hand-over to a person: at once inside business hours, else an away message naming the
        next opening (the handoff waits for it in the agents' queue)."""
        now = self._clock()
        opening = self._hours.next_opening(now)
        content = ReplyContent(text=voice.texts[text], engine="handoff", confidence=1.0, handoff=True, kind="handoff")
        if opening is None:
            return content
        when = self._when(voice, opening, datetime.fromtimestamp(now, opening.tzinfo))
        return replace(content, text=voice.texts["away"].format(when=when), away_until=opening.timestamp())

    @staticmethod
    def _when(voice: Voice, opening: datetime, now: datetime) -> str:
        """The next opening as the customer reads it: today, tomorrow, or the weekday and date."""
        time_text = opening.strftime("%H:%M")
        days = (opening.date() - now.date()).days
        if days < 2:
            return voice.texts["when_today" if days == 0 else "when_tomorrow"].format(time=time_text)
        return voice.texts["when_day"].format(
            weekday=voice.texts["weekdays"].split(",")[opening.weekday()],
            day=opening.day,
            month=opening.month,
            month_name=voice.texts["months"].split(",")[opening.month - 1],
            time=time_text,
        )

    def _rated(self, voice: Voice, option: str, request: EngineRequest) -> ReplyContent:
        """A rating tapped or typed, of the scores offered; the commit records it once, if one was
        asked for."""
        score = option.removeprefix(CSAT_PREFIX)
        if not score.isdigit() or int(score) not in CSAT_SCORES:
            return self._choose_again(voice, request)
        return ReplyContent(
            text=voice.texts["csat_thanks"], engine="csat", confidence=1.0, kind="smalltalk", csat=int(score)
        )

    def _privacy_asked(self, voice: Voice, asked: privacy.Asked) -> ReplyContent:
        """A request for a copy is recorded (the worker, by the engine's name); an erasure is confirmed first."""
        if asked == "export":
            return ReplyContent(text=voice.texts["privacy_export"], engine=privacy.EXPORT, confidence=1.0)
        options = voice.privacy_options
        text = self._numbered(voice, "privacy_confirm", options)
        return ReplyContent(text=text, engine=privacy.ASKED, confidence=1.0, kind="clarify", options=options)

    @staticmethod
    def _privacy_chosen(voice: Voice, option: str) -> ReplyContent:
        if option == privacy.ERASE_OPTION:  # the worker erases once this reply is out
            return ReplyContent(text=voice.texts["privacy_erased"], engine=privacy.ERASED, confidence=1.0, reset=True)
        return ReplyContent(text=voice.texts["privacy_kept"], engine=privacy.ASKED, confidence=1.0)

    async def close(self) -> None:
        for engine in {id(voice.engine): voice.engine for voice in self._voices.values()}.values():
            await engine.close()
