"""Operators teach the bot, shared by the knowledge page's forms and the admin JSON API.

- "This meant entry X": the unanswered question's example, as the customer wrote it, becomes a
  taught phrasing of entry X (shared/phrasings.py); every worker applies it within one
  KB_RELOAD_INTERVAL_SECONDS, and the question is no longer listed.
- "Out of scope": the question is no longer listed.
- A suggested phrasing (a customer chose entry X after a question back) is accepted into the
  overlay or dismissed; neither happens without an operator. A question taught either way (its
  suggestion accepted, or the question attached to that entry) leaves both lists.
- A taught phrasing can be removed; the overlay downloads as a YAML patch for the base file.

The entries offered and checked are those of the base in force: the monitor reads KB_PATH as the
workers do (its own copy of the file, re-read when it changes). Every action is audited with its
outcome; the customer's words are not written to the audit log (it is kept for years), only a
short reference to the question and the entry.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, NoReturn

from aiohttp import web

from services.monitor.audit import Actor
from services.monitor.keys import AUDIT, BASE, STORE
from services.monitor.problems import unreachable
from services.worker.engines.kbfile import KnowledgeBaseError
from shared import phrasings, unanswered
from shared.store import REDIS_ERRORS
from shared.web import Problem

ENTRY_ID_MAX = 64


@dataclass(frozen=True, slots=True)
class View:
    """What the knowledge page and `GET /admin/api/knowledge` show of teaching."""

    rows: list[unanswered.Row]
    suggestions: list[unanswered.Suggestion]
    overlay: phrasings.Overlay
    entries: list[dict[str, str]]  # id and label of each entry of the base in force
    base_error: str  # why the monitor cannot read the base ("" when it can)
    unknown: frozenset[str]  # entry ids in the overlay that the base does not have

    @property
    def known_ids(self) -> frozenset[str]:
        return frozenset(entry["id"] for entry in self.entries)

    def to_dict(self) -> dict[str, Any]:
        return {
            "unanswered": [_row_dict(row) for row in self.rows],
            "suggestions": [_suggestion_dict(s) for s in self.suggestions],
            "phrasings": {
                "version": self.overlay.version,
                "entries": [
                    {"id": entry_id, "questions": list(questions), "in_base": entry_id not in self.unknown}
                    for entry_id, questions in self.overlay.phrasings.items()
                ],
            },
            "entries": self.entries,
            "base_error": self.base_error,
        }


async def view(app: web.Application, now: float | None = None) -> View:
    store = app[STORE]
    try:
        rows = await unanswered.report(store.redis, store.names, now)
        suggested = await unanswered.suggestions(store.redis, store.names, now)
        overlay = await phrasings.read(store.redis, store.names)
    except REDIS_ERRORS:
        raise unreachable("Redis", "the knowledge page cannot be read") from None
    try:
        knowledge = await app[BASE].knowledge()
    except (KnowledgeBaseError, OSError) as exc:
        return View(rows, suggested, overlay, [], f"KB_PATH: {exc}", frozenset())
    entries = [{"id": entry.id, "label": entry.label} for entry in knowledge.entries]
    return View(rows, suggested, overlay, entries, "", frozenset(knowledge.unknown(overlay.phrasings)))


async def export(app: web.Application) -> str:
    """The taught phrasings as a YAML patch for the base file."""
    store = app[STORE]
    try:
        overlay = await phrasings.read(store.redis, store.names)
    except REDIS_ERRORS:
        raise unreachable("Redis", "the taught phrasings cannot be read") from None
    try:
        unknown = frozenset((await app[BASE].knowledge()).unknown(overlay.phrasings))
    except (KnowledgeBaseError, OSError):
        unknown = frozenset()  # the header cannot say which are missing; the patch is still the overlay
    return phrasings.export_yaml(overlay, store.names.namespace, unknown)


async def attach(app: web.Application, actor: Actor, question: Any, entry_id: Any) -> str:
    """ "This meant entry X": teach the question's example to the entry; returns the phrasing."""
    question = _text_field("question", question, unanswered.QUESTION_MAX)
    entry_id = await _entry_in_base(app, actor, "teach_phrasing", entry_id)
    store, audit = app[STORE], app[AUDIT]
    try:
        example = await unanswered.example_of(store.redis, store.names, question)
        if example is None:
            await audit.record(actor, "teach_phrasing", entry_id, "refused", f"{_ref(question)} not listed")
            raise Problem(404, "question: not among the unanswered questions of the last 7 days")
        added = await _add(app, actor, "teach_phrasing", entry_id, example)
        await unanswered.mark_handled(store.redis, store.names, question)
        # Taught: no longer a suggestion for that entry either.
        await unanswered.forget_suggestion(store.redis, store.names, entry_id, question)
    except REDIS_ERRORS as exc:
        await _failed(app, actor, "teach_phrasing", entry_id, exc)
    await audit.record(
        actor, "teach_phrasing", entry_id, "ok", f"{_ref(question)}{'' if added else ', already taught'}"
    )
    return example


async def dismiss(app: web.Application, actor: Actor, question: Any) -> None:
    """ "Out of scope": the question is no longer listed."""
    question = _text_field("question", question, unanswered.QUESTION_MAX)
    store, audit = app[STORE], app[AUDIT]
    try:
        if await unanswered.example_of(store.redis, store.names, question) is None:
            await audit.record(actor, "dismiss_question", _ref(question), "refused", "not listed")
            raise Problem(404, "question: not among the unanswered questions of the last 7 days")
        await unanswered.mark_handled(store.redis, store.names, question)
    except REDIS_ERRORS as exc:
        await _failed(app, actor, "dismiss_question", _ref(question), exc)
    await audit.record(actor, "dismiss_question", _ref(question))


async def accept(app: web.Application, actor: Actor, entry_id: Any, question: Any) -> str:
    """A suggested phrasing goes into the overlay; returns the phrasing."""
    question = _text_field("question", question, unanswered.QUESTION_MAX)
    entry_id = await _entry_in_base(app, actor, "accept_phrasing", entry_id)
    store, audit = app[STORE], app[AUDIT]
    try:
        suggestion = await unanswered.find_suggestion(store.redis, store.names, entry_id, question)
        if suggestion is None:
            await audit.record(actor, "accept_phrasing", entry_id, "refused", f"{_ref(question)} not suggested")
            raise Problem(404, f"question: no suggested phrasing of entry {entry_id!r} is that question")
        added = await _add(app, actor, "accept_phrasing", entry_id, suggestion.example)
        await unanswered.forget_suggestion(store.redis, store.names, entry_id, question)
        # The question back it resolved is taught now: no longer listed as unanswered either.
        await unanswered.mark_handled(store.redis, store.names, question)
    except REDIS_ERRORS as exc:
        await _failed(app, actor, "accept_phrasing", entry_id, exc)
    await audit.record(
        actor, "accept_phrasing", entry_id, "ok", f"{_ref(question)}{'' if added else ', already taught'}"
    )
    return suggestion.example


async def dismiss_suggestion(app: web.Application, actor: Actor, entry_id: Any, question: Any) -> None:
    entry_id = _text_field("entry_id", entry_id, ENTRY_ID_MAX)
    question = _text_field("question", question, unanswered.QUESTION_MAX)
    store, audit = app[STORE], app[AUDIT]
    try:
        removed = await unanswered.forget_suggestion(store.redis, store.names, entry_id, question)
    except REDIS_ERRORS as exc:
        await _failed(app, actor, "dismiss_suggestion", entry_id, exc)
    if not removed:
        await audit.record(actor, "dismiss_suggestion", entry_id, "refused", f"{_ref(question)} not suggested")
        raise Problem(404, f"question: no suggested phrasing of entry {entry_id!r} is that question")
    await audit.record(actor, "dismiss_suggestion", entry_id, "ok", _ref(question))


async def remove(app: web.Application, actor: Actor, entry_id: Any, phrasing: Any) -> None:
    """Forget a taught phrasing (any entry's, even one the base no longer has)."""
    entry_id = _text_field("entry_id", entry_id, ENTRY_ID_MAX)
    phrasing = _text_field("phrasing", phrasing, phrasings.MAX_PHRASING)
    store, audit = app[STORE], app[AUDIT]
    try:
        removed = await phrasings.remove(store.redis, store.names, entry_id, phrasing)
    except REDIS_ERRORS as exc:
        await _failed(app, actor, "remove_phrasing", entry_id, exc)
    if not removed:
        await audit.record(actor, "remove_phrasing", entry_id, "refused", "no such taught phrasing")
        raise Problem(404, f"phrasing: entry {entry_id!r} has no such taught phrasing")
    await audit.record(actor, "remove_phrasing", entry_id, "ok", _ref(phrasing))


async def _entry_in_base(app: web.Application, actor: Actor, action: str, value: Any) -> str:
    entry_id = _text_field("entry_id", value, ENTRY_ID_MAX)
    try:
        knowledge = await app[BASE].knowledge()
    except (KnowledgeBaseError, OSError) as exc:
        await app[AUDIT].record(actor, action, entry_id, "failed", f"KB_PATH unreadable: {exc}")
        raise Problem(503, f"KB_PATH: the monitor cannot read the knowledge base: {exc}") from None
    if knowledge.unknown([entry_id]):
        await app[AUDIT].record(actor, action, entry_id, "refused", "no such entry")
        raise Problem(400, f"entry_id: the knowledge base has no entry {entry_id!r}")
    return entry_id


async def _add(app: web.Application, actor: Actor, action: str, entry_id: str, phrasing: str) -> bool:
    store = app[STORE]
    try:
        return await phrasings.add(store.redis, store.names, entry_id, phrasing)
    except phrasings.OverlayFull as exc:
        await app[AUDIT].record(actor, action, entry_id, "refused", str(exc))
        raise Problem(409, f"entry_id: {exc}; merge them into the file first (the YAML download)") from None


async def _failed(app: web.Application, actor: Actor, action: str, target: str, exc: BaseException) -> NoReturn:
    await app[AUDIT].record(actor, action, target, "failed", str(exc) or type(exc).__name__)
    raise unreachable("Redis", "nothing was changed") from None


def _text_field(name: str, value: Any, limit: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Problem(400, f"{name}: required, a non-blank string")
    if len(value) > limit:
        raise Problem(400, f"{name}: at most {limit} characters")
    return value.strip()


def _ref(text: str) -> str:
    """A question in the audit log: recognisable across entries, without the customer's words."""
    return "question " + hashlib.sha256(text.encode()).hexdigest()[:10]


def _row_dict(row: unanswered.Row) -> dict[str, Any]:
    return {
        "question": row.question,
        "example": row.example,
        "last_24h": row.last_24h,
        "last_7d": row.last_7d,
        "kinds": row.kinds,
        "last_seen": row.last_seen,
    }


def _suggestion_dict(suggestion: unanswered.Suggestion) -> dict[str, Any]:
    return {
        "entry_id": suggestion.entry_id,
        "question": suggestion.question,
        "example": suggestion.example,
        "count": suggestion.count,
        "last_seen": suggestion.last_seen,
    }
