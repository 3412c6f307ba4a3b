"""The admin's knowledge-base page: what each worker serves, a reload button, the questions the bot
could not answer over the last 24 hours and 7 days (shared/unanswered.py), also as CSV, and what
operators teach the bot from them (teaching.py): the forms behind its buttons post, then redirect
back here."""

from __future__ import annotations

import csv
import io
import time
from typing import Any

from aiohttp import web

from services.monitor.admin import pages, teaching
from services.monitor.admin.guard import SESSION
from services.monitor.keys import AUDIT, STORE
from services.monitor.problems import unreachable
from shared import kbstate, unanswered
from shared.logs import mask_pii
from shared.store import REDIS_ERRORS

CSV_COLUMNS = ("question", "example", "last_24h", "last_7d", "fallback", "clarify", "handoff", "last_seen")
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
        "kinds": "Fallback / asked back / handoff",
        "last_seen": "Last seen",
        "no_questions": "Nothing in the last 7 days.",
        "csv": "Download CSV",
        "actions": "What it meant",
        "entry_hint": "Entry id",
        "attach": "This meant this entry",
        "out_of_scope": "Out of scope",
        "no_base": "The monitor cannot read the knowledge base, so questions cannot be attached to entries",
        "suggestions": "Suggested phrasings",
        "suggestions_note": (
            "Customers who were asked back chose an entry: their own words may teach it."
            " Nothing is added until you accept."
        ),
        "suggested_for": "Suggested phrasing for entry",
        "times": "Times",
        "accept": "Accept",
        "dismiss": "Dismiss",
        "no_suggestions": "No suggestion in the last 8 days.",
        "taught": "Phrasings taught in the admin area",
        "taught_note": (
            "Every worker answers with them on top of the file."
            " Merge them into the file with the YAML patch, then remove them here."
        ),
        "entry": "Entry",
        "phrasing": "Phrasing",
        "not_in_base": "not in the base: ignored",
        "remove": "Remove",
        "no_taught": "Nothing taught yet.",
        "yaml": "Download as a YAML patch",
        "phrasings_applied": "Taught phrasings",
        "notice_taught": "Taught: every worker answers that question within a few seconds.",
        "notice_dismissed": "The question is out of scope: it is no longer listed.",
        "notice_accepted": "Accepted: every worker knows that phrasing within a few seconds.",
        "notice_suggestion_dismissed": "The suggestion was dismissed.",
        "notice_removed": "The phrasing was removed: every worker forgets it within a few seconds.",
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
        "kinds": "Sem resposta / perguntou de volta / transferida",
        "last_seen": "Visto por último",
        "no_questions": "Nada nos últimos 7 dias.",
        "csv": "Baixar CSV",
        "actions": "O que significava",
        "entry_hint": "Id da entrada",
        "attach": "Era esta entrada",
        "out_of_scope": "Fora do escopo",
        "no_base": "O monitor não consegue ler a base de conhecimento; por isso não dá para ligar perguntas a entradas",
        "suggestions": "Formulações sugeridas",
        "suggestions_note": (
            "Clientes que receberam uma pergunta de volta escolheram uma entrada: as palavras deles podem"
            " ensiná-la. Nada é acrescentado até você aceitar."
        ),
        "suggested_for": "Formulação sugerida para a entrada",
        "times": "Vezes",
        "accept": "Aceitar",
        "dismiss": "Descartar",
        "no_suggestions": "Nenhuma sugestão nos últimos 8 dias.",
        "taught": "Formulações ensinadas na área administrativa",
        "taught_note": (
            "Todos os workers respondem com elas além do arquivo."
            " Incorpore-as ao arquivo com o patch YAML e depois remova-as aqui."
        ),
        "entry": "Entrada",
        "phrasing": "Formulação",
        "not_in_base": "fora da base: ignorada",
        "remove": "Remover",
        "no_taught": "Nada ensinado ainda.",
        "yaml": "Baixar como patch YAML",
        "phrasings_applied": "Formulações ensinadas",
        "notice_taught": "Ensinado: todos os workers respondem essa pergunta em poucos segundos.",
        "notice_dismissed": "A pergunta está fora do escopo: não aparece mais na lista.",
        "notice_accepted": "Aceita: todos os workers conhecem essa formulação em poucos segundos.",
        "notice_suggestion_dismissed": "A sugestão foi descartada.",
        "notice_removed": "A formulação foi removida: todos os workers a esquecem em poucos segundos.",
    },
}


NOTICES = ("taught", "dismissed", "accepted", "suggestion_dismissed", "removed")


async def page(request: web.Request) -> web.Response:
    session = request[SESSION]
    store = request.app[STORE]
    now = time.time()
    try:
        workers = await kbstate.statuses(store.redis, store.names, now)
    except REDIS_ERRORS:
        raise unreachable("Redis", "the knowledge-base page cannot be read") from None
    taught = await teaching.view(request.app, now)
    locale = pages._locale(request)
    words = TEXTS.get(locale.language, TEXTS["en"])
    notice = request.query.get("notice", "")
    text = words["reloaded"] if notice == "reloaded" else words[f"notice_{notice}"] if notice in NOTICES else ""
    return pages.render(
        request,
        "knowledge.html",
        session=session,
        W=words,
        workers=workers,
        taught=taught,
        notice=text,
        OTHER=unanswered.OTHER,
    )


async def csv_export(request: web.Request) -> web.Response:
    store = request.app[STORE]
    try:
        rows = await unanswered.report(store.redis, store.names, limit=10_000)
    except REDIS_ERRORS:
        raise unreachable("Redis", "the questions cannot be read") from None
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([_cell(value) for value in _values(row)])
    response = web.Response(text=out.getvalue(), content_type="text/csv", charset="utf-8")
    response.headers["Content-Disposition"] = 'attachment; filename="unanswered-questions.csv"'
    return response


async def reload_form(request: web.Request) -> web.Response:
    session = request[SESSION]
    await pages._checked_form(request, session)
    store = request.app[STORE]
    try:
        version = await kbstate.request_reload(store.redis, store.names)
    except REDIS_ERRORS:
        raise unreachable("Redis", "the reload cannot be requested") from None
    await request.app[AUDIT].record(session.actor, "reload_knowledge_base", detail=f"version {version}")
    raise web.HTTPSeeOther("/admin/knowledge?notice=reloaded")


async def yaml_export(request: web.Request) -> web.Response:
    return yaml_download(await teaching.export(request.app))


def yaml_download(text: str) -> web.Response:
    response = web.Response(text=text, content_type="application/yaml", charset="utf-8")
    response.headers["Content-Disposition"] = 'attachment; filename="taught-phrasings.yaml"'
    return response


async def attach_form(request: web.Request) -> web.Response:
    session = request[SESSION]
    form = await pages._checked_form(request, session)
    await teaching.attach(request.app, session.actor, form.get("question"), form.get("entry_id"))
    raise _back("taught", "unanswered")


async def dismiss_form(request: web.Request) -> web.Response:
    session = request[SESSION]
    form = await pages._checked_form(request, session)
    await teaching.dismiss(request.app, session.actor, form.get("question"))
    raise _back("dismissed", "unanswered")


async def accept_form(request: web.Request) -> web.Response:
    session = request[SESSION]
    form = await pages._checked_form(request, session)
    await teaching.accept(request.app, session.actor, form.get("entry_id"), form.get("question"))
    raise _back("accepted", "suggestions")


async def dismiss_suggestion_form(request: web.Request) -> web.Response:
    session = request[SESSION]
    form = await pages._checked_form(request, session)
    await teaching.dismiss_suggestion(request.app, session.actor, form.get("entry_id"), form.get("question"))
    raise _back("suggestion_dismissed", "suggestions")


async def remove_form(request: web.Request) -> web.Response:
    session = request[SESSION]
    form = await pages._checked_form(request, session)
    await teaching.remove(request.app, session.actor, form.get("entry_id"), form.get("phrasing"))
    raise _back("removed", "taught")


def _back(notice: str, anchor: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(f"/admin/knowledge?notice={notice}#{anchor}")


def _values(row: unanswered.Row) -> list[Any]:
    seen = time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(row.last_seen))
    kinds = [row.kinds.get(kind, 0) for kind in unanswered.KINDS]
    # The question is the example normalised; normalised, a CPF or a "senha: ..." has lost the
    # punctuation the masker knows it by, so it is masked first and normalised after.
    question = unanswered.normalise(mask_pii(row.example)) if row.example else row.question
    return [question, row.example, row.last_24h, row.last_7d, *kinds, seen]


# What starts a formula in a spreadsheet (the full-width equals sign too: some convert it), also
# after leading spaces, which some of them skip.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\uff1d")


def _cell(value: Any) -> Any:
    """A customer's text leaves as the logs show it: personal data masked (shared/logs.py), and
    quoted when it starts like a formula, so a spreadsheet shows it rather than runs it."""
    if not isinstance(value, str):
        return value
    value = mask_pii(value)
    if value.lstrip(" ")[:1] in FORMULA_STARTS:
        return "'" + value
    return value
