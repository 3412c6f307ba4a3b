"""What every reply engine shares: commands, requests for a human, and when to give up on the bot.

`ReplyPolicy` wraps the configured engine (knowledge base or LLM):
  * `/reset` clears the conversation's memory and says so (the worker's commit does the clearing);
  * a customer asking for a person ("quero falar com um atendente", "can I talk to a human?") gets
    `handoff: true` and a reply saying a person will take over; the commit starts the handoff, and
    the bot stays silent in that conversation until an agent releases it or it expires;
  * a fallback reply carries the escalation to send instead when it is one fallback too many in a
    row (the commit counts them, HANDOFF_AFTER_FALLBACKS), and offers the hand-over;
  * a question back (`clarify`: the engine's candidate entries, no text) gets the hand-over as its
    last option and a text listing them all, numbered, so that typing a number works everywhere;
  * choosing one of the options the last reply offered (`EngineRequest.option`, or typing its
    number or label) resolves it: an entry gets its answer, `handoff` hands over, an entry's own
    button is answered as if its label were typed. A choice of something not offered (expired,
    the conversation moved on, or never offered) gets "please choose again", never an answer.
  * outside business hours (BUSINESS_HOURS) a request for a person, or an escalation, says when
    people are back (`away_until`): the handoff is recorded and waits in the agents' queue, and the
    bot keeps answering until then;
  * a satisfaction rating (a `csat:N` option, services/worker/csat.py asks for it) is thanked for,
    and the commit records it (`ReplyContent.csat`).
The replies are in the knowledge base's language.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime

from shared.hours import BusinessHours
from shared.messages import HANDOFF_OPTION, Option, ReplyContent

from .base import EngineRequest, ReplyEngine
from .kb import KbEngine, KnowledgeBase
from .text import Language, fold

RESET_COMMAND = "/reset"
# A satisfaction rating's option id: `csat:1` .. `csat:5`.
CSAT_PREFIX = "csat:"
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

_HUMAN_REQUEST: Mapping[Language, re.Pattern[str]] = {
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
}
_WORDS = re.compile(r"[a-z0-9]+")

_REPLIES: Mapping[Language, Mapping[str, str]] = {
    "pt": {
        "reset": "Pronto! Esqueci nossa conversa até aqui. Como posso ajudar?",
        "handoff": "Certo! Vou chamar um atendente humano: uma pessoa vai continuar esta conversa por aqui em breve.",
        "escalation": "Desculpe, não estou conseguindo ajudar com isso. Vou chamar um atendente humano: uma pessoa"
        " vai continuar esta conversa por aqui em breve.",
        # The button of the handoff offer ("Quer falar com um atendente?"): its tap is a request.
        "offer": "Falar com atendente",
        # A question back lists its options, numbered, between these two lines.
        "clarify": "Não tenho certeza se entendi. Você quis dizer:",
        "pick": "Toque numa opção ou responda com o número.",
        # A choice of something not offered (any more): the options in force again, or none.
        "stale": "Essa opção não está mais disponível. Por favor, escolha de novo:",
        "ask": "Essa opção não está mais disponível. Por favor, escreva sua pergunta.",
        # Outside BUSINESS_HOURS: `{when}` is one of the three `when_*` below.
        "away": "Nosso time está fora do horário de atendimento agora. Deixei sua conversa na fila: uma pessoa"
        " vai continuar por aqui {when}. Enquanto isso, posso tentar ajudar com suas dúvidas.",
        "when_today": "hoje às {time}",
        "when_tomorrow": "amanhã às {time}",
        "when_day": "{weekday}, {day:02d}/{month:02d}, às {time}",
        "weekdays": "segunda-feira,terça-feira,quarta-feira,quinta-feira,sexta-feira,sábado,domingo",
        "months": "janeiro,fevereiro,março,abril,maio,junho,julho,agosto,setembro,outubro,novembro,dezembro",
        "csat_ask": "Como você avalia este atendimento? Toque numa nota de 1 (ruim) a 5 (ótimo).",
        "csat_thanks": "Obrigado pela avaliação! Se quiser, escreva um comentário sobre o atendimento.",
    },
    "en": {
        "reset": "Done! I have forgotten our conversation so far. How can I help?",
        "handoff": "Sure! I am calling a human agent: a person will take over this conversation here shortly.",
        "escalation": "Sorry, I am not managing to help with that. I am calling a human agent: a person will take"
        " over this conversation here shortly.",
        "offer": "Talk to an agent",
        "clarify": "I am not sure I understood. Did you mean:",
        "pick": "Tap an option or reply with its number.",
        "stale": "That option is no longer available. Please choose again:",
        "ask": "That option is no longer available. Please write your question.",
        "away": "Our team is outside business hours right now. I have put your conversation in the queue: a"
        " person will continue here {when}. Meanwhile, I can try to help with your questions.",
        "when_today": "today at {time}",
        "when_tomorrow": "tomorrow at {time}",
        "when_day": "on {weekday}, {month_name} {day}, at {time}",
        "weekdays": "Monday,Tuesday,Wednesday,Thursday,Friday,Saturday,Sunday",
        "months": "January,February,March,April,May,June,July,August,September,October,November,December",
        "csat_ask": "How would you rate this conversation? Tap a score from 1 (poor) to 5 (great).",
        "csat_thanks": "Thank you for your rating! If you like, write a comment about the service.",
    },
}


def asks_for_human(text: str, language: Language) -> bool:
    """Whether the message asks to talk to a person (in `language`, and in English everywhere:
    customers of Brazilian shops write "human agent" too)."""
    words = " ".join(_WORDS.findall(fold(text)))
    return any(_HUMAN_REQUEST[lang].search(words) for lang in {language, "en"})


def csat_request(language: Language) -> ReplyContent:
    """The question asking for a 1-5 rating, the scores as options (services/worker/csat.py)."""
    options = tuple(Option(f"{CSAT_PREFIX}{score}", str(score)) for score in CSAT_SCORES)
    return ReplyContent(
        text=_REPLIES[language]["csat_ask"], engine="csat", confidence=1.0, kind="smalltalk", options=options
    )


def is_reset(text: str) -> bool:
    return text.strip().casefold() == RESET_COMMAND


# Typed choices: "2", "2.", or a label however it is cased, accented or punctuated.
_NUMBERS = frozenset("123456789")


def choice_key(text: str) -> str:
    """A typed text as it is compared with option numbers and labels ("Posso parcelar?" -> "posso parcelar")."""
    return " ".join(_WORDS.findall(fold(text)))


def typed_choice(text: str, offered: tuple[Option, ...]) -> Option | None:
    """The offered option that `text` names by its number (1 is the first) or its label."""
    key = choice_key(text)
    if key in _NUMBERS:
        return offered[int(key) - 1] if int(key) <= len(offered) else None
    return next((option for option in offered if choice_key(option.label) == key), None)


def _labels(kb: KnowledgeBase, handoff_label: str) -> frozenset[str]:
    """Every label an option may carry with this base: entries, their buttons, the hand-over."""
    labels = [handoff_label, *(entry.label for entry in kb.entries)]
    labels += [button for entry in kb.entries for button in entry.buttons]
    return frozenset(choice_key(label) for label in labels)


class ReplyPolicy:
    """A ReplyEngine around another one; see the module's docstring. `catalog` is the knowledge
    base the engine answers from (an entry chosen by its id gets its answer from there)."""

    def __init__(
        self,
        engine: ReplyEngine,
        language: Language,
        *,
        catalog: KbEngine,
        escalate: bool = True,
        hours: BusinessHours | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.name = engine.name
        self.uses_history = engine.uses_history
        self._replies = _REPLIES[language]
        self.language = language
        self._catalog = catalog
        self._escalate = escalate
        self._handoff_option = Option(HANDOFF_OPTION, self._replies["offer"])
        self._labels = _labels(catalog.kb, self._handoff_option.label)
        self._hours = hours or BusinessHours()
        self._clock = clock

    def may_be_choice(self, text: str) -> bool:
        key = choice_key(text)
        return key in _NUMBERS or key in self._labels

    async def reply(self, request: EngineRequest) -> ReplyContent:
        if is_reset(request.text):
            return ReplyContent(
                text=self._replies["reset"], engine="command", confidence=1.0, reset=True, kind="smalltalk"
            )
        if request.option.startswith(CSAT_PREFIX):
            return self._rated(request.option, request)
        if request.option:
            chosen = next((option for option in request.offered if option.id == request.option), None)
            if chosen is not None:
                return await self._resolve(chosen, request)
            # Asking for a person is never out of date, offered or not.
            return self._handoff() if request.option == HANDOFF_OPTION else self._choose_again(request)
        typed = typed_choice(request.text, request.offered)
        if typed is not None:
            return await self._resolve(typed, request)
        if asks_for_human(request.text, self.language):
            return self._handoff()
        return self._offering(await self.engine.reply(request))

    async def _resolve(self, chosen: Option, request: EngineRequest) -> ReplyContent:
        """The reply to an option the last reply offered."""
        if chosen.id == HANDOFF_OPTION:
            return self._handoff()
        if chosen.id.startswith(CSAT_PREFIX):
            return self._rated(chosen.id, request)
        if chosen.id == chosen.label:  # an entry's own button: as if the customer typed it
            return await self.reply(replace(request, text=chosen.label, option="", offered=(), offered_for=""))
        answer = self._catalog.entry_reply(chosen.id)
        if answer is None:  # the base was reloaded without that entry since it was offered
            return self._choose_again(request)
        return replace(answer, kind="answer", resolves=request.offered_for)

    def _offering(self, content: ReplyContent) -> ReplyContent:
        """The engine's reply with what the policy adds: a question back's text and the hand-over,
        a fallback's hand-over and escalation."""
        if content.kind == "clarify":
            options = (*(o for o in content.options if o.id != HANDOFF_OPTION), self._handoff_option)
            return replace(content, options=options, text=content.text or self._numbered("clarify", options))
        if content.fallback and not content.options:
            content = replace(content, options=(self._handoff_option,))
        if content.fallback and self._escalate:
            escalation = replace(self._handoff("escalation"), confidence=content.confidence)
            content = replace(content, escalation=escalation)
        return content

    def _choose_again(self, request: EngineRequest) -> ReplyContent:
        """A choice of something not offered: the options in force again (for the same question),
        or, with none, a request to write the question, and the hand-over."""
        if request.offered:
            text, options = self._numbered("stale", request.offered), request.offered
        else:
            text, options = self._replies["ask"], (self._handoff_option,)
        return ReplyContent(
            text=text, engine="choice", confidence=1.0, kind="clarify", options=options, question=request.offered_for
        )

    def _numbered(self, lead: str, options: tuple[Option, ...]) -> str:
        listed = (f"{number}. {option.label}" for number, option in enumerate(options, start=1))
        return "\n".join((self._replies[lead], *listed, self._replies["pick"]))

    def _handoff(self, text: str = "handoff") -> ReplyContent:
        """A hand-over to a person: at once inside business hours, else an away message naming the
        next opening (the handoff waits for it, and the bot keeps answering meanwhile)."""
        now = self._clock()
        opening = self._hours.next_opening(now)
        content = ReplyContent(text=self._replies[text], engine="handoff", confidence=1.0, handoff=True, kind="handoff")
        if opening is None:
            return content
        when = self._when(opening, datetime.fromtimestamp(now, opening.tzinfo))
        return replace(content, text=self._replies["away"].format(when=when), away_until=opening.timestamp())

    def _when(self, opening: datetime, now: datetime) -> str:
        """The next opening as the customer reads it: today, tomorrow, or the weekday and date."""
        time_text = opening.strftime("%H:%M")
        days = (opening.date() - now.date()).days
        if days < 2:
            return self._replies["when_today" if days == 0 else "when_tomorrow"].format(time=time_text)
        return self._replies["when_day"].format(
            weekday=self._replies["weekdays"].split(",")[opening.weekday()],
            day=opening.day,
            month=opening.month,
            month_name=self._replies["months"].split(",")[opening.month - 1],
            time=time_text,
        )

    def _rated(self, option: str, request: EngineRequest) -> ReplyContent:
        """A rating tapped or typed; the commit records it once, if one was asked for."""
        score = option.removeprefix(CSAT_PREFIX)
        if not score.isdigit() or int(score) not in CSAT_SCORES:
            return self._choose_again(request)
        return ReplyContent(
            text=self._replies["csat_thanks"], engine="csat", confidence=1.0, kind="smalltalk", csat=int(score)
        )

    async def close(self) -> None:
        await self.engine.close()
