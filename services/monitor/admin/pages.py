"""The admin area's HTML: login, the dashboard (and the fragment it refreshes itself with), one
conversation, and the forms behind its buttons (post, then redirect back: a reload never repeats an
action)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from services.monitor.admin import auth, charts, conversations, inbox, operations, outbound
from services.monitor.admin.auth import LockedOut, Session
from services.monitor.admin.guard import SESSION, STATIC_ROUTE, audit_failure, current_session
from services.monitor.admin.i18n import Locale, negotiate
from services.monitor.audit import Actor
from services.monitor.keys import AUDIT, AUTH, SETTINGS, TEMPLATES
from services.monitor.problems import unreachable
from shared.store import REDIS_ERRORS
from shared.web import Problem

HERE = Path(__file__).resolve().parent
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"
NOTICES = ("replayed", "discarded", "replied", "released", "signed_out", "assigned", "outbound_sent")


def templates() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES_DIR), autoescape=True, undefined=StrictUndefined, trim_blocks=True
    )


def _locale(request: web.Request) -> Locale:
    zone = request.app[SETTINGS].business_timezone
    return Locale(negotiate(request.headers.get("Accept-Language")), zone=zone, now=time.time())


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    locale = _locale(request)
    router = request.app.router

    def static(name: str) -> str:
        return str(router[STATIC_ROUTE].url_for(filename=name))

    html = request.app[TEMPLATES].get_template(template).render(L=locale, static=static, **context)
    response = web.Response(text=html, status=status, content_type="text/html")
    response.headers["Vary"] = "Accept-Language, Cookie"
    return response


def _disabled(request: web.Request) -> web.Response:
    return render(request, "login.html", status=503, disabled=True, error=_locale(request).t("disabled"), notice="")


# Login -----------------------------------------------------------------------------------------
async def login_page(request: web.Request) -> web.Response:
    if not request.app[AUTH].enabled:
        return _disabled(request)
    if await current_session(request) is not None:
        raise web.HTTPSeeOther("/admin")
    notice = request.query.get("notice", "")
    text = _locale(request).t(f"notice_{notice}") if notice in NOTICES else ""
    return render(request, "login.html", disabled=False, error="", notice=text, operator="")


async def login(request: web.Request) -> web.Response:
    admin = request.app[AUTH]
    if not admin.enabled:
        return _disabled(request)
    if not auth.same_origin(request):
        raise Problem(403, "Origin: the login form must be posted from this site")
    form = await request.post()
    operator = str(form.get("operator", "")).strip()[: auth.OPERATOR_MAX]
    token = str(form.get("token", ""))
    client = auth.client_of(request, request.app[SETTINGS].trusted_proxies)
    locale = _locale(request)
    actor = Actor(operator or "?", client)

    def again(status: int, error: str, headers: dict[str, str] | None = None) -> web.Response:
        response = render(
            request, "login.html", status=status, disabled=False, error=error, notice="", operator=operator
        )
        response.headers.update(headers or {})
        return response

    try:
        accepted = await admin.check_token(client, token)
    except LockedOut as locked:
        if locked.audit:
            await audit_failure(request, actor, "login", "locked_out")
        retry = str(locked.retry_after)
        return again(429, locale.t("locked", seconds=retry), {"Retry-After": retry})
    except REDIS_ERRORS:
        raise unreachable("Redis", "nobody can sign in now") from None
    if not accepted:
        await audit_failure(request, actor, "login", "wrong_token")
        return again(401, locale.t("wrong_token"))
    if not operator:
        return again(400, locale.t("missing_operator"))
    session = await admin.open_session(operator, client)
    await request.app[AUDIT].record(session.actor, "login")
    response = web.HTTPSeeOther("/admin")
    auth.set_session_cookie(request, response, session, admin.session_s)
    raise response


async def logout(request: web.Request) -> web.Response:
    session = request[SESSION]
    await _checked_form(request, session)
    await request.app[AUTH].close_session(session.id)
    await request.app[AUDIT].record(session.actor, "logout")
    response = web.HTTPSeeOther("/admin/login?notice=signed_out")
    auth.clear_session_cookie(response)
    raise response


# Dashboard -------------------------------------------------------------------------------------
async def dashboard(request: web.Request) -> web.Response:
    session = request[SESSION]
    notice = request.query.get("notice", "")
    context = await _dashboard_context(request, session)
    text = _locale(request).t(f"notice_{notice}") if notice in NOTICES else ""
    return render(request, "dashboard.html", notice=text, **context)


async def fragment(request: web.Request) -> web.Response:
    """The refreshable part of the dashboard, for its script; 401 once the session is gone (guard.py)."""
    return render(request, "_dashboard.html", **await _dashboard_context(request, request[SESSION]))


async def _dashboard_context(request: web.Request, session: Session) -> dict[str, Any]:
    page = operations.handoffs_page(request.query.get("handoffs_page"))
    data = await operations.overview(request.app, page)
    locale = _locale(request)
    series = data["day"]["series"] if data["day"] else []
    labels = {"messages": locale.t("legend_messages"), "errors": locale.t("legend_errors")}
    services = data["stats"]["services"] or []
    return data | {
        "session": session,
        "refresh_s": request.app[SETTINGS].admin_refresh_s,
        "messages_chart": charts.messages_chart(series, locale.number, labels),
        "latency_chart": charts.latency_chart(series, locale.number),
        "youngest": min((s["uptime_seconds"] for s in services), default=None),
        "memory_peak": max((s["memory_percent"] for s in services), default=None),
        "memory_total": sum(s["memory_rss_bytes"] for s in services) if services else None,
    }


async def conversation_page(request: web.Request) -> web.Response:
    session = request[SESSION]
    data = await operations.conversation(request.app, session.actor, request.query.get("id", ""))
    notice = request.query.get("notice", "")
    text = _locale(request).t(f"notice_{notice}") if notice in NOTICES else ""
    return render(request, "conversation.html", session=session, notice=text, **data)


async def conversations_page(request: web.Request) -> web.Response:
    session = request[SESSION]
    query, number = conversations.parse_request(request.query.get("q", ""), request.query.get("page", ""))
    page = await conversations.checked_page(request.app, query, number)
    return render(request, "conversations.html", session=session, page=page)


async def inbox_page(request: web.Request) -> web.Response:
    session = request[SESSION]
    notice = request.query.get("notice", "")
    text = _locale(request).t(f"notice_{notice}") if notice in NOTICES else ""
    waiting = await inbox.checked_queue(request.app)
    return render(request, "inbox.html", session=session, notice=text, waiting=waiting)


async def inbox_fragment(request: web.Request) -> web.Response:
    """The queue alone, for the inbox page's script to swap in when the stream says it changed."""
    waiting = await inbox.checked_queue(request.app)
    return render(request, "_inbox.html", session=request[SESSION], waiting=waiting)


# Actions ---------------------------------------------------------------------------------------
async def assign_form(request: web.Request) -> web.Response:
    session = request[SESSION]
    form = await _checked_form(request, session)
    conversation_id = operations.identifier("conversation_id", form.get("conversation_id"))
    await inbox.assign(request.app, session.actor, conversation_id)
    raise _back(form, "assigned", "handoffs")


async def replay_form(request: web.Request) -> web.Response:
    session = request[SESSION]
    form = await _checked_form(request, session)
    await operations.replay(request.app, session.actor, form.get("message_id"))
    raise _back(form, "replayed", "dead-letters")


async def discard_form(request: web.Request) -> web.Response:
    session = request[SESSION]
    form = await _checked_form(request, session)
    await operations.discard(request.app, session.actor, form.get("message_id"))
    raise _back(form, "discarded", "dead-letters")


async def reply_form(request: web.Request) -> web.Response:
    session = request[SESSION]
    form = await _checked_form(request, session)
    await operations.reply_as_agent(request.app, session.actor, form.get("conversation_id"), form.get("text"))
    raise _back(form, "replied", "handoffs")


async def release_form(request: web.Request) -> web.Response:
    session = request[SESSION]
    form = await _checked_form(request, session)
    await operations.release(request.app, session.actor, form.get("conversation_id"))
    raise _back(form, "released", "handoffs")


async def _checked_form(request: web.Request, session: Session) -> dict[str, str]:
    """The posted fields, once the request proved it comes from our own page."""
    if not auth.same_origin(request):
        raise Problem(403, "Origin: admin actions must be posted from the admin pages")
    form = await request.post()
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    if not auth.csrf_ok(session, fields.get("csrf")):
        raise Problem(403, "csrf: missing or wrong form token; reload the page")
    return fields


def _back(form: dict[str, str], notice: str, anchor: str) -> web.HTTPSeeOther:
    """Back where the form was, never anywhere else (no open redirect)."""
    target = form.get("next", "")
    conversation = form.get("conversation_id", "")
    if target == "conversation" and conversation:
        return web.HTTPSeeOther(f"/admin/conversation?{urlencode({'id': conversation, 'notice': notice})}")
    if target == "inbox":
        return web.HTTPSeeOther(f"/admin/inbox?notice={notice}")
    return web.HTTPSeeOther(f"/admin?notice={notice}#{anchor}")


# Proactive messages ----------------------------------------------------------------------------
OUTBOUND_FIELDS = ("channel", "to", "text", "template_name", "template_language", "template_components")


async def outbound_page(request: web.Request) -> web.Response:
    """The form, prefilled from the query (the conversation view links here with channel and to)."""
    form = {name: request.query[name] for name in OUTBOUND_FIELDS[:2] if name in request.query}
    return render(request, "outbound.html", session=request[SESSION], form=form, error="")


async def outbound_form(request: web.Request) -> web.Response:
    session = request[SESSION]
    form = await _checked_form(request, session)
    try:
        reply = await outbound.send(request.app, session.actor, outbound.request_of(form))
    except Problem as problem:
        if problem.status >= 500:
            raise
        # Refused (a field, the 24-hour window, an opt-out): the form again, as filled, saying why.
        kept = {name: form[name] for name in OUTBOUND_FIELDS if name in form}
        return render(request, "outbound.html", status=problem.status, session=session, form=kept, error=problem.detail)
    target = urlencode({"id": reply.conversation_id, "notice": "outbound_sent"})
    raise web.HTTPSeeOther(f"/admin/conversation?{target}")
