"""The admin and the chat page on a desktop and on a phone, in both languages (issue 15), in a real
headless Chromium: screenshots at 1280 and 400 px (kept in pytest's tmp_path, to look at when a
test fails), no sideways scroll, readable chart text, translated alerts and audit, the
conversations list with search and paging, agent replies marked on the chat page, and the
embeddable widget shown on an allowed site and refused on another."""

from __future__ import annotations

import uuid
from pathlib import Path

import aiohttp
from aiohttp import web
from playwright.async_api import Browser, BrowserContext, Page, expect
from redis.asyncio import Redis

from shared.handoff import HandoffInfo, Handoffs
from shared.names import Names
from tests.support import (
    PRAZO,
    REDIS_URL,
    TEST_SHARDS,
    Service,
    Stack,
    eventually,
    free_port,
    get_json,
    post_message,
    web_id,
)
from tests.support.pipeline import wait_ready

TOKEN = "admin-" + uuid.uuid4().hex
WIDTHS = (1280, 400)
NO_SIDEWAYS_SCROLL = "document.documentElement.scrollWidth <= window.innerWidth"


async def context_for(browser: Browser, locale: str, width: int) -> BrowserContext:
    return await browser.new_context(locale=locale, viewport={"width": width, "height": 900}, device_scale_factor=1)


async def shoot(page: Page, path: Path) -> None:
    await page.screenshot(path=str(path), full_page=True)
    await page.screenshot(path=str(path.with_suffix(".top.png")))  # what the screen shows first
    assert await page.evaluate(NO_SIDEWAYS_SCROLL), f"{path.name}: the page scrolls sideways"


async def sign_in(page: Page, monitor: Service) -> None:
    await page.goto(monitor.url + "/admin")
    await page.fill('input[name="operator"]', "Ana")
    await page.fill('input[name="token"]', TOKEN)
    async with page.expect_navigation():
        await page.click('#login-form button[type="submit"]')
    await page.locator("#dashboard").wait_for()


async def test_admin_on_desktop_and_phone_in_both_languages(
    stack: Stack, http: aiohttp.ClientSession, browser: Browser, tmp_path: Path
) -> None:
    gateway = await stack.start("gateway")
    await stack.start("worker")
    monitor = await stack.start("monitor", ADMIN_TOKEN=TOKEN, ALERT_INTERVAL_SECONDS="0.3")
    await wait_ready(stack)
    # 23 conversations: more than a page of the list (20). One has a long unbroken id and text.
    long_id = "conversa-" + "x" * 80
    for index in range(22):
        assert (await post_message(http, gateway, {"user_id": f"cliente-{index:02d}", "text": PRAZO}, wait=10))[
            0
        ] == 200
    long_message = {"user_id": "longo", "conversation_id": long_id, "text": "a" * 300}
    assert (await post_message(http, gateway, long_message, wait=10))[0] == 200
    redis = Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        names = Names(stack.namespace, TEST_SHARDS)
        await Handoffs(redis, names).start(
            web_id("cliente-03", "user:cliente-03"), HandoffInfo(channel="web", user_id="cliente-03", reason="x")
        )
    finally:
        await redis.aclose()

    for locale, language in (("pt-BR", "pt"), ("en-US", "en")):
        for width in WIDTHS:
            context = await context_for(browser, locale, width)
            page = await context.new_page()
            await sign_in(page, monitor)
            await expect(page.locator("#latency-label")).to_have_text("p95")
            await expect(page.locator("#conversations tr[data-conversation]")).to_have_count(20)
            human = page.locator(f'#conversations tr[data-conversation="{web_id("cliente-03", "user:cliente-03")}"]')
            await expect(human).to_contain_text("com uma pessoa" if language == "pt" else "with a person")
            await expect(page.locator("#conversations .preview").first).not_to_be_empty()
            # Audit codes in words: the sign-in just made.
            await expect(page.locator('#audit tr[data-action="login"]').first).to_contain_text(
                "entrou" if language == "pt" else "signed in"
            )
            # Chart text stays readable when the SVG is scaled down to a phone's width.
            tick_height = await page.locator("#chart-latency .tick").first.evaluate(
                "(e) => e.getBoundingClientRect().height"
            )
            assert tick_height >= 9, (width, tick_height)
            await shoot(page, tmp_path / f"admin-{language}-{width}.png")

            await page.goto(monitor.url + "/admin/conversations")
            await expect(page.locator("tr[data-conversation]")).to_have_count(20)
            await page.locator('a[rel="next"]').click()
            await expect(page.locator("tr[data-conversation]")).to_have_count(3)
            await shoot(page, tmp_path / f"conversations-{language}-{width}.png")
            await page.fill('input[name="q"]', "cliente-1")
            await page.locator(".search button").click()
            await expect(page.locator("tr[data-conversation]")).to_have_count(10)  # cliente-10 … cliente-19
            await expect(page.locator('a[rel="next"]')).to_have_count(0)
            await context.close()

    # The JSON of the same list, for scripts.
    async with http.get(
        monitor.url + "/admin/api/conversations", params={"q": long_id[:20], "page": "1"}, headers=_bearer()
    ) as response:
        body = await response.json()
    assert response.status == 200 and [item["conversation_id"] for item in body["items"]] == [web_id("longo", long_id)]
    assert body["items"][0]["preview"].endswith("…") and body["items"][0]["channel"] == "web"
    async with http.get(monitor.url + "/admin/api/conversations?page=0", headers=_bearer()) as response:
        assert response.status == 400 and "page" in (await response.json())["detail"]


def _bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


async def test_alerts_are_translated(stack: Stack, browser: Browser) -> None:
    """No worker at all: the "no live worker" alert, in each language."""
    await stack.start("gateway")
    monitor = await stack.start("monitor", ADMIN_TOKEN=TOKEN, ALERT_INTERVAL_SECONDS="0.3")
    for locale, text in (("pt-BR", "nenhum worker ativo"), ("en-US", "no live worker")):
        context = await context_for(browser, locale, 400)
        page = await context.new_page()
        await sign_in(page, monitor)
        await expect(page.locator('#alerts tr[data-alert="AtendimentoNoWorkers"]')).to_contain_text(text)
        await context.close()


async def test_chat_page_languages_agent_replies_and_phone(
    stack: Stack, http: aiohttp.ClientSession, browser: Browser, tmp_path: Path
) -> None:
    gateway = await stack.start("gateway")
    await stack.start("worker")
    monitor = await stack.start("monitor", ADMIN_TOKEN=TOKEN)
    await wait_ready(stack)
    for locale, language, placeholder in (
        ("pt-BR", "pt-BR", "Digite sua pergunta"),
        ("en-US", "en", "Type your question"),
    ):
        for width in WIDTHS:
            context = await context_for(browser, locale, width)
            page = await context.new_page()
            await page.goto(gateway.url + "/")
            await expect(page.locator("html")).to_have_attribute("lang", language)
            await expect(page.locator("#text")).to_have_attribute("placeholder", placeholder)
            await expect(page.locator("#status")).to_have_attribute("data-state", "online")
            await page.locator("#text").fill(PRAZO)
            await page.locator("#text").press("Enter")
            await expect(page.locator(".msg--bot")).to_have_count(2)  # the greeting and the answer
            await shoot(page, tmp_path / f"chat-{language}-{width}.png")
            await context.close()

    # An agent's reply (from the admin area) is marked as a person's, not the bot's.
    context = await context_for(browser, "pt-BR", 400)
    page = await context.new_page()
    await page.goto(gateway.url + "/")
    await expect(page.locator("#status")).to_have_attribute("data-state", "online")
    user = str(await page.evaluate("localStorage.getItem('atendimento.user')"))
    conversation = web_id(user, "web:" + user)  # the page's conversation, as the system names it
    await page.locator("#text").fill("quero falar com uma pessoa")
    await page.locator("#text").press("Enter")
    await expect(page.locator(".msg--bot")).to_have_count(2)
    redis = Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        names = Names(stack.namespace, TEST_SHARDS)
        info = HandoffInfo(channel="web", user_id=user, reason="pessoa")
        await Handoffs(redis, names).start(conversation, info)
    finally:
        await redis.aclose()
    async with http.post(
        monitor.url + "/admin/api/handoffs/reply",
        json={"conversation_id": conversation, "text": "Oi, aqui é a Ana."},
        headers=_bearer(),
    ) as response:
        assert response.status < 300, await response.text()
    agent = page.locator(".msg--agent")
    await expect(agent).to_have_text("Oi, aqui é a Ana.")
    assert await agent.get_attribute("data-who") == "Atendente"
    await shoot(page, tmp_path / "chat-agent-400.png")
    await context.close()


async def test_the_widget_on_an_allowed_site_and_a_refused_one(stack: Stack, browser: Browser) -> None:
    allowed_port, refused_port = free_port(), free_port()
    allowed = f"http://127.0.0.1:{allowed_port}"
    gateway = await stack.start("gateway", CHAT_EMBED_ORIGINS=f"{allowed},https://shop.example.com")
    await wait_ready(stack)
    runners = []
    try:
        for port in (allowed_port, refused_port):
            runner, _ = await _serve_on(gateway, port)
            runners.append(runner)
        context = await context_for(browser, "pt-BR", 400)

        page = await context.new_page()
        await page.goto(allowed + "/")
        button = page.locator("#atendimento-widget-button")
        await expect(button).to_be_visible()
        await button.click()
        frame = page.frame_locator("#atendimento-widget-frame")
        await expect(frame.locator("#composer")).to_be_visible()
        await expect(frame.locator("#status")).to_have_attribute("data-state", "online")
        await expect(page.frame_locator("#plain").locator("#composer")).to_be_attached()
        assert await page.evaluate(NO_SIDEWAYS_SCROLL)

        refused = await context.new_page()
        warnings: list[str] = []
        refused.on("console", lambda message: warnings.append(message.text))
        await refused.goto(f"http://localhost:{refused_port}/")
        await eventually(lambda: _said(warnings, "not in CHAT_EMBED_ORIGINS"), what="the widget refusing this site")
        assert await refused.locator("#atendimento-widget-button").count() == 0
        assert await refused.locator("#atendimento-widget-frame").count() == 0

        # The chat page itself refuses to be framed there (frame-ancestors), whatever the script does.
        element = await refused.query_selector("#plain")
        assert element is not None
        framed = await element.content_frame()
        assert framed is not None
        await framed.wait_for_load_state("load")
        assert await framed.locator("#composer").count() == 0
        await context.close()
    finally:
        for runner in runners:
            await runner.cleanup()


async def _serve_on(gateway: Service, port: int) -> tuple[web.AppRunner, int]:
    html = (
        "<!doctype html><html><head><title>Loja</title>"
        f'<script src="{gateway.url}/widget.js" defer></script></head>'
        f'<body><h1>Loja</h1><iframe id="plain" src="{gateway.url}/" width="300" height="300"></iframe></body></html>'
    )

    async def host_page(request: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", host_page)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


async def _said(lines: list[str], text: str) -> bool:
    return any(text in line for line in lines)


async def test_the_chat_page_is_framable_only_when_asked(stack: Stack, http: aiohttp.ClientSession) -> None:
    gateway = await stack.start("gateway")
    status, _ = await get_json(http, gateway.url + "/monitoring/live")
    assert status == 200
    async with http.get(gateway.url + "/") as response:
        assert response.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    async with http.get(gateway.url + "/widget.js") as response:
        assert response.content_type == "text/javascript"
        assert "const ALLOWED = [];" in await response.text()  # nobody listed: the widget refuses all
