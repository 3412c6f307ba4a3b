"""The admin dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright):
login, the numbers and charts, the self-refresh and its pause, and the operators' actions end to
end (replay a dead letter, reply as agent, release to the bot), each landing in the audit log."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from playwright.async_api import Browser, Page
from redis.asyncio import Redis

from shared.handoff import HandoffInfo, Handoffs
from shared.messages import InboundMessage
from shared.names import Names
from tests.support import (
    PRAZO,
    REDIS_URL,
    TEST_SHARDS,
    Service,
    Stack,
    eventually,
    get_json,
    post_message,
    publish_raw,
    stats_when,
    web_id,
)
from tests.support.pipeline import read_events, wait_ready

# The conversation "conv-humano" of web user maria, as the admin area (which sees internal ids) names it.
HUMAN_CONVERSATION = web_id("maria", "conv-humano")

TOKEN = "admin-" + uuid.uuid4().hex
HIDE = """(hidden) => {
  Object.defineProperty(document, "hidden", {configurable: true, get: () => hidden});
  Object.defineProperty(document, "visibilityState", {configurable: true, get: () => hidden ? "hidden" : "visible"});
  document.dispatchEvent(new Event("visibilitychange"));
}"""


async def metric(page: Page, name: str) -> str:
    return str(await page.locator(f'#dashboard [data-metric="{name}"]').first.get_attribute("data-value"))


async def test_the_admin_dashboard_in_chromium(
    stack: Stack, http: aiohttp.ClientSession, browser: Browser, tmp_path: Path
) -> None:
    gateway = await stack.start("gateway")
    monitor = await stack.start("monitor", ADMIN_TOKEN=TOKEN, ADMIN_REFRESH_SECONDS="1")
    names = Names(stack.namespace, TEST_SHARDS)
    redis = Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        dead = await _a_dead_letter(http, stack, monitor, names)
        await stack.start("worker")
        await wait_ready(stack)
        for i in range(6):
            status, body = await post_message(http, gateway, {"user_id": f"cliente-{i % 3}", "text": PRAZO}, wait=10)
            assert status == 200, body
        human = {"user_id": "maria", "conversation_id": "conv-humano", "text": "quero falar com um atendente"}
        assert (await post_message(http, gateway, human, wait=10))[0] == 200
        handoffs = Handoffs(redis, names)
        await handoffs.start(HUMAN_CONVERSATION, HandoffInfo(channel="web", user_id="maria", reason=human["text"]))

        context = await browser.new_context(locale="pt-BR", viewport={"width": 1400, "height": 1000})
        page = await context.new_page()
        requests: list[str] = []
        errors: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))

        await _login(page, monitor)
        await _numbers_and_charts(page, http, monitor, tmp_path)
        await _refresh_and_pause(page, http, gateway, requests)
        await _replay(page, http, monitor, redis, names, dead)
        await _reply_release_and_conversation(page, http, gateway, redis, names, handoffs, tmp_path)
        await _audit(page, http, monitor, dead)

        # Nothing but the monitor's own pages, styles and script was fetched; the CSP never fired and
        # the script never failed (the browser's "Failed to load resource" is the 401 of the wrong token).
        assert requests and all(url.startswith(monitor.url + "/") for url in requests), requests
        assert [error for error in errors if not error.startswith("Failed to load resource")] == []

        english = await browser.new_context(locale="en-US")
        other = await english.new_page()
        await other.goto(monitor.url + "/admin")
        assert await other.locator("h1").inner_text() == "Sign in to the admin area"
    finally:
        await redis.aclose()


async def _a_dead_letter(http: aiohttp.ClientSession, stack: Stack, monitor: Service, names: Names) -> InboundMessage:
    """A customer's message that expired in its shard queue before any worker was there."""
    dead = InboundMessage(f"dead-{uuid.uuid4().hex[:8]}", "conv-morta", "carla", PRAZO)
    routing_key = str(names.shard_of(dead.conversation_id))
    await publish_raw(stack.namespace, routing_key, dead.to_bytes(), message_id=dead.message_id, expiration=0.05)

    async def dead_lettered() -> bool:
        _, body = await get_json(http, monitor.url + "/monitoring/health")
        return bool(body["checks"]["rabbitmq"].get("dead_letters") == 1)

    await eventually(dead_lettered, what="the message in the dead-letter queue")
    return dead


async def _login(page: Page, monitor: Service) -> None:
    await page.goto(monitor.url + "/admin")
    # Without a session: the login page, and no data at all.
    assert page.url == monitor.url + "/admin/login"
    assert await page.locator("#login-form").is_visible()
    assert await page.locator("[data-metric]").count() == 0 and await page.locator("#dashboard").count() == 0

    await page.fill('input[name="operator"]', "Ana")
    await page.fill('input[name="token"]', "token-errado")
    async with page.expect_navigation():
        await page.click('#login-form button[type="submit"]')
    assert await page.locator("#login-error").inner_text() == "Token incorreto."
    assert await page.locator("#dashboard").count() == 0

    await page.fill('input[name="token"]', TOKEN)
    async with page.expect_navigation():
        await page.click('#login-form button[type="submit"]')
    assert page.url == monitor.url + "/admin"
    await page.locator("#dashboard").wait_for()
    assert await page.locator("html").get_attribute("lang") == "pt-BR"


async def _numbers_and_charts(page: Page, http: aiohttp.ClientSession, monitor: Service, tmp_path: Path) -> None:
    api = await stats_when(http, monitor, lambda body: body["messages"]["total"] >= 7)
    assert api["messages"]["total"] == 7 and api["queue"]["dead_letters"] == 1
    shown = {
        name: await metric(page, name)
        for name in (
            "messages.total",
            "messages.today",
            "messages.last_24h",
            "users.active_24h",
            "errors.total",
            "queue.dead_letters",
            "latency_ms.p50",
            "latency_ms.p95",
            "latency_ms.p99",
            "status",
        )
    }
    assert shown == {
        "messages.total": "7",
        "messages.today": str(api["messages"]["today"]),
        "messages.last_24h": "7",
        "users.active_24h": "4",
        "errors.total": str(api["errors"]["total"]),
        "queue.dead_letters": "1",
        "latency_ms.p50": str(api["latency_ms"]["p50"]),
        "latency_ms.p95": str(api["latency_ms"]["p95"]),
        "latency_ms.p99": str(api["latency_ms"]["p99"]),
        "status": "healthy",  # a dead letter is a warning, not a degraded system
    }
    # Written the Brazilian way, status in Portuguese.
    assert await page.locator('#card-status [data-metric="status"]').inner_text() == "Saudável"
    p95 = await page.locator('#dashboard [data-metric="latency_ms.p95"]').inner_text()
    assert p95 == f"{api['latency_ms']['p95']:.1f}".replace(".", ",")

    # The charts are drawn: bars for the hour with messages, three latency lines.
    assert await page.locator("#chart-messages svg").get_attribute("data-empty") == "false"
    assert await page.locator("#chart-messages rect.bar-messages").count() >= 1
    assert await page.locator("#chart-latency polyline").count() == 3
    box = await page.locator("#chart-latency svg").bounding_box()
    assert box is not None and box["width"] > 300 and box["height"] > 80

    screenshot = tmp_path / "admin-dashboard.png"
    await page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    print(f"admin dashboard screenshot: {screenshot}")


async def _refresh_and_pause(page: Page, http: aiohttp.ClientSession, gateway: Service, requests: list[str]) -> None:
    def fragments() -> int:
        return sum(1 for url in requests if url.endswith("/admin/fragment"))

    before = int(await metric(page, "messages.total"))
    assert (await post_message(http, gateway, {"user_id": "cliente-0", "text": PRAZO}, wait=10))[0] == 200

    async def refreshed() -> bool:
        return int(await metric(page, "messages.total")) == before + 1

    await eventually(refreshed, timeout=10, what="the dashboard to refresh by itself")

    # Hidden tab: the ticks keep coming, nothing is fetched.
    await page.evaluate(HIDE, True)
    fetched = fragments()

    async def skipped_twice() -> bool:
        return int(await page.evaluate("Number(document.body.dataset.skipped || 0)")) >= 2

    await eventually(skipped_twice, timeout=10, what="refreshes skipped while hidden")
    assert fragments() == fetched
    # Visible again: a stale page refreshes at once.
    await page.evaluate(HIDE, False)

    async def fetched_again() -> bool:
        return fragments() > fetched

    await eventually(fetched_again, timeout=5, what="a refresh on coming back")


async def _replay(
    page: Page, http: aiohttp.ClientSession, monitor: Service, redis: Redis, names: Names, dead: InboundMessage
) -> None:
    row = page.locator(f'#dead-letters tr[data-message-id="{dead.message_id}"]')
    assert dead.conversation_id in await row.inner_text()
    async with page.expect_navigation():
        await row.locator("button.replay").click()
    assert await page.locator("#notice").inner_text() == "A mensagem foi reenviada para processamento."

    async def answered() -> bool:
        entries = await redis.lrange(names.conversation_log_key(dead.conversation_id), 0, -1)
        return any(orjson.loads(entry)["message_id"] == dead.message_id for entry in entries)

    await eventually(answered, what="the replayed message answered")
    _, health = await get_json(http, monitor.url + "/monitoring/health")
    assert health["checks"]["rabbitmq"]["dead_letters"] == 0


async def _reply_release_and_conversation(
    page: Page,
    http: aiohttp.ClientSession,
    gateway: Service,
    redis: Redis,
    names: Names,
    handoffs: Handoffs,
    tmp_path: Path,
) -> None:
    connected = asyncio.Event()
    stream = asyncio.create_task(read_events(http, gateway, "conv-humano", 1, connected, user_id="maria"))
    await asyncio.wait_for(connected.wait(), 10)

    words = "Olá Maria, aqui é a Ana. Como posso ajudar?"
    card = page.locator(f'#handoffs li.handoff[data-conversation="{HUMAN_CONVERSATION}"]')
    await card.locator("textarea").fill(words)
    async with page.expect_navigation():
        await card.locator("button.send").click()
    assert await page.locator("#notice").inner_text() == "Sua resposta foi enviada."
    events = await asyncio.wait_for(stream, 10)
    assert events[0]["reply"]["text"] == words and events[0]["reply"]["engine"] == "agent"

    # The operators' view of the conversation: the customer's messages, the replies, their engines
    # and latencies, and the agent's reply, as logged.
    async with page.expect_navigation():
        await page.locator('#handoffs a[href*="conv-humano"]').click()
    logged: list[dict[str, Any]] = [
        orjson.loads(e) for e in await redis.lrange(names.conversation_log_key(HUMAN_CONVERSATION), 0, -1)
    ]
    assert [e["reply"]["engine"] for e in logged][-1] == "agent" and logged[-1]["agent"] == "Ana"
    assert await page.locator(".turn dd.engine").all_inner_texts() == [e["reply"]["engine"] for e in logged]
    latencies = [await cell.get_attribute("data-value") for cell in await page.locator(".turn dd.latency").all()]
    assert latencies == [str(e["latency_ms"]) for e in logged if e["latency_ms"] is not None]
    assert human_text_shown(await page.locator(".bubble.customer").all_inner_texts())
    await page.screenshot(path=str(tmp_path / "admin-conversation.png"), full_page=True)

    async with page.expect_navigation():
        await page.locator("button.release").click()
    assert await page.locator("#notice").inner_text() == "A conversa voltou para o bot."
    assert await page.locator("#handoff-state").inner_text() == "Atendida pelo bot"
    assert not await handoffs.active(HUMAN_CONVERSATION)


def human_text_shown(bubbles: list[str]) -> bool:
    return any("quero falar com um atendente" in bubble for bubble in bubbles)


async def _audit(page: Page, http: aiohttp.ClientSession, monitor: Service, dead: InboundMessage) -> None:
    async with http.get(monitor.url + "/admin/api/audit", headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        entries = (await response.json())["entries"]
    done = {(e["actor"], e["action"], e["target"], e["outcome"]) for e in entries}
    # The agent's words stay in the conversation log: the audit says which reply, never what it said.
    assert not [e for e in entries if "Maria" in e["detail"] or "ajudar" in e["detail"]]
    assert {
        ("Ana", "login", "", "wrong_token"),
        ("Ana", "login", "", "ok"),
        ("Ana", "replay_dead_letter", dead.message_id, "ok"),
        ("Ana", "reply_as_agent", HUMAN_CONVERSATION, "ok"),
        ("Ana", "view_conversation", HUMAN_CONVERSATION, "ok"),
        ("Ana", "release_to_bot", HUMAN_CONVERSATION, "ok"),
    } <= done
    # ... and the dashboard shows the same log.
    await page.goto(monitor.url + "/admin")
    actions = await page.locator("#audit tbody tr").evaluate_all("rows => rows.map(r => r.dataset.action)")
    assert {"login", "replay_dead_letter", "reply_as_agent", "release_to_bot"} <= set(actions)
