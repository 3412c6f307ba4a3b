"""The customer's language: which language the bot's own texts (and a translated base) speak.

The channel says it when it can: the chat page sends its language in the message's metadata
(`metadata.language`, e.g. "en" or "pt-BR"), and the Telegram gateway copies the sender's
`language_code` there. Otherwise the message itself is read: a cheap count of the commonest words
of each language, trusted only when one language clearly leads (a short "ok" or "pix?" says
nothing, and the base's language is used).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from .text import fold

# The languages the bot's system texts are written in (texts.py). A knowledge base may be
# normalised in fewer (text.LANGUAGES); a customer writing in another one still gets these texts.
ReplyLanguage = Literal["pt", "en", "es"]
REPLY_LANGUAGES: tuple[ReplyLanguage, ...] = ("pt", "en", "es")
_BY_NAME: Mapping[str, ReplyLanguage] = {language: language for language in REPLY_LANGUAGES}


# Frequent words that are not also frequent in the other two languages ("a", "de", "que", "no"
# and "para" are in both Portuguese and Spanish, so they say nothing).
def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_MARKERS: Mapping[ReplyLanguage, frozenset[str]] = {
    "pt": _words(
        "voce voces nao sim obrigado obrigada tem tenho quero queria preciso posso pode qual quais quanto"
        " onde quando meu minha seu sua isso esse essa estou estao sao com uma um ola oi bom"
        " dia tarde noite entrega frete funciona vcs vc pra tbm hoje amanha ate"
    ),
    "en": _words(
        "you your the is are does did can could would what which where when how my i it this"
        " that with have has need want hello hi thanks thank please order delivery open hours much"
        " yes not and of for"
    ),
    "es": _words(
        "usted ustedes tiene tengo quiero quisiera necesito puedo puede cual cuales cuanto cuanta"
        " donde cuando mi su eso ese esa estoy estan son con una un hola buenos buenas gracias"
        " envio hoy manana hasta el los las del y es"
    ),
}
_TOKENS = re.compile(r"[a-z']+")
# A detection needs this many marker words and a lead of this many over the runner-up.
_MIN_MARKERS = 2
_MIN_LEAD = 2


def parse_language(value: object) -> ReplyLanguage | None:
    """One of ours from a language tag ("en-US", "pt_BR", "ES"); None for anything else."""
    if not isinstance(value, str):
        return None
    return _BY_NAME.get(value.strip().lower().replace("_", "-").split("-")[0])


def detect(text: str) -> ReplyLanguage | None:
    """The language `text` is most likely written in, or None when it does not say clearly."""
    words = _TOKENS.findall(fold(text))
    counts = {language: sum(word in markers for word in words) for language, markers in _MARKERS.items()}
    ranked = sorted(counts.items(), key=lambda item: item[1], reverse=True)
    (best, first), (_, second) = ranked[0], ranked[1]
    return best if first >= _MIN_MARKERS and first - second >= _MIN_LEAD else None


def customer_language(metadata: Mapping[str, Any], text: str) -> ReplyLanguage | None:
    """The language to answer in: the channel's word for it first, then the text's; None: the base's."""
    return parse_language(metadata.get("language")) or detect(text)
