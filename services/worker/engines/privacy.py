"""A customer asking about their own data (LGPD art. 18), recognised by the reply policy:
* "apagar meus dados", "delete my data": the bot asks to confirm, with two options; only the
  confirming option, as offered, erases (a forged or stale one is asked again, like any choice);
  while it is offered, a plain yes or no typed ("sim", "yes", "não", "cancel":
  `answer_to_confirmation`) chooses too, like an option's number or label; the reply that confirms
  the erasure has engine `ERASED`, and the worker erases everything held about the customer once
  it is sent (services/worker/privacy.py);
* "meus dados", "my data", "what data do you have about me": a request for a copy, recorded for the
  operators (reply engine `EXPORT`), who answer it from the admin area.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Literal

from .text import fold

ERASE_OPTION = "privacy:erase"
KEEP_OPTION = "privacy:keep"
OPTIONS = (ERASE_OPTION, KEEP_OPTION)
# Reply engines: the question and the answers that change nothing, the erasure's confirmation, and a
# recorded request for a copy (the worker acts on the last two once their reply stands).
ASKED = "privacy"  # its question back is never listed as unanswered (shared/unanswered.py POLICY_QUESTIONS)
ERASED = "privacy-erased"
EXPORT = "privacy-export"

Asked = Literal["erase", "export"]

_VERB_PT = (
    r"(?:apagar|apague|apaguem|apaga|excluir|exclua|excluam|exclui|deletar|delete|deletem|deleta|remover|remova"
    r"|removam|remove|eliminar"
    r"|elimine|limpar|limpe|esquecer|esqueca|esquece|destruir)"
)
_VERB_EN = r"(?:delete|erase|remove|wipe|forget|destroy|purge)"
_ERASE = re.compile(
    rf"\b{_VERB_PT}(?: \w+){{0,3}} (?:meus|minhas|os meus|todos os meus) (?:dados|informacoes)\b"
    rf"|\b{_VERB_EN}(?: \w+){{0,3}} my (?:personal )?(?:data|information|info|details)\b"
    r"|\bdireito (?:ao|de) esquecimento\b|\bright to (?:be forgotten|erasure)\b"
)
_EXPORT = re.compile(
    r"^(?:(?:quero|queria|ver|exportar|acessar|baixar|receber|pedir|solicito|solicitar|uma copia dos?|copia dos?)"
    r" )*(?:os |todos os )?meus dados(?: pessoais)?(?: por favor)?$"
    r"|^(?:(?:i want|i would like|see|export|access|download|get|request|a copy of) )*(?:all )?my (?:personal )?data"
    r"(?: please)?$"
    r"|\bquais dados (?:voces |vc |vcs )?(?:tem|guardam|possuem|armazenam) (?:sobre|de) mim\b"
    r"|\bwhat (?:personal )?data do you (?:have|hold|keep|store) (?:on|about) me\b"
)
_WORDS = re.compile(r"[a-z0-9]+")
# Every pattern above needs one of these (lower-cased, accents kept: "informações" has "informa").
_MARKERS = ("dado", "data", "informa", "info", "mim", "esquec", "forgot", "erasure", "details")


def asked(text: str) -> Asked | None:
    """Whether the message asks to erase, or for a copy of, the customer's data (either language)."""
    lowered = text.lower()
    if not any(marker in lowered for marker in _MARKERS):
        return None  # the common message: no folding, no patterns
    words = " ".join(_WORDS.findall(fold(text)))
    if _ERASE.search(words):
        return "erase"
    if _EXPORT.search(words):
        return "export"
    return None


# A plain yes or no typed while the erasure's confirmation is offered, as policy.choice_key leaves a
# message (lower case, no accents, words of letters and digits): the whole message, in the base's
# language, the customer's or English. An erasure cannot be undone, so only explicit yes words
# confirm it: "ok", "tá", "beleza", "yeah" or "sim, mas..." are ordinary messages, answered as
# before. "parar", "sair" and "stop" are not here: they are opt-outs (shared/contacts.py).
_YES: Mapping[str, frozenset[str]] = {
    "pt": frozenset(
        {
            "sim", "s", "sim sim", "pode", "pode sim", "sim pode", "pode apagar", "sim pode apagar",
            "pode apagar sim", "pode apagar tudo", "sim apague", "sim apagar tudo", "apague", "apaga", "apagar",
            "apague tudo", "quero", "sim quero", "confirmo", "sim confirmo", "confirmado", "sim por favor",
        }
    ),
    "en": frozenset(
        {
            "yes", "y", "sure", "yes please", "yes delete", "yes delete it", "yes delete everything",
            "delete", "delete it", "please delete", "please delete it", "confirm", "i confirm", "confirmed",
            "go ahead", "yes go ahead",
        }
    ),
    "es": frozenset(
        {
            "si", "s", "si si", "si borrar", "si borra", "si borralo", "borrar", "borra", "borralo",
            "puedes borrar", "confirmo", "si confirmo", "si por favor",
        }
    ),
}  # fmt: skip
_NO: Mapping[str, frozenset[str]] = {
    "pt": frozenset(
        {
            "nao", "n", "nao nao", "nao quero", "nao apague", "nao apagar", "nao pode apagar", "nao obrigado",
            "nao obrigada", "cancelar", "cancela", "cancele", "manter", "mantenha", "pode manter",
        }
    ),
    "en": frozenset(
        {
            "no", "n", "nope", "no thanks", "no thank you", "cancel", "keep", "keep it", "don t", "dont",
            "do not", "don t delete", "do not delete", "no don t",
        }
    ),
    "es": frozenset(
        {"no", "n", "no gracias", "cancelar", "cancela", "no borrar", "no borres", "mantener", "no quiero"}
    ),
}  # fmt: skip
# Every word above, whatever the language: the texts that may answer a confirmation (the worker reads
# the options offered only for a text that may choose one).
ANSWER_WORDS = frozenset().union(*_YES.values(), *_NO.values())


def answer_to_confirmation(key: str, languages: Iterable[str]) -> str | None:
    """`ERASE_OPTION` for a plain yes, `KEEP_OPTION` for a plain no, in one of `languages`; `key` is
    the message as policy.choice_key makes it ("Sim!" -> "sim")."""
    for language in languages:
        if key in _YES.get(language, ()):
            return ERASE_OPTION
        if key in _NO.get(language, ()):
            return KEEP_OPTION
    return None
