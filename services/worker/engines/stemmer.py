"""Light suffix stemmers for Portuguese and English (folded, accent-free words).

They follow the shape of RSLP (Portuguese) and Porter (English) with far fewer rules: the goal is
that the forms a customer and a base use for one idea ("cancelar", "cancelo", "cancelamento";
"installing", "installation") reduce to one stem. A wrong stem costs little, because the index
also matches stems that share a long prefix (see index.py); an over-eager rule that merges two
ideas costs more, hence the minimum stem lengths.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .text import Language


def _rules(text: str) -> tuple[tuple[str, str], ...]:
    """Rules written "suffix>replacement": "oes>ao s>" -> (("oes", "ao"), ("s", ""))."""
    return tuple((rule.partition(">")[0], rule.partition(">")[2]) for rule in text.split())


def _suffixes(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# Suffixes are tried longest first within each group; a rule applies only when the stem left
# over keeps at least MIN_STEM letters.
MIN_STEM = 3

_PT_PLURAL = _rules("oes>ao aes>ao ais>al eis>el ois>ol ns>m res>r zes>z les>l s>")
_PT_NOUN = _suffixes(
    """
    mente amentos imentos amento imento mento acoes icoes acao icao cao idades idade ismo ista
    avel ivel ador edor idor encia ancia ario ante ente agem eiro eira inho inha
    """
)
_PT_VERB = _suffixes(
    """
    ariamos eriamos iriamos assemos essemos issemos ariam eriam iriam aramos eramos iramos avamos
    assem essem issem arao erao irao ando endo indo avam aram eram iram arem erem irem aria eria
    iria amos emos imos ados adas idos idas ado ada ido ida ava uei ar er ir ou ei eu iu am em ia
    a e i o
    """
)
# "lapis", "bonus", "onibus": that s is not a plural; "aceitamos", "vendemos": verbs, not plurals.
_PT_NO_PLURAL = ("ss", "us", "is", "amos", "emos", "imos")

# English goes in Porter's order: plural, then inflection, then one derivational suffix, then
# a silent e: "applying" -> "apply" -> "app", and "applied", "applies", "apply" meet it there.
_EN_INFLECTIONS = _suffixes("ing ed")
_EN_SUFFIXES = _suffixes("ational ation ment ness able ible er est ly ful al")
# Porter's "(*S or *T) ion": "connection" meets "connect", "suspension" meets "suspend" by prefix.
_EN_ION = ("tion", "sion")
# Irregular verbs whose past forms share no stem with the present ("paid" is "pay").
_EN_IRREGULAR = {
    "paid": "pay", "sent": "send", "bought": "buy", "brought": "bring", "went": "go", "gone": "go",
    "got": "get", "gotten": "get", "gave": "give", "given": "give", "took": "take", "taken": "take",
    "came": "come", "broke": "break", "broken": "break", "made": "make", "said": "say", "told": "tell",
    "sold": "sell", "lost": "lose", "left": "leave", "kept": "keep", "thought": "think", "spent": "spend",
    "built": "build", "chose": "choose", "chosen": "choose", "forgot": "forget", "forgotten": "forget",
    "wrote": "write", "written": "write", "stole": "steal", "stolen": "steal", "drove": "drive",
    "ran": "run", "held": "hold", "found": "find", "felt": "feel", "heard": "hear", "met": "meet",
}  # fmt: skip


def _strip(word: str, suffix: str, replacement: str = "") -> str | None:
    """`word` without `suffix` (plus `replacement`), or None when the rule does not apply."""
    if word.endswith(suffix) and len(word) - len(suffix) >= MIN_STEM:
        return word[: len(word) - len(suffix)] + replacement
    return None


def _first(word: str, rules: tuple[str, ...]) -> str | None:
    for suffix in rules:
        stripped = _strip(word, suffix)
        if stripped is not None:
            return stripped
    return None


def _pt_singular(word: str) -> str:
    for suffix, replacement in _PT_PLURAL:
        stripped = _strip(word, suffix, replacement)
        if stripped is not None:
            return word if word.endswith(_PT_NO_PLURAL) else stripped
    return word


def stem_pt(word: str) -> str:
    """Portuguese stem: "devolucoes" -> "devolu", "devolver" -> "devolv", "cartoes" -> "cartao"."""
    if len(word) <= MIN_STEM or word.isdigit():
        return word
    word = _pt_singular(word)
    if word.endswith("ao"):
        # "cartao", "opcao": the nasal ending is part of the word; only "-cao" nouns shed it.
        return _first(word, ("acao", "icao", "cao")) or word
    if word.endswith(("guei", "quei")):  # "paguei" -> "pag", "fiquei" -> "fic"
        return word[:-4] + ("g" if word[-4] == "g" else "c")
    return _first(word, _PT_NOUN) or _first(word, _PT_VERB) or word


def _undouble(word: str) -> str:
    """A doubled final consonant goes: "stopp" -> "stop", "install" -> "instal"; "ss" stays."""
    if len(word) > MIN_STEM and word[-1] == word[-2] and word[-1] not in "aeiouys":
        return word[:-1]
    return word


def _en_singular(word: str) -> str:
    if word.endswith(("ss", "us", "is")) or not word.endswith("s"):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "shes", "ches", "xes")):
        return word[:-2]
    return word[:-1]


def stem_en(word: str) -> str:
    """English stem: "installation" -> "instal", "cancelled" -> "cancel", "prices" -> "pric"."""
    word = _EN_IRREGULAR.get(word, word)
    if len(word) <= MIN_STEM or word.isdigit():
        return word
    word = _en_singular(word)
    if word.endswith("ied") and len(word) > 4:
        word = word[:-3] + "y"
    elif not word.endswith("eed"):  # "speed", "need": that -ed is not a past tense
        word = _first(word, _EN_INFLECTIONS) or word
    word = _first(word, _EN_SUFFIXES) or word
    if word.endswith(_EN_ION) and len(word) - 3 >= MIN_STEM:
        word = word[:-3]
    word = _strip(word, "e") or word  # "move", "movement" -> "mov"
    if word.endswith("y") and len(word) > MIN_STEM and word[-2] not in "aeiou":
        word = word[:-1] + "i"  # "tries" and "tried" meet "try" before this; "company" -> "compani"
    return _undouble(word)


STEMMERS: Mapping[Language, Callable[[str], str]] = {"pt": stem_pt, "en": stem_en}
