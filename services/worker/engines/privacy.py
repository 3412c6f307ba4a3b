"""A customer asking about their own data (LGPD art. 18), recognised by the reply policy:
* "apagar meus dados", "delete my data": the bot asks to confirm, with two options; only the
  confirming option, as offered, erases (a forged or stale one is asked again, like any choice);
  the reply that confirms the erasure has engine `ERASED`, and the worker erases everything held
  about the customer once it is sent (services/worker/privacy.py);
* "meus dados", "my data", "what data do you have about me": a request for a copy, recorded for the
  operators (reply engine `EXPORT`), who answer it from the admin area.
"""

from __future__ import annotations

import re
from typing import Literal

from .text import fold

ERASE_OPTION = "privacy:erase"
KEEP_OPTION = "privacy:keep"
OPTIONS = (ERASE_OPTION, KEEP_OPTION)
# Reply engines: the question and the answers that change nothing, the erasure's confirmation, and a
# recorded request for a copy (the worker acts on the last two once their reply stands).
ASKED = "privacy"
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
