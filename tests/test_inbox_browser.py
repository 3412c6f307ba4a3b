"""The agents' inbox and the phone-first admin in a real headless Chromium (issue 24):

- a WhatsApp customer asks for a person: the inbox shows them by their profile name, without a
  reload; the agent takes the conversation, answers from its page (the answer reaches the customer
  through the Graph API stand-in), another agent's answer is refused, and the agent releases it;
- every admin page at 390 and 1280 px, in pt-BR and English, has no sideways scroll;
- an English visitor of the chat page gets the bot's own texts in English, and the page asks for
  nothing before it has its conversation's token;
- the widget: an SVG launcher in CHAT_COLOR, CHAT_TITLE on the chat, a close button, and a badge
  counting the replies that arrived while the chat was closed.

Screenshots go to tmp_path, or to SCREENS_DIR when set (to look at them after a run).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from playwright.async_api import Browser, BrowserContext, Page, expect

from tests.support import Service, Stack, eventually, free_port, post_message, web_id
from tests.support.channel_fakes import WHATSAPP_ENV, FakeChannelApi, post_whatsapp, whatsapp_text
from tests.support.pipeline import wait_ready

TOKEN = "admin-" + uuid.uuid4().hex
WIDTHS = (390, 1280)
LOCALES = (("pt-BR", "pt"), ("en-US", "en"))
NO_SIDEWAYS_SCROLL = "document.documentElement.scrollWidth <= window.innerWidth"
ASK_FOR_PERSON = "quero falar com um atendente"


def screens(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("SCREENS_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def context_for(browser: Browser, locale: str, width: int) -> BrowserContext:
    return await browser.new_context(locale=locale, viewport={"width": width, "height": 860}, device_scale_factor=1)


async def sign_in(page: Page, monitor: Service) -> None:
    await page.goto(monitor.url + "/admin")
    await page.fill('input[name="operator"]', "Ana")
    await page.fill('input[name="token"]', TOKEN)
    async with page.expect_navigation():
        await page.click('#login-form button[type="submit"]')
    await page.locator("#dashboard").wait_for()


def named(wamid: str, sender: str, text: str, name: str) -> dict[str, Any]:
    payload = whatsapp_text(wamid, sender, text)
    payload["entry"][0]["changes"][0]["value"]["contacts"][0]["profile"]["name"] = name
    return payload


async def test_a_handoff_appears_live_and_an_agent_answers_it(
    stack: Stack, http: aiohttp.ClientSession, browser: Browser, tmp_path: Path
) -> None:
    graph = await FakeChannelApi().start()
    try:
        gateway = await stack.start("gateway", **WHATSAPP_ENV, **graph.env())
        await stack.start("worker")
        monitor = await stack.start("monitor", ADMIN_TOKEN=TOKEN)
        await wait_ready(stack)
        context = await context_for(browser, "en-US", 390)
        page = await context.new_page()
        await sign_in(page, monitor)
        await page.goto(monitor.url + "/admin/inbox")
        await expect(page.locator("#inbox-empty")).to_be_visible()
        await page.evaluate("window.sameDocument = true")  # gone if the page reloads

        sender = "5511987650001"
        status, _ = await post_whatsapp(http, gateway, named("wamid.inbox-1", sender, ASK_FOR_PERSON, "Maria Souza"))
        assert status == 200
        card = page.locator("li.waiting").filter(has_text="Maria Souza")
        await expect(card).to_be_visible()
        assert await page.evaluate("window.sameDocument === true"), "the inbox reloaded to show the handoff"
        await expect(page.locator("#inbox-badge")).to_have_text("1")
        await expect(card.locator(".badge.channel")).to_have_text("whatsapp")
        await expect(card.locator(".last")).to_contain_text(ASK_FOR_PERSON)
        await expect(card.locator(".wait")).to_contain_text("waiting")
        folder = screens(tmp_path)
        await _shoot_inbox(browser, monitor, folder)

        async with page.expect_navigation():
            await card.locator("button.assign").click()
        await expect(page.locator(".assignee")).to_have_text("with Ana")
        # The newest message is last, right above the reply box, and the bot's reason is shown.
        turns = page.locator(".timeline .turn")
        await expect(turns.last.locator(".bubble.customer")).to_contain_text(ASK_FOR_PERSON)
        await expect(turns.last.locator("dd.kind")).to_have_text("handoff")
        composer_top = await page.locator("#composer").evaluate("(e) => e.getBoundingClientRect().top")
        last_top = await turns.last.evaluate("(e) => e.getBoundingClientRect().top")
        assert composer_top > last_top
        await page.locator("#composer textarea").fill("Hi Maria, this is Ana.")
        async with page.expect_navigation():
            await page.locator("#composer button.send").click()

        async def delivered() -> bool:
            return any(r.text == "Hi Maria, this is Ana." for r in graph.delivered_to(sender))

        await eventually(delivered, what="the agent's answer on WhatsApp")

        # Another agent (here a script with the admin token) cannot answer the same customer.
        conversation = str(await page.locator("main.conversation").get_attribute("data-conversation"))
        async with http.post(
            monitor.url + "/admin/api/handoffs/reply",
            json={"conversation_id": conversation, "text": "Someone else here"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as response:
            assert response.status == 409 and "assigned to Ana" in (await response.json())["detail"]

        # A silenced reply of the bot is no empty card; released, the inbox is empty again.
        status, _ = await post_whatsapp(http, gateway, named("wamid.inbox-2", sender, "oi?", "Maria Souza"))

        async def silenced_shown() -> bool:  # once the worker has stored it: on a loaded machine, seconds
            await page.reload()
            return await page.locator('.turn[data-silenced="true"] .silenced-note').count() == 1

        await eventually(silenced_shown, what="the bot's silenced reply in the conversation")
        await expect(page.locator('.turn[data-silenced="true"] .bubble.bot')).to_have_count(0)
        async with page.expect_navigation():
            await page.locator("button.release").click()
        await page.goto(monitor.url + "/admin")
        await expect(page.locator("#audit tr[data-action='assign'] .sentence").first).to_contain_text(
            f"Ana took {conversation}"
        )
        await expect(page.locator("#audit tr[data-action='reply_as_agent'][data-outcome='refused']")).to_contain_text(
            "tried to reply in"
        )
        await context.close()
    finally:
        await graph.close()


async def _shoot_inbox(browser: Browser, monitor: Service, folder: Path) -> None:
    for locale, language in LOCALES:
        for width in WIDTHS:
            context = await context_for(browser, locale, width)
            page = await context.new_page()
            await sign_in(page, monitor)
            await page.goto(monitor.url + "/admin/inbox")
            await expect(page.locator("li.waiting")).to_have_count(1)
            assert await page.evaluate(NO_SIDEWAYS_SCROLL), (locale, width)
            await page.screenshot(path=str(folder / f"inbox-{language}-{width}.png"), full_page=True)
            await context.close()


async def test_every_admin_page_fits_a_phone_in_both_languages(
    stack: Stack, http: aiohttp.ClientSession, browser: Browser, tmp_path: Path
) -> None:
    gateway = await stack.start("gateway")
    await stack.start("worker")
    monitor = await stack.start("monitor", ADMIN_TOKEN=TOKEN, ALERT_INTERVAL_SECONDS="0.3")
    await wait_ready(stack)
    person = {"user_id": "marta", "text": ASK_FOR_PERSON}
    assert (await post_message(http, gateway, person, wait=10))[0] == 200
    long_message = {"user_id": "longo", "conversation_id": "conversa-" + "x" * 80, "text": "a" * 300}
    assert (await post_message(http, gateway, long_message, wait=10))[0] == 200
    conversation = web_id("marta", "user:marta")
    pages = (
        "/admin",
        "/admin/inbox",
        "/admin/conversations",
        f"/admin/conversation?id={conversation}",
        "/admin/knowledge",
    )
    folder = screens(tmp_path)
    for locale, language in LOCALES:
        for width in WIDTHS:
            context = await context_for(browser, locale, width)
            login = await context.new_page()
            await login.goto(monitor.url + "/admin/login")
            assert await login.evaluate(NO_SIDEWAYS_SCROLL), ("/admin/login", locale, width)
            page = await context.new_page()
            await sign_in(page, monitor)
            for path in pages:
                await page.goto(monitor.url + path)
                await page.wait_for_load_state("load")
                overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
                assert overflow <= 0, (path, locale, width, overflow)
            await page.goto(monitor.url + f"/admin/conversation?id={conversation}")
            await page.screenshot(path=str(folder / f"conversation-{language}-{width}.png"), full_page=True)
            await page.goto(monitor.url + "/admin")
            await page.screenshot(path=str(folder / f"dashboard-{language}-{width}.png"), full_page=True)
            await context.close()


async def test_an_english_visitor_gets_english_system_texts(stack: Stack, browser: Browser, tmp_path: Path) -> None:
    gateway = await stack.start("gateway")
    await stack.start("worker")
    await wait_ready(stack)
    context = await context_for(browser, "en-US", 390)
    page = await context.new_page()
    refused: list[str] = []
    page.on("response", lambda response: refused.append(response.url) if response.status == 403 else None)
    await page.goto(gateway.url + "/")
    await expect(page.locator("#status")).to_have_attribute("data-state", "online")
    await page.locator("#text").fill("zxq wvvk plorft")
    await page.locator("#text").press("Enter")
    fallback = page.locator(".msg--bot").nth(1)
    await expect(fallback).to_contain_text("Sorry, I could not find that information")
    chip = page.locator(".chip")
    await expect(chip).to_have_text("Talk to an agent")
    await chip.click()
    await expect(page.locator(".msg--bot").nth(2)).to_contain_text("I am calling a human agent")
    await page.screenshot(path=str(screens(tmp_path) / "chat-en-390.png"), full_page=True)
    assert refused == [], "the page asked for something before it had its token"
    await context.close()


async def test_the_widget_launcher_closes_and_counts_unread_replies(
    stack: Stack, http: aiohttp.ClientSession, browser: Browser, tmp_path: Path
) -> None:
    site_port = free_port()
    site = f"http://127.0.0.1:{site_port}"
    gateway = await stack.start("gateway", CHAT_EMBED_ORIGINS=site, CHAT_TITLE="Loja Azul", CHAT_COLOR="#1a4fa0")
    await stack.start("worker")
    monitor = await stack.start("monitor", ADMIN_TOKEN=TOKEN)
    await wait_ready(stack)
    runner = await _host_page(gateway, site_port)
    folder = screens(tmp_path)
    try:
        for locale, language in LOCALES:
            for width in WIDTHS:
                context = await context_for(browser, locale, width)
                page = await context.new_page()
                await page.goto(site + "/")
                button = page.locator("#atendimento-widget-button")
                await expect(button.locator("svg")).to_have_count(1)  # drawn, not an emoji
                await button.click()
                frame = page.frame_locator("#atendimento-widget-frame")
                await expect(frame.locator("#title")).to_have_text("Loja Azul")
                await expect(frame.locator("#status")).to_have_attribute("data-state", "online")
                assert await page.evaluate(NO_SIDEWAYS_SCROLL)
                await page.screenshot(path=str(folder / f"widget-{language}-{width}.png"))
                await page.locator("#atendimento-widget-close").click()
                await expect(page.locator("#atendimento-widget-frame")).to_be_hidden()
                await context.close()

        # A reply that arrives while the chat is closed is counted on the launcher.
        context = await context_for(browser, "en-US", 390)
        page = await context.new_page()
        await page.goto(site + "/")
        await page.locator("#atendimento-widget-button").click()
        frame = page.frame_locator("#atendimento-widget-frame")
        await frame.locator("#text").fill("I want to talk to a human agent")
        await frame.locator("#text").press("Enter")
        await expect(frame.locator(".msg--bot")).to_have_count(2)
        await page.locator("#atendimento-widget-close").click()
        badge = page.locator("#atendimento-widget-badge")
        await expect(badge).to_be_hidden()
        user = str(await frame.locator("html").evaluate("() => localStorage.getItem('atendimento.user')"))
        async with http.post(
            monitor.url + "/admin/api/handoffs/reply",
            json={"conversation_id": web_id(user, "web:" + user), "text": "Hi, Ana here."},
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as response:
            assert response.status < 300, await response.text()
        await expect(badge).to_have_text("1")
        await page.screenshot(path=str(folder / "widget-badge-en-390.png"))
        await page.locator("#atendimento-widget-button").click()
        await expect(badge).to_be_hidden()
        await expect(frame.locator(".msg--agent")).to_have_text("Hi, Ana here.")
        await context.close()
    finally:
        await runner.cleanup()


async def _host_page(gateway: Service, port: int) -> web.AppRunner:
    """A company's site with the widget's script tag."""
    html = (
        "<!doctype html><html><head><title>Loja</title>"
        f'<script src="{gateway.url}/widget.js" defer></script></head><body><h1>Loja</h1></body></html>'
    )

    async def host_page(request: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", host_page)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner
