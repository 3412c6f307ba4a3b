"""The knowledge-base file (SPEC section 6): loading and validation.

A bad file stops the worker at start, so every error names the file, the entry (its 1-based
position and, when known, its id) and what is wrong, in one line an operator can act on:

    kb.yaml: entry 3 (id 'frete'): 'answer' must be a non-empty string
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import yaml

from .text import LANGUAGES, Language

_TOP_KEYS = frozenset({"language", "fallback", "entries", "translations"})
_ENTRY_KEYS = frozenset({"id", "questions", "answer", "tags", "buttons", "title", "translations"})
# A translation of the base (`translations: {en: {fallback}}`) or of an entry
# (`translations: {en: {questions, answer, title?, buttons?}}`): see `KnowledgeBase.translated`.
_TOP_TRANSLATION_KEYS = frozenset({"fallback"})
_ENTRY_TRANSLATION_KEYS = frozenset({"questions", "answer", "title", "buttons"})
# WhatsApp's reply buttons: at most 3, titles of at most 20 characters; Telegram's callback data
# (which carries the label back) holds at most 64 bytes.
MAX_BUTTONS = 3
MAX_BUTTON_CHARS = 20
MAX_BUTTON_BYTES = 64
# An entry offered as an option shows its title: WhatsApp list rows hold 24 characters. Its id comes
# back as Telegram callback data (64 bytes at most).
MAX_TITLE_CHARS = 24
MAX_ID_BYTES = 64


class KnowledgeBaseError(ValueError):
    """The knowledge-base file is missing or malformed; the message says where and why."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One answer of the base and the questions it answers."""

    id: str
    questions: tuple[str, ...]
    answer: str
    tags: tuple[str, ...] = ()
    # Quick replies offered with the answer; a tap comes back as a message with the label.
    buttons: tuple[str, ...] = ()
    # Its label when offered as an option (SPEC section 6); "" in the file: its first question, shortened.
    title: str = ""
    # The entry in other languages (the same id, tags; its own questions, answer, title, buttons).
    translations: Mapping[Language, Entry] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.title or shorten(self.questions[0], MAX_TITLE_CHARS)


@dataclass(frozen=True, slots=True)
class KnowledgeBase:
    language: Language
    fallback: str
    entries: tuple[Entry, ...]
    # The base's fallback in each language it is translated into (`translations` in the file).
    fallbacks: Mapping[Language, str] = field(default_factory=dict)

    @property
    def translations(self) -> tuple[Language, ...]:
        """The other languages this base answers in."""
        return tuple(language for language in LANGUAGES if language in self.fallbacks)

    def translated(self, language: Language) -> KnowledgeBase:
        """This base in `language`: every entry's translation where it has one, else the entry as
        written (so the same ids answer in every language)."""
        entries = tuple(entry.translations.get(language, entry) for entry in self.entries)
        return KnowledgeBase(language, self.fallbacks[language], entries)

    @classmethod
    def load(cls, path: Path) -> KnowledgeBase:
        """Read and validate a base; raises KnowledgeBaseError naming file, entry and problem."""
        return parse(_read_yaml(path), str(path))

    def with_phrasings(self, overlay: Mapping[str, Sequence[str]]) -> KnowledgeBase:
        """This base with the operators' taught phrasings (shared/phrasings.py) appended to each
        entry's questions; one the entry already asks (ignoring case and spacing) is not repeated,
        and phrasings of an entry this base does not have are left out (see `unknown`)."""
        return replace(self, entries=tuple(_taught(entry, overlay.get(entry.id, ())) for entry in self.entries))

    def unknown(self, entry_ids: Iterable[str]) -> list[str]:
        """Which of `entry_ids` this base has no entry for, sorted."""
        known = {entry.id for entry in self.entries}
        return sorted(set(entry_ids) - known)


def _taught(entry: Entry, phrasings: Sequence[str]) -> Entry:
    seen = {_folded(question) for question in entry.questions}
    extra: list[str] = []
    for phrasing in phrasings:
        if phrasing.strip() and _folded(phrasing) not in seen:
            seen.add(_folded(phrasing))
            extra.append(phrasing.strip())
    return replace(entry, questions=entry.questions + tuple(extra)) if extra else entry


def _folded(text: str) -> str:
    return " ".join(text.casefold().split())


def _read_yaml(path: Path) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KnowledgeBaseError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KnowledgeBaseError(f"{path}: cannot read the file: {exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else "?"
        raise KnowledgeBaseError(f"{path}: invalid YAML at line {line}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise KnowledgeBaseError(f"{path}: invalid YAML: {exc}") from None


def parse(data: object, source: str) -> KnowledgeBase:
    """Validate already-parsed YAML; `source` names it in error messages."""
    if not isinstance(data, Mapping):
        raise KnowledgeBaseError(f"{source}: the top level must be a mapping with 'language', 'fallback' and 'entries'")
    top = cast(Mapping[str, Any], data)
    _reject_unknown_keys(top, _TOP_KEYS, source)
    language = _language(top.get("language"), source)
    fallback = _fallback(top, source)
    entries_data = top.get("entries")
    if not isinstance(entries_data, list) or not entries_data:
        raise KnowledgeBaseError(f"{source}: 'entries' must be a non-empty list")
    fallbacks = _top_translations(top.get("translations"), language, source)
    entries = tuple(_entry(item, index, source, fallbacks) for index, item in enumerate(entries_data, start=1))
    _reject_duplicate_ids(entries, source)
    return KnowledgeBase(language, fallback, entries, fallbacks)


def _top_translations(value: object, language: Language, source: str) -> dict[Language, str]:
    """The base's `translations`: for each other language, its fallback."""
    if value is None:
        return {}
    where = f"{source}: 'translations'"
    if not isinstance(value, Mapping):
        raise KnowledgeBaseError(f"{where} must map a language to its 'fallback'")
    fallbacks: dict[Language, str] = {}
    for code, data in cast(Mapping[str, Any], value).items():
        other = _language(code, where)
        if other == language:
            raise KnowledgeBaseError(f"{where}: {code!r} is the base's own language")
        if not isinstance(data, Mapping):
            raise KnowledgeBaseError(f"{where}: {code!r} must be a mapping with 'fallback'")
        _reject_unknown_keys(cast(Mapping[str, Any], data), _TOP_TRANSLATION_KEYS, f"{where}: {code!r}")
        fallbacks[other] = _fallback(cast(Mapping[str, Any], data), f"{where}: {code!r}")
    return fallbacks


def _entry_translations(
    value: object, base: Entry, fallbacks: Mapping[Language, str], where: str
) -> dict[Language, Entry]:
    """An entry's `translations`, each a language the base's `translations` declares."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise KnowledgeBaseError(f"{where}: 'translations' must map a language to 'questions' and 'answer'")
    translated: dict[Language, Entry] = {}
    for code, data in cast(Mapping[str, Any], value).items():
        language = _language(code, f"{where}: 'translations'")
        here = f"{where}: translation {code!r}"
        if language not in fallbacks:
            raise KnowledgeBaseError(f"{here}: the base has no 'translations: {{{code}: {{fallback: ...}}}}'")
        if not isinstance(data, Mapping):
            raise KnowledgeBaseError(f"{here}: must be a mapping with 'questions' and 'answer'")
        fields = cast(Mapping[str, Any], data)
        _reject_unknown_keys(fields, _ENTRY_TRANSLATION_KEYS, here)
        translated[language] = replace(
            base,
            questions=_strings(fields.get("questions"), "questions", here, required=True),
            answer=_answer(fields.get("answer"), here),
            buttons=_buttons(fields.get("buttons"), here),
            title=_title(fields.get("title"), here),
        )
    return translated


def _language(value: object, source: str) -> Language:
    # "pt-BR" and "en_US" name the same normalisation as "pt" and "en".
    code = value.strip().lower().replace("_", "-").split("-")[0] if isinstance(value, str) else None
    for language in LANGUAGES:
        if code == language:
            return language
    raise KnowledgeBaseError(f"{source}: 'language' must be 'pt' or 'en', got {value!r}")


def _fallback(top: Mapping[str, Any], source: str) -> str:
    value = top.get("fallback")
    if not isinstance(value, str) or not value.strip():
        raise KnowledgeBaseError(f"{source}: 'fallback' must be a non-empty string")
    return value.strip()


def _entry(item: object, index: int, source: str, fallbacks: Mapping[Language, str]) -> Entry:
    where = f"{source}: entry {index}"
    if not isinstance(item, Mapping):
        raise KnowledgeBaseError(f"{where}: must be a mapping with 'id', 'questions' and 'answer'")
    data = cast(Mapping[str, Any], item)
    raw_id = data.get("id")
    if raw_id is None:
        raise KnowledgeBaseError(f"{where}: 'id' is missing")
    if not isinstance(raw_id, str | int) or isinstance(raw_id, bool) or not str(raw_id).strip():
        raise KnowledgeBaseError(f"{where}: 'id' must be a non-empty string")
    entry_id = str(raw_id).strip()
    where = f"{where} (id {entry_id!r})"
    if len(entry_id.encode()) > MAX_ID_BYTES:
        raise KnowledgeBaseError(f"{where}: 'id' is longer than {MAX_ID_BYTES} bytes")
    _reject_unknown_keys(data, _ENTRY_KEYS, where)
    entry = Entry(
        id=entry_id,
        questions=_strings(data.get("questions"), "questions", where, required=True),
        answer=_answer(data.get("answer"), where),
        tags=_strings(data.get("tags"), "tags", where, required=False),
        buttons=_buttons(data.get("buttons"), where),
        title=_title(data.get("title"), where),
    )
    return replace(entry, translations=_entry_translations(data.get("translations"), entry, fallbacks, where))


def _title(value: object, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or not value.strip() or len(value.strip()) > MAX_TITLE_CHARS:
        raise KnowledgeBaseError(f"{where}: 'title' must be a non-empty string of at most {MAX_TITLE_CHARS} characters")
    return value.strip()


def shorten(text: str, limit: int) -> str:
    """`text` cut at a word to at most `limit` characters, an ellipsis marking the cut."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if " " in cut:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:.?!") + "…"


def _buttons(value: object, where: str) -> tuple[str, ...]:
    buttons = _strings(value, "buttons", where, required=False)
    if len(buttons) > MAX_BUTTONS:
        raise KnowledgeBaseError(f"{where}: 'buttons' has {len(buttons)} labels, at most {MAX_BUTTONS} are allowed")
    for label in buttons:
        if len(label) > MAX_BUTTON_CHARS or len(label.encode()) > MAX_BUTTON_BYTES:
            raise KnowledgeBaseError(f"{where}: 'buttons' label {label!r} is longer than {MAX_BUTTON_CHARS} characters")
    if len(set(buttons)) < len(buttons):
        raise KnowledgeBaseError(f"{where}: 'buttons' has the same label twice")
    return buttons


def _answer(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise KnowledgeBaseError(f"{where}: 'answer' must be a non-empty string")
    return value.strip()


def _strings(value: object, key: str, where: str, *, required: bool) -> tuple[str, ...]:
    if value is None and not required:
        return ()
    problem = f"{where}: {key!r} must be a {'non-empty ' if required else ''}list of non-empty strings"
    if not isinstance(value, list) or (required and not value):
        raise KnowledgeBaseError(problem)
    if not all(isinstance(v, str) and v.strip() for v in value):
        raise KnowledgeBaseError(problem)
    return tuple(str(v).strip() for v in value)


def _reject_unknown_keys(data: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        expected = ", ".join(sorted(allowed))
        raise KnowledgeBaseError(f"{where}: unknown key {unknown[0]!r} (expected {expected})")


def _reject_duplicate_ids(entries: tuple[Entry, ...], source: str) -> None:
    first_seen: dict[str, int] = {}
    for index, entry in enumerate(entries, start=1):
        if entry.id in first_seen:
            raise KnowledgeBaseError(
                f"{source}: entry {index} (id {entry.id!r}): duplicate id, already used by entry {first_seen[entry.id]}"
            )
        first_seen[entry.id] = index
