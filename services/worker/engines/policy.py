"""What every reply engine shares: commands, requests for a human, and when to give up on the bot.

`ReplyPolicy` wraps the configured engine (knowledge base or LLM):
  * `/reset` clears the conversation's memory and says so (the worker's commit does the clearing);
  * a customer asking for a person ("quero falar com um atendente", "can I talk to a human?") gets
    `handoff: true` and a reply saying a person will take over; the commit starts the handoff, and
    the bot stays silent in that conversation until an agent releases it or it expires;
  * a fallback reply carries the escalation to send instead when it is one fallback too many in a
    row (the commit counts them, HANDOFF_AFTER_FALLBACKS).
The replies are in the knowledge base's language.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace

from shared.messages import HANDOFF_OPTION, Option, ReplyContent

from .base import EngineRequest, ReplyEngine
from .text import Language, fold

RESET_COMMAND = "/reset"


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
    },
    "en": {
        "reset": "Done! I have forgotten our conversation so far. How can I help?",
        "handoff": "Sure! I am calling a human agent: a person will take over this conversation here shortly.",
        "escalation": "Sorry, I am not managing to help with that. I am calling a human agent: a person will take"
        " over this conversation here shortly.",
        "offer": "Talk to an agent",
    },
}


def asks_for_human(text: str, language: Language) -> bool:
    """Whether the message asks to talk to a person (in `language`, and in English everywhere:
    customers of Brazilian shops write "human agent" too)."""
    words = " ".join(_WORDS.findall(fold(text)))
    return any(_HUMAN_REQUEST[lang].search(words) for lang in {language, "en"})


def is_reset(text: str) -> bool:
    return text.strip().casefold() == RESET_COMMAND


class ReplyPolicy:
    """A ReplyEngine around another one; see the module's docstring."""

    def __init__(self, engine: ReplyEngine, language: Language, *, escalate: bool = True) -> None:
        self.engine = engine
        self.name = engine.name
        self.uses_history = engine.uses_history
        self._replies = _REPLIES[language]
        self.language = language
        self._escalate = escalate

    async def reply(self, request: EngineRequest) -> ReplyContent:
        if is_reset(request.text):
            return ReplyContent(
                text=self._replies["reset"], engine="command", confidence=1.0, reset=True, kind="smalltalk"
            )
        if asks_for_human(request.text, self.language):
            return ReplyContent(
                text=self._replies["handoff"], engine="handoff", confidence=1.0, handoff=True, kind="handoff"
            )
        content = await self.engine.reply(request)
        if content.fallback and not content.options:
            content = replace(content, options=(Option(HANDOFF_OPTION, self._replies["offer"]),))
        if content.fallback and self._escalate:
            escalation = ReplyContent(
                text=self._replies["escalation"],
                engine="handoff",
                confidence=content.confidence,
                handoff=True,
                kind="handoff",
            )
            content = replace(content, escalation=escalation)
        return content

    async def close(self) -> None:
        await self.engine.close()
