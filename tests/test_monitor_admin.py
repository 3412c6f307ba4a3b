"""The admin area's gate (issue 3, SPEC section 5): ADMIN_TOKEN, the session cookie, CSRF, lock-out,
problem+json for scripts, and the audit of it all. The browser's view is in test_admin_browser.py."""

from __future__ import annotations

import uuid

import aiohttp
from aiohttp import web
from redis.asyncio import Redis

from services.monitor.admin import inbox
from services.monitor.keys import HANDOFFS, STORE
from shared.handoff import HandoffInfo, Handoffs
from shared.names import Names
from shared.store import Store
from tests.support import REDIS_URL, TEST_SHARDS, Service, Stack, eventually, get_json

TOKEN = "admin-" + uuid.uuid4().hex


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_without_admin_token_the_admin_area_refuses_everyone_and_says_why(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    monitor = await stack.start("monitor")
    async with http.get(monitor.url + "/admin") as response:
        assert response.status == 503 and str(response.url).endswith("/admin/login")
        assert "ADMIN_TOKEN" in await response.text()
    async with http.post(monitor.url + "/admin/login", data={"operator": "x", "token": ""}) as response:
        assert response.status == 503
    async with http.get(monitor.url + "/admin/api/overview", headers=bearer("anything")) as response:
        assert response.status == 503 and response.content_type == "application/problem+json"
        assert "ADMIN_TOKEN" in (await response.json())["detail"]


async def test_login_session_csrf_lockout_and_audit(stack: Stack) -> None:
    monitor = await stack.start("monitor", ADMIN_TOKEN=TOKEN, ADMIN_MAX_FAILURES="3", ADMIN_LOCKOUT_SECONDS="2")
    # The cookie belongs to 127.0.0.1: aiohttp keeps cookies of IP hosts only when told to.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        await eventually(lambda: broker_up(browser, monitor), what="the monitor connected to RabbitMQ")
        await _gate(monitor, browser)
        await _actions_need_csrf(monitor, browser)
        await _lockout(monitor, browser)


async def broker_up(http: aiohttp.ClientSession, monitor: Service) -> bool:
    _, body = await get_json(http, monitor.url + "/monitoring/health")
    return bool(body["checks"]["rabbitmq"]["status"] == "up")


async def _gate(monitor: Service, browser: aiohttp.ClientSession) -> None:
    async with browser.get(monitor.url + "/admin", allow_redirects=False) as response:
        assert response.status == 303 and response.headers["Location"] == "/admin/login"
    async with browser.get(monitor.url + "/admin/login", headers={"Accept-Language": "pt-BR,pt;q=0.9"}) as response:
        page = await response.text()
        assert response.status == 200 and 'name="token"' in page and "data-metric" not in page
        assert "Entrar na área administrativa" in page
        # The name is not private: the inbox shows it to the other agents ("com Ana").
        assert "mostrado aos outros atendentes" in page
    async with browser.get(monitor.url + "/admin/api/overview") as response:
        assert response.status == 401 and response.content_type == "application/problem+json"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    async with browser.get(monitor.url + "/admin/api/overview", headers=bearer("wrong")) as response:
        assert response.status == 401
    async with browser.get(monitor.url + "/admin/api/overview", headers=bearer()) as response:
        assert response.status == 200 and "messages" in (await response.json())["stats"]

    async with browser.post(monitor.url + "/admin/login", data={"operator": "Ana", "token": "nope"}) as response:
        assert response.status == 401 and "Wrong token." in await response.text()
    foreign = {"Origin": "http://evil.example"}
    async with browser.post(
        monitor.url + "/admin/login", data={"operator": "Ana", "token": TOKEN}, headers=foreign
    ) as response:
        assert response.status == 403
    async with browser.post(
        monitor.url + "/admin/login", data={"operator": "Ana", "token": TOKEN}, allow_redirects=False
    ) as response:
        assert response.status == 303 and response.headers["Location"] == "/admin"
        cookie = response.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/admin" in cookie
    async with browser.get(monitor.url + "/admin") as response:
        page = await response.text()
        assert response.status == 200 and 'data-metric="messages.total"' in page
        assert response.headers["Cache-Control"] == "no-store"
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
        assert "<script>" not in page and "<style" not in page and "style=" not in page


async def _actions_need_csrf(monitor: Service, browser: aiohttp.ClientSession) -> None:
    async with browser.post(monitor.url + "/admin/handoffs/release", data={"conversation_id": "c"}) as response:
        assert response.status == 403 and (await response.json())["detail"].startswith("csrf")
    async with browser.post(
        monitor.url + "/admin/api/handoffs/release", json={"conversation_id": "c"}
    ) as response:  # the cookie alone is not enough for the API either
        assert response.status == 403 and (await response.json())["detail"].startswith("X-CSRF-Token")
    async with browser.post(
        monitor.url + "/admin/api/handoffs/reply", json={"conversation_id": "c", "text": " "}, headers=bearer()
    ) as response:
        assert response.status == 400 and (await response.json())["detail"].startswith("text")
    async with browser.post(
        monitor.url + "/admin/api/handoffs/reply", json={"conversation_id": "c", "text": "Olá"}, headers=bearer()
    ) as response:
        assert response.status == 409 and (await response.json())["detail"].startswith("conversation_id")
    async with browser.post(
        monitor.url + "/admin/api/dead-letters/replay", json={"message_id": "none"}, headers=bearer()
    ) as response:
        assert response.status == 404 and (await response.json())["detail"].startswith("message_id")
    async with browser.post(monitor.url + "/admin/api/dead-letters/replay", data="{", headers=bearer()) as response:
        assert response.status == 415


async def _lockout(monitor: Service, browser: aiohttp.ClientSession) -> None:
    for guess in range(3):  # three wrong in a row: locked from then on, right token or not
        async with browser.post(
            monitor.url + "/admin/login", data={"operator": "Eve", "token": f"{guess}"}
        ) as response:
            assert response.status == 401
    async with browser.post(monitor.url + "/admin/login", data={"operator": "Ana", "token": TOKEN}) as response:
        assert response.status == 429 and int(response.headers["Retry-After"]) >= 1
    async with browser.get(monitor.url + "/admin/api/overview", headers=bearer()) as response:
        assert response.status == 429

    async def unlocked() -> bool:
        async with browser.get(monitor.url + "/admin/api/audit", headers=bearer()) as response:
            return response.status == 200

    await eventually(unlocked, timeout=10, what="the lock-out to end")
    async with browser.get(monitor.url + "/admin/api/audit", headers=bearer()) as response:
        entries = (await response.json())["entries"]
    done = [(e["action"], e["actor"], e["outcome"]) for e in reversed(entries)]
    assert ("login", "Ana", "wrong_token") in done
    assert ("login", "Ana", "ok") in done
    assert ("login", "Eve", "wrong_token") in done
    assert ("login", "Ana", "locked_out") in done
    assert ("replay_dead_letter", "api", "refused") in done and ("reply_as_agent", "api", "refused") in done
    assert all(e["client"] == "127.0.0.1" and e["ts"] > 0 for e in entries)


async def test_handoffs_are_listed_released_and_expire(stack: Stack) -> None:
    redis = Redis.from_url(REDIS_URL)
    names = Names(stack.namespace, TEST_SHARDS)
    try:
        handoffs = Handoffs(redis, names, ttl_s=1)
        await handoffs.start(
            "c-1", HandoffInfo(channel="telegram", user_id="u1", metadata={"chat_id": 5}, reason="humano")
        )
        await handoffs.start("c-2", HandoffInfo(channel="web", user_id="u2"))
        assert await handoffs.active("c-1") and await handoffs.active("c-2")
        listed = await handoffs.list_active()
        assert list(listed) == ["c-2", "c-1"] and listed["c-1"].metadata == {"chat_id": 5}
        assert await handoffs.release("c-2") and not await handoffs.release("c-2")

        async def expired() -> bool:
            return not await handoffs.active("c-1")

        await eventually(expired, timeout=5, what="the handoff to expire")
        assert await handoffs.list_active() == {} and await redis.zcard(names.handoffs_key) == 0
    finally:
        await redis.aclose()


async def test_the_inbox_keeps_the_longest_waiting_when_more_wait_than_it_shows(stack: Stack) -> None:
    """Over QUEUE_LIMIT waiting, the inbox still lists the customers who have waited longest (its
    order): the ones left for later are the newest, never the oldest."""
    redis = Redis.from_url(REDIS_URL)
    names = Names(stack.namespace, TEST_SHARDS)
    try:
        app = web.Application()
        app[STORE] = Store(redis, names)
        app[HANDOFFS] = handoffs = Handoffs(redis, names)
        total = inbox.QUEUE_LIMIT + 5
        for i in range(total):  # c-0 asked first, c-204 last
            await handoffs.start(f"c-{i}", HandoffInfo(channel="web", user_id=f"u{i}", started_at=1_000.0 + i))
        waiting = await inbox.queue(app)
        assert len(waiting) == inbox.QUEUE_LIMIT
        assert [item.conversation_id for item in waiting] == [f"c-{i}" for i in range(inbox.QUEUE_LIMIT)]
    finally:
        await redis.aclose()
