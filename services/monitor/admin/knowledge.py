"""The admin's knowledge-base page: what each worker serves, a reload button, and the questions the
bot could not answer over the last 24 hours and 7 days (shared/unanswered.py), also as CSV."""

from __future__ import annotations

import csv
import io
import time
from typing import Any

from aiohttp import web

from services.monitor.admin import pages
from services.monitor.keys import AUDIT, STORE
from shared import kbstate, unanswered
from shared.store import REDIS_ERRORS
from shared.web import Problem

CSV_COLUMNS = ("question", "example", "last_24h", "last_7d", "fallback", "low_confidence", "handoff", "last_seen")
# The page's own words (kept here rather than in i18n.py: this page is all about one concern).
TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "heading": "Knowledge base",
        "workers": "Base served by each worker",
        "instance": "Worker",
        "entries": "Entries",
        "loaded": "Loaded",
        "file": "File (fingerprint)",
        "refused": "Last reload refused",
        "none": "none",
        "no_workers": "No worker has reported yet.",
        "reload": "Reload the knowledge base on every worker",
        "reloaded": "Reload requested: every worker reloads its file within a few seconds.",
        "questions": "Questions the bot could not answer",
        "question": "Question (normalised)",
        "example": "As written",
        "last_24h": "24 h",
        "last_7d": "7 days",
        "kinds": "Fallback / low confidence / handoff",
        "last_seen": "Last seen",
        "no_questions": "Nothing in the last 7 days.",
        "csv": "Download CSV",
    },
    "pt-BR": {
        "heading": "Base de conhecimento",
        "workers": "Base em uso em cada worker",
        "instance": "Worker",
        "entries": "Entradas",
        "loaded": "Carregada em",
        "file": "Arquivo (impressão digital)",
        "refused": "Última recarga recusada",
        "none": "nenhuma",
        "no_workers": "Nenhum worker informou ainda.",
        "reload": "Recarregar a base em todos os workers",
        "reloaded": "Recarga pedida: cada worker relê o arquivo em poucos segundos.",
        "questions": "Perguntas que o bot não soube responder",
        "question": "Pergunta (normalizada)",
        "example": "Como foi escrita",
        "last_24h": "24 h",
        "last_7d": "7 dias",
        "kinds": "Sem resposta / baixa confiança / transferida",
        "last_seen": "Visto por último",
        "no_questions": "Nada nos últimos 7 dias.",
        "csv": "Baixar CSV",
    },
}


async def page(request: web.Request) -> web.Response:
    session = await pages._session_or_login(request)
    store = request.app[STORE]
    now = time.time()
    try:
        workers = await kbstate.statuses(store.redis, store.names, now)
        rows = await unanswered.report(store.redis, store.names, now)
    except REDIS_ERRORS:
        raise Problem(
            503, "Redis is unreachable; the knowledge-base page cannot be read", headers={"Retry-After": "5"}
        ) from None
    locale = pages._locale(request)
    words = TEXTS.get(locale.language, TEXTS["en"])
    notice = words["reloaded"] if request.query.get("notice") == "reloaded" else ""
    return pages.render(request, "knowledge.html", session=session, W=words, workers=workers, rows=rows, notice=notice)


async def csv_export(request: web.Request) -> web.Response:
    await pages._session_or_login(request)
    store = request.app[STORE]
    try:
        rows = await unanswered.report(store.redis, store.names, limit=10_000)
    except REDIS_ERRORS:
        raise Problem(503, "Redis is unreachable; the questions cannot be read", headers={"Retry-After": "5"}) from None
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([_cell(value) for value in _values(row)])
    response = web.Response(text=out.getvalue(), content_type="text/csv", charset="utf-8")
    response.headers["Content-Disposition"] = 'attachment; filename="unanswered-questions.csv"'
    return response


async def reload_form(request: web.Request) -> web.Response:
    session = await pages._session_or_login(request)
    await pages._checked_form(request, session)
    store = request.app[STORE]
    try:
        version = await kbstate.request_reload(store.redis, store.names)
    except REDIS_ERRORS:
        raise Problem(
            503, "Redis is unreachable; the reload cannot be requested", headers={"Retry-After": "5"}
        ) from None
    await request.app[AUDIT].record(session.actor, "reload_knowledge_base", detail=f"version {version}")
    raise web.HTTPSeeOther("/admin/knowledge?notice=reloaded")


def _values(row: unanswered.Row) -> list[Any]:
    seen = time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(row.last_seen))
    kinds = [row.kinds.get(kind, 0) for kind in unanswered.KINDS]
    return [row.question, row.example, row.last_24h, row.last_7d, *kinds, seen]


def _cell(value: Any) -> Any:
    """A text starting like a formula is quoted, so a spreadsheet shows it rather than runs it."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
