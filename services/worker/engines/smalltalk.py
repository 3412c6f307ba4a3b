"""Greetings, thanks and goodbyes: recognised and answered without the knowledge base.

A message made only of such phrases (plus stop words: "oi, tudo bem com você?") gets a short reply
in the base's language. When a real question follows ("oi, qual o prazo?"), the phrases are cut
out and the rest goes to the knowledge base, so "bom dia" never matches an entry about "dias".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from .text import Language, is_content

Kind = Literal["greeting", "thanks", "goodbye", "ack"]


def _phrases(text: str) -> tuple[str, ...]:
    return tuple(phrase.strip() for phrase in text.split(","))


# Phrases are written as their tokens after text.words_of: folded, abbreviations expanded
# ("vlw" arrives as "valeu", "ok" in English as "okay").
_PHRASES: Mapping[Language, Mapping[Kind, tuple[str, ...]]] = {
    "pt": {
        "greeting": _phrases(
            "oi, oie, ola, opa, eai, e ai, salve, alo, bom dia, boa tarde, boa noite, tudo bem, tudo bom,"
            " tudo certo, como vai, como voce esta, hello, hi"
        ),
        "thanks": _phrases("obrigado, obrigada, muito obrigado, muito obrigada, valeu, agradeco, grato, grata"),
        "goodbye": _phrases(
            "tchau, tchauzinho, ate mais, ate logo, ate breve, ate amanha, adeus, falou, bom fim de semana,"
            " boa semana, nao, so isso, bye"
        ),
        "ack": _phrases(
            "ok, okay, beleza, certo, entendi, esta bom, show, perfeito, otimo, joia, tranquilo, combinado,"
            " sim, ah esta"
        ),
    },
    "en": {
        "greeting": _phrases(
            "hi, hello, hey, hiya, howdy, yo, good morning, good afternoon, good evening, how are you,"
            " how is it going, hi there, hello there"
        ),
        "thanks": _phrases(
            "thanks, thank you, thanks a lot, many thanks, cheers, appreciate it, much appreciated,"
            " thank you very much, thanks so much"
        ),
        "goodbye": _phrases(
            "bye, goodbye, bye bye, see you, see you later, good night, talk later, have a nice day,"
            " have a good day, take care, no, nope, that is all"
        ),
        "ack": _phrases(
            "okay, got it, great, cool, perfect, alright, all right, sounds good, understood, yes, awesome"
        ),
    },
}

_REPLIES: Mapping[Language, Mapping[Kind, str]] = {
    "pt": {
        "greeting": "Olá! Como posso ajudar?",
        "thanks": "De nada! Posso ajudar em mais alguma coisa?",
        "goodbye": "Até logo! Se precisar, é só chamar.",
        "ack": "Certo! Posso ajudar em mais alguma coisa?",
    },
    "en": {
        "greeting": "Hello! How can I help you?",
        "thanks": "You're welcome! Can I help with anything else?",
        "goodbye": "Goodbye! Message us any time.",
        "ack": "Great! Can I help with anything else?",
    },
}

# When a message mixes kinds, the reply answers the one that ends a conversation first:
# "obrigado, tchau" is a goodbye, "oi, obrigado" is thanks.
_PRIORITY: tuple[Kind, ...] = ("goodbye", "thanks", "greeting", "ack")


@dataclass(frozen=True, slots=True)
class SmallTalk:
    """What small talk a message holds and what is left once it is cut out."""

    kinds: frozenset[Kind]
    rest: tuple[str, ...]
    language: Language

    @property
    def only_small_talk(self) -> bool:
        """True when nothing but small talk and stop words was said."""
        return bool(self.kinds) and not any(is_content(w, self.language) for w in self.rest)

    def reply(self) -> str:
        kind = next(k for k in _PRIORITY if k in self.kinds)
        return _REPLIES[self.language][kind]


def _phrase_table(language: Language) -> dict[tuple[str, ...], Kind]:
    return {tuple(phrase.split()): kind for kind, phrases in _PHRASES[language].items() for phrase in phrases}


class SmallTalkDetector:
    """Finds small talk at the start and the end of a message.

    Only the edges are scanned: in the middle of a question, words such as "certo" or "show" are
    part of what is asked ("o valor certo"), while "oi, ..." and "..., obrigado" frame it.
    """

    def __init__(self, language: Language) -> None:
        self._language = language
        self._table = _phrase_table(language)
        self._longest = max(len(phrase) for phrase in self._table)
        # A phrase can only start (forward) or end (backward) with one of these: most words are
        # neither, and are passed over without a look-up per length.
        self._edges = {
            True: frozenset(phrase[0] for phrase in self._table),
            False: frozenset(phrase[-1] for phrase in self._table),
        }

    def scan(self, words: Sequence[str]) -> SmallTalk:
        kinds: set[Kind] = set()
        start = self._skip(words, kinds, forward=True)
        end = len(words) - self._skip(words[start:][::-1], kinds, forward=False)
        return SmallTalk(frozenset(kinds), tuple(words[start:end]), self._language)

    def _skip(self, words: Sequence[str], kinds: set[Kind], *, forward: bool) -> int:
        """How many leading words end with the last small-talk phrase of the leading run of
        small talk and stop words; adds the kinds met to `kinds`.

        Stop words after that phrase stay: "oi, quanto tempo demora?" keeps "quanto tempo".
        `words` is reversed by the caller for the backward scan, so phrases are reversed too.
        """
        i = cut = 0
        edges = self._edges[forward]
        while i < len(words):
            match = self._match_at(words, i, forward=forward) if words[i] in edges else None
            if match is not None:
                length, kind = match
                kinds.add(kind)
                i = cut = i + length
            elif not is_content(words[i], self._language):
                i += 1
            else:
                break
        return cut

    def _match_at(self, words: Sequence[str], start: int, *, forward: bool) -> tuple[int, Kind] | None:
        for length in range(min(self._longest, len(words) - start), 0, -1):
            chunk = tuple(words[start : start + length])
            kind = self._table.get(chunk if forward else chunk[::-1])
            if kind is not None:
                return length, kind
        return None
