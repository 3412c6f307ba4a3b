"""The new admin views (issue 22) in a real headless Chromium, in both languages, on a desktop and
on a phone: the dashboard says whether people answer now (closed: today is a holiday of the
monitor's BUSINESS_HOURS) and counts the day's conversations; the outcomes page shows the days
and the 7- and 30-day sums. Screenshots at 1280 and 390 px are kept in pytest's tmp_path."""

from __future__ import annotations

import uuid
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
from playwright.async_api import Browser, Page, expect

from tests.support import PRAZO, Service, Stack, post_message
from tests.support.pipeline import wait_ready

TOKEN = "admin-" + uuid.uuid4().hex
WIDTHS = (1280, 390)
NO_SIDEWAYS_SCROLL = "document.documentElement.scrollWidth <= window.innerWidth"


async def shoot(page: Page, path: Path) -> None:
    await page.screenshot(path=str(path), full_page=True)
    assert await page.evaluate(NO_SIDEWAYS_SCROLL), f"{path.name}: the page scrolls sideways"


async def sign_in(page: Page, monitor: Service) -> None:
    await page.goto(monitor.url + "/admin")
    await page.fill('input[name="operator"]', "Ana")
    await page.fill('input[name="token"]', TOKEN)
    async with page.expect_navigation():
        await page.click('#login-form button[type="submit"]')
    await page.locator("#dashboard").wait_for()


async def test_open_or_closed_and_the_outcomes_page(
    stack: Stack, http: aiohttp.ClientSession, browser: Browser, tmp_path: Path
) -> None:
    today = datetime.now(ZoneInfo("America/Sao_Paulo")).date().isoformat()
    gateway = await stack.start("gateway")
    await stack.start("worker")
    monitor = await stack.start(
        "monitor", ADMIN_TOKEN=TOKEN, BUSINESS_HOURS="seg-sex 08:00-18:00; sab 08:00-12:00", BUSINESS_HOLIDAYS=today
    )
    await wait_ready(stack)
    for user, text in (("ana", PRAZO), ("bia", PRAZO), ("caio", "quero falar com um atendente")):
        assert (await post_message(http, gateway, {"user_id": user, "text": text}, wait=10))[0] == 200

    for locale, language in (("pt-BR", "pt"), ("en-US", "en")):
        for width in WIDTHS:
            context = await browser.new_context(locale=locale, viewport={"width": width, "height": 900})
            page = await context.new_page()
            await sign_in(page, monitor)
            business = page.locator("#card-business")
            await expect(business).to_contain_text("Fechado agora" if language == "pt" else "Closed now")
            await expect(business).to_contain_text("America/Sao_Paulo")
            started = page.locator('#card-conversations [data-metric="conversations.started_24h"]')
            await expect(started).to_have_attribute("data-value", "3")
            await shoot(page, tmp_path / f"dashboard-{language}-{width}.png")

            await page.locator("#outcomes-link").click()
            await expect(page.locator("#outcome-days tr[data-day]")).to_have_count(30)
            await expect(page.locator(f'#outcome-days tr[data-day="{today}"]')).to_be_visible()
            await expect(page.locator("#card-last_7_days")).to_have_attribute("data-conversations", "3")
            await expect(page.locator("h1")).to_have_text(
                "Resultados e satisfação" if language == "pt" else "Outcomes and satisfaction"
            )
            await shoot(page, tmp_path / f"outcomes-{language}-{width}.png")
            await context.close()
