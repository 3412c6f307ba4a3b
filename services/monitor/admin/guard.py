"""Deny by default: every /admin route needs an operator, checked once here, before its handler.

Only the routes named in PUBLIC are open: the login form (which signs an operator in) and the
static assets (a stylesheet and a script, no data). Anything else under /admin, including a route
added tomorrow, is refused to an anonymous request in the way its kind of client expects:
- the JSON API (`/admin/api/...`): `Authorization: Bearer <ADMIN_TOKEN>` or the dashboard's session,
  which must also send its `X-CSRF-Token` on anything that changes state; otherwise 401
  problem+json (503 while ADMIN_TOKEN is not set);
- the dashboard's refresh (`/admin/fragment`): its session only; otherwise 401 problem+json, which
  its script reads as "signed out";
- every page and form: the session cookie, or the bearer token as a view-only session; otherwise
  a redirect to the login page.
Handlers then read who it is from the request: SESSION on pages and forms, ACTOR on the API.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from services.monitor.admin import auth
from services.monitor.admin.auth import LockedOut, Session
from services.monitor.audit import Actor
from services.monitor.keys import AUDIT, AUTH, SETTINGS
from services.monitor.problems import admin_disabled, unreachable
from shared.store import REDIS_ERRORS
from shared.web import Problem

LOGIN_ROUTE = "admin-login"
STATIC_ROUTE = "admin-static"
# The allow-list, by route name: a route is public only if it is named here.
PUBLIC = frozenset({LOGIN_ROUTE, STATIC_ROUTE})
AREA = "/admin"
API_PREFIX = "/admin/api/"
# Read by the pages' scripts: a lost session is a 401 they act on, never a redirect to follow.
FRAGMENTS = frozenset({"/admin/fragment", "/admin/inbox/fragment", "/admin/events"})
BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="atendimento-admin"'}

SESSION = web.RequestKey("admin_session", Session)
ACTOR = web.RequestKey("admin_actor", Actor)


@web.middleware
async def admin_guard(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    resource = _guarded_resource(request)
    if resource is not None:
        if resource.canonical.startswith(API_PREFIX):
            request[ACTOR] = await _api_actor(request)
        elif resource.canonical in FRAGMENTS:
            request[SESSION] = await _fragment_session(request)
        else:
            request[SESSION] = await _page_session(request)
    return await handler(request)


def _guarded_resource(request: web.Request) -> web.AbstractResource | None:
    """The /admin resource this request reached, unless it is public; None outside /admin and for
    a path or method with no route (its 404 or 405 has nothing behind it to protect)."""
    match = request.match_info
    resource = match.route.resource
    if match.http_exception is not None or resource is None or resource.name in PUBLIC:
        return None
    canonical = resource.canonical
    return resource if canonical == AREA or canonical.startswith(AREA + "/") else None


async def current_session(request: web.Request) -> Session | None:
    try:
        return await request.app[AUTH].session(request.cookies.get(auth.COOKIE, ""))
    except REDIS_ERRORS:
        raise unreachable("Redis", "sessions cannot be checked") from None


async def _page_session(request: web.Request) -> Session:
    """The cookie's session; or, for `Authorization: Bearer <ADMIN_TOKEN>` (SPEC 5), a view-only one
    (its CSRF token is known to nobody: the forms need a signed-in session)."""
    actor = await bearer_actor(request)
    if actor is not None:
        return Session("", actor.name, actor.client, secrets.token_urlsafe(32), time.time())
    session = await current_session(request)
    if session is None:
        raise web.HTTPSeeOther("/admin/login")
    return session


async def _fragment_session(request: web.Request) -> Session:
    session = await current_session(request)
    if session is None:
        raise Problem(401, "admin session: missing or expired; sign in again")
    return session


async def _api_actor(request: web.Request) -> Actor:
    if not request.app[AUTH].enabled:
        raise admin_disabled()
    actor = await bearer_actor(request)
    if actor is not None:
        return actor
    session = await current_session(request)
    if session is None:
        raise Problem(401, "Authorization: a bearer token or an admin session is required", headers=BEARER_CHALLENGE)
    if request.method not in ("GET", "HEAD") and not (
        auth.same_origin(request) and auth.csrf_ok(session, request.headers.get("X-CSRF-Token"))
    ):
        raise Problem(403, "X-CSRF-Token: missing or wrong for this session")
    return session.actor


async def bearer_actor(request: web.Request) -> Actor | None:
    """The script behind `Authorization: Bearer <ADMIN_TOKEN>`; None without that header."""
    token = auth.bearer_of(request)
    if token is None:
        return None
    admin = request.app[AUTH]
    if not admin.enabled:
        raise admin_disabled()
    actor = Actor("api", auth.client_of(request, request.app[SETTINGS].trusted_proxies))
    try:
        accepted = await admin.check_token(actor.client, token)
    except LockedOut as locked:
        if locked.audit:
            await audit_failure(request, actor, "api_auth", "locked_out")
        raise Problem(
            429,
            "Authorization: too many wrong tokens from this client",
            headers={"Retry-After": str(locked.retry_after)},
        ) from None
    except REDIS_ERRORS:
        raise unreachable("Redis", "tokens cannot be checked") from None
    if not accepted:
        await audit_failure(request, actor, "api_auth", "wrong_token")
        raise Problem(401, "Authorization: wrong bearer token", headers=BEARER_CHALLENGE)
    return actor


async def audit_failure(request: web.Request, actor: Actor, action: str, outcome: str) -> None:
    """A failed sign-in, audited within the flood guard (see services/monitor/admin/auth.py)."""
    try:
        allowed = await request.app[AUTH].audit_failure_allowed()
    except REDIS_ERRORS:
        allowed = True  # the entry still reaches the audit log file
    if allowed:
        await request.app[AUDIT].record(actor, action, outcome=outcome)
