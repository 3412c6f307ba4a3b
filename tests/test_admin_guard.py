"""Deny by default (issue 25, point 3): walk the monitor's router and prove that every /admin
route, with every method it answers, refuses an anonymous request, except the few routes the
guard names as public. A route added without thought is covered by this walk, not by memory."""

from __future__ import annotations

import uuid

import aiohttp
from aiohttp import web

from services.monitor.admin.guard import API_PREFIX, FRAGMENTS, PUBLIC
from services.monitor.app import create_app
from shared.settings import Settings
from tests.support import Stack

TOKEN = "admin-" + uuid.uuid4().hex
STATIC_FILE = "admin.css"


def admin_routes() -> list[web.AbstractRoute]:
    """The routes under /admin of the monitor as it is built (nothing started: only the router)."""
    app = create_app(Settings.from_env({"ADMIN_TOKEN": TOKEN}))
    return [
        route
        for route in app.router.routes()
        if route.resource is not None
        and (route.resource.canonical == "/admin" or route.resource.canonical.startswith("/admin/"))
    ]


def name_of(route: web.AbstractRoute) -> str | None:
    return route.resource.name if route.resource is not None else None


def url_of(route: web.AbstractRoute) -> str:
    """A URL the route answers: its path, or a file that exists under the static route."""
    assert route.resource is not None
    if isinstance(route.resource, web.StaticResource):
        return f"{route.resource.canonical}/{STATIC_FILE}"
    return route.resource.canonical


def test_the_allow_list_is_small_and_named() -> None:
    assert {"admin-login", "admin-static"} == PUBLIC
    public = sorted((route.method, url_of(route)) for route in admin_routes() if name_of(route) in PUBLIC)
    assert public == [
        ("GET", "/admin/login"),
        ("GET", f"/admin/static/{STATIC_FILE}"),
        ("HEAD", "/admin/login"),
        ("HEAD", f"/admin/static/{STATIC_FILE}"),
        ("POST", "/admin/login"),
    ]


async def test_every_admin_route_refuses_an_anonymous_request(stack: Stack) -> None:
    monitor = await stack.start("monitor", ADMIN_TOKEN=TOKEN)
    guarded = [route for route in admin_routes() if name_of(route) not in PUBLIC]
    assert len(guarded) > 40  # every page, form and API route, with HEAD beside each GET
    answers: dict[tuple[str, str], tuple[int, str]] = {}
    async with aiohttp.ClientSession() as anonymous:
        for route in guarded:
            path = url_of(route)
            async with anonymous.request(route.method, monitor.url + path, allow_redirects=False) as response:
                answers[(route.method, path)] = (response.status, _refused_as(response))
    # Compared whole, so one open route does not hide another.
    assert answers == {(method, path): refusal(path) for method, path in answers}


def _refused_as(response: aiohttp.ClientResponse) -> str:
    return response.headers.get("Location") or response.content_type


def refusal(path: str) -> tuple[int, str]:
    """Scripts are told 401 in problem+json; people are sent to the login page."""
    if path.startswith(API_PREFIX) or path in FRAGMENTS:
        return 401, "application/problem+json"
    return 303, "/admin/login"


async def test_the_public_routes_answer_without_an_operator(stack: Stack) -> None:
    monitor = await stack.start("monitor", ADMIN_TOKEN=TOKEN)
    async with aiohttp.ClientSession() as anonymous:
        for path in ("/admin/login", f"/admin/static/{STATIC_FILE}"):
            async with anonymous.get(monitor.url + path, allow_redirects=False) as response:
                assert response.status == 200, path
