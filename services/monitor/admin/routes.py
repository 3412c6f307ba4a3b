"""The /admin routes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from services.monitor.admin import api, guard, inbox, knowledge, pages


def add_routes(app: web.Application) -> None:
    """Every route here but those guard.PUBLIC names needs an operator (guard.admin_guard)."""
    router = app.router
    inbox.install(app)
    router.add_get("/admin", pages.dashboard)
    router.add_get("/admin/login", pages.login_page, name=guard.LOGIN_ROUTE)
    router.add_post("/admin/login", pages.login, name=guard.LOGIN_ROUTE)
    router.add_post("/admin/logout", pages.logout)
    router.add_get("/admin/fragment", pages.fragment)
    router.add_get("/admin/conversation", pages.conversation_page)
    router.add_get("/admin/conversations", pages.conversations_page)
    router.add_post("/admin/dead-letters/replay", pages.replay_form)
    router.add_post("/admin/dead-letters/discard", pages.discard_form)
    router.add_post("/admin/handoffs/reply", pages.reply_form)
    router.add_post("/admin/handoffs/release", pages.release_form)
    router.add_post("/admin/handoffs/assign", pages.assign_form)
    router.add_get("/admin/inbox", pages.inbox_page)
    router.add_get("/admin/inbox/fragment", pages.inbox_fragment)
    router.add_get("/admin/events", inbox.events)
    router.add_get("/admin/outbound", pages.outbound_page)
    router.add_post("/admin/outbound", pages.outbound_form)
    router.add_get("/admin/knowledge", knowledge.page)
    router.add_get("/admin/knowledge/unanswered.csv", knowledge.csv_export)
    router.add_post("/admin/knowledge/reload", knowledge.reload_form)
    router.add_get("/admin/knowledge/phrasings.yaml", knowledge.yaml_export)
    router.add_post("/admin/knowledge/attach", knowledge.attach_form)
    router.add_post("/admin/knowledge/dismiss", knowledge.dismiss_form)
    router.add_post("/admin/knowledge/suggestions/accept", knowledge.accept_form)
    router.add_post("/admin/knowledge/suggestions/dismiss", knowledge.dismiss_suggestion_form)
    router.add_post("/admin/knowledge/phrasings/remove", knowledge.remove_form)
    router.add_static("/admin/static", pages.STATIC_DIR, name=guard.STATIC_ROUTE, append_version=True)
    router.add_get("/admin/api/overview", api.overview)
    router.add_get("/admin/api/conversation", api.conversation)
    router.add_get("/admin/api/conversations", api.conversation_list)
    router.add_get("/admin/api/audit", api.audit)
    router.add_post("/admin/api/dead-letters/replay", api.replay)
    router.add_post("/admin/api/dead-letters/discard", api.discard)
    router.add_post("/admin/api/handoffs/reply", api.reply)
    router.add_post("/admin/api/handoffs/release", api.release)
    router.add_post("/admin/api/handoffs/assign", api.assign)
    router.add_get("/admin/api/inbox", api.inbox_queue)
    router.add_post("/admin/api/outbound", api.send_outbound)
    router.add_get("/admin/api/knowledge", api.knowledge_view)
    router.add_get("/admin/api/knowledge/phrasings.yaml", api.phrasings_yaml)
    router.add_post("/admin/api/knowledge/attach", api.attach)
    router.add_post("/admin/api/knowledge/dismiss", api.dismiss)
    router.add_post("/admin/api/knowledge/suggestions/accept", api.accept)
    router.add_post("/admin/api/knowledge/suggestions/dismiss", api.dismiss_suggestion)
    router.add_post("/admin/api/knowledge/phrasings/remove", api.remove_phrasing)


@web.middleware
async def no_store(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Admin pages and answers carry customer data and secrets: no cache keeps them."""
    response = await handler(request)
    if request.path.startswith("/admin") and not request.path.startswith("/admin/static"):
        response.headers["Cache-Control"] = "no-store"
    return response
