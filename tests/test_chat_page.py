"""The web chat page (SPEC 4, `GET /`) in a real headless Chromium: a typed question gets its
answer live over the event stream, the typing indicator shows while the bot works, and the page
reconnects after its connection drops. Chromium is Debian's (`scripts/ensure-test-tools.sh`)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, ConsoleMessage, Page, Request, Route, ViewportSize, expect

from tests.support import Stack
from tests.support.channel_fakes import kb_answer
from tests.support.fake_llm import LLM_TEXT, FakeLlm
from tests.support.faultproxy import FaultProxy
from tests.support.pipeline import wait_ready

PHONE_VIEWPORT: ViewportSize = {"width": 390, "height": 780}


async def ask(page: Page, question: str) -> None:
    await page.locator("#text").fill(question)
    await page.locator("#text").press("Enter")
    await expect(page.locator(".msg--me").last).to_have_text(question)


async def test_chat_page_answers_live_and_reconnects(stack: Stack, browser: Browser, tmp_path: Path) -> None:
    gateway = await stack.start("gateway")
    await wait_ready(stack)
    # The browser reaches the gateway through a proxy the test can cut, like a flaky network.
    proxy = FaultProxy(gateway.port)
    await proxy.start()
    context = await browser.new_context(viewport=PHONE_VIEWPORT, is_mobile=True, has_touch=True, locale="pt-BR")
    page = await context.new_page()
    problems: list[str] = []
    page.on("console", lambda message: _keep_errors(message, problems))
    page.on("pageerror", lambda error: problems.append(str(error)))
    try:
        await page.goto(f"http://127.0.0.1:{proxy.port}/")
        status = page.locator("#status")
        await expect(status).to_have_attribute("data-state", "online")

        # No worker yet: the question is queued and the typing indicator stays up.
        await ask(page, "Qual o prazo de entrega?")
        await expect(page.locator("#typing")).to_be_visible()
        await stack.start("worker")
        await expect(page.locator(".msg--bot").last).to_have_text(kb_answer("prazo-entrega"))
        await expect(page.locator("#typing")).to_be_hidden()

        # The connection drops and comes back: the page says so and reconnects by itself.
        await proxy.close()
        await expect(status).to_have_attribute("data-state", "connecting")
        await proxy.start()
        await expect(status).to_have_attribute("data-state", "online", timeout=15_000)
        await ask(page, "Quais as formas de pagamento?")
        await expect(page.locator(".msg--bot").last).to_have_text(kb_answer("formas-pagamento"))

        # A reload goes on with the same conversation, its token kept (SPEC 4): the stream opens
        # with it at once, and the conversation's replies keep coming.
        token = await page.evaluate("localStorage.getItem('atendimento.token')")
        assert token and "." in token
        await page.reload()
        await expect(status).to_have_attribute("data-state", "online")
        await ask(page, "Qual o prazo de entrega?")
        await expect(page.locator(".msg--bot").last).to_have_text(kb_answer("prazo-entrega"))
        # (each answer brings a fresh token of the same conversation: the page keeps the newest)
        kept = await page.evaluate("localStorage.getItem('atendimento.token')")
        assert kept.partition(".")[0] == token.partition(".")[0]

        # A gateway with API keys: the first message makes the page ask for one (nothing is asked
        # of the gateway before then), then it is sent and answered as before.
        guarded = await stack.start("gateway", GATEWAY_API_KEYS="page-key-0123456789")
        await wait_ready(stack)
        keyed = await context.new_page()
        await keyed.goto(f"{guarded.url}/")
        await ask(keyed, "Quanto custa o frete?")
        await expect(keyed.locator("#key-form")).to_be_visible()
        await keyed.locator("#key").fill("page-key-0123456789")
        await keyed.locator("#key").press("Enter")
        await expect(keyed.locator("#status")).to_have_attribute("data-state", "online")
        await expect(keyed.locator(".msg--bot").last).to_have_text(kb_answer("frete"))
        await keyed.close()

        # Fits a phone: nothing wider than the screen.
        assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        screenshot = tmp_path / "chat-page.png"
        await page.screenshot(path=str(screenshot), full_page=True, animations="disabled")
        print(f"chat page screenshot: {screenshot}")
        assert problems == []  # no script errors, no Content-Security-Policy violations
    finally:
        await context.close()
        await proxy.close()


def _keep_errors(message: ConsoleMessage, problems: list[str]) -> None:
    # A refused connection while the proxy is down is the point of the test, not a problem.
    if message.type == "error" and "ERR_CONNECTION" not in message.text and "Failed to load" not in message.text:
        problems.append(message.text)


async def test_chat_page_offers_quick_replies_and_shows_an_llm_reply_as_it_is_written(
    stack: Stack, browser: Browser
) -> None:
    """Chips for a reply's options (a tap sends the label as text and the option's id as
    `option`; the hand-over chip has a test of its own below), and an LLM reply growing in one
    bubble from the stream's `delta` events before its `reply` event completes it."""
    llm = await FakeLlm().start()
    context = await browser.new_context(viewport=PHONE_VIEWPORT, locale="pt-BR")
    try:
        gateway = await stack.start("gateway")
        worker = await stack.start("worker")
        await wait_ready(stack)
        page = await context.new_page()
        posted = posts_of(page)
        await page.goto(f"{gateway.url}/")
        await expect(page.locator("#status")).to_have_attribute("data-state", "online")

        await ask(page, "Quais as formas de pagamento?")
        chips = page.locator(".chips .chip")
        await expect(chips).to_have_text(["Posso parcelar?", "Boleto vencido"])
        await expect(page.locator(".chips")).to_have_attribute("role", "group")
        for box in [await chip.bounding_box() for chip in await chips.all()]:
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE_VIEWPORT["width"]
        await chips.first.click()
        await expect(page.locator(".msg--me").last).to_have_text("Posso parcelar?")
        await expect(page.locator(".msg--bot").last).to_have_text(kb_answer("parcelamento"))
        await expect(page.locator(".chips")).to_have_count(0)  # spent: the next reply has none
        assert "option" not in posted[0] and posted[1]["option"] == "Posso parcelar?"
        assert posted[1]["text"] == "Posso parcelar?"

        # The LLM engine, streaming: record every text the reply's bubble shows on the way.
        worker.stop()
        await stack.start("worker", REPLY_ENGINE="openai", OPENAI_BASE_URL=llm.url, OPENAI_MODEL="tiny")
        await wait_ready(stack)
        await page.evaluate(
            """() => {
              window.drafts = [];
              new MutationObserver((records) => {
                for (const record of records)
                  if (record.target.classList && record.target.classList.contains("msg--draft"))
                    record.addedNodes.forEach((node) => window.drafts.push(node.textContent));
              }).observe(document.getElementById("messages"), { childList: true, subtree: true });
            }"""
        )
        await ask(page, "Qual o prazo de entrega?")
        await expect(page.locator(".msg--bot").last).to_have_text(LLM_TEXT)
        await expect(page.locator(".msg--draft")).to_have_count(0)
        seen: list[str] = await page.evaluate("window.drafts")
        partial = [text for text in seen if text and text != LLM_TEXT]
        assert partial and all(LLM_TEXT.startswith(text) for text in partial), seen
        assert await page.locator(".msg--bot").count() == 4  # greeting, two answers, one streamed reply
    finally:
        await context.close()
        await llm.stop()


def posts_of(page: Page) -> list[dict[str, Any]]:
    """The bodies the page posts to /v1/messages, as they are sent (filled in as it goes)."""
    bodies: list[dict[str, Any]] = []

    def record(request: Request) -> None:
        if request.method == "POST" and request.url.endswith("/v1/messages"):
            body = request.post_data_json
            assert isinstance(body, dict)
            bodies.append(body)

    page.on("request", record)
    return bodies


async def test_the_handoff_chip_fits_shows_its_focus_and_hands_over(stack: Stack, browser: Browser) -> None:
    """The fallback's hand-over option is a chip labelled by the reply; it fits and shows its
    keyboard focus on a 390 px screen; a tap posts its id and the conversation goes to a person.
    A customer of their own (a new browser context), whose conversation the hand-over silences."""
    gateway = await stack.start("gateway")
    await stack.start("worker")
    await wait_ready(stack)
    url = gateway.url
    context = await browser.new_context(viewport=PHONE_VIEWPORT, locale="pt-BR")
    page = await context.new_page()
    posted = posts_of(page)
    await page.goto(f"{url}/")
    await expect(page.locator("#status")).to_have_attribute("data-state", "online")
    await ask(page, "qual a capital da mongólia?")
    chip = page.locator(".chips .chip")
    await expect(chip).to_have_text(["Falar com atendente"])

    # Keyboard focus (Shift+Tab from the composer reaches the chip) is drawn, not only recoloured.
    await page.locator("#text").focus()
    await page.keyboard.press("Shift+Tab")
    await expect(chip).to_be_focused()
    outline = await chip.evaluate(
        "c => [getComputedStyle(c).outlineStyle, parseFloat(getComputedStyle(c).outlineWidth)]"
    )
    assert outline[0] != "none" and outline[1] >= 2, outline
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

    await page.keyboard.press("Enter")
    await expect(page.locator(".msg--me").last).to_have_text("Falar com atendente")
    await expect(page.locator(".msg--note").last).to_have_text("Um atendente humano vai continuar esta conversa.")
    assert posted[-1]["option"] == "handoff" and posted[-1]["text"] == "Falar com atendente"
    await context.close()


async def test_only_the_latest_replys_chips_stay(stack: Stack, browser: Browser) -> None:
    """Two replies with options, the second arriving before the customer tapped anything (two
    questions sent in a row; a rating asked later works the same): only the last reply's options
    may still be chosen (the worker keeps those alone), so its chips replace the earlier ones
    instead of standing under them, where a tap would only get "please choose again"."""
    gateway = await stack.start("gateway")
    await stack.start("worker")
    await wait_ready(stack)
    context = await browser.new_context(viewport=PHONE_VIEWPORT, locale="pt-BR")
    try:
        page = await context.new_page()
        await page.goto(f"{gateway.url}/")
        await expect(page.locator("#status")).to_have_attribute("data-state", "online")
        await ask(page, "oi")  # the conversation's token, so the event stream is open
        await expect(page.locator(".msg--bot")).to_have_count(2)  # greeting and the reply

        # The first question is held at the network until the second is on its way: both are
        # sent before either reply arrives, then go through in order.
        second_sent, first_done = asyncio.Event(), asyncio.Event()
        posts: list[str] = []

        async def in_order(route: Route) -> None:
            posts.append(route.request.url)
            if len(posts) == 1:
                await asyncio.wait_for(second_sent.wait(), 20)
                await route.fulfill(response=await route.fetch())
                first_done.set()
            else:
                second_sent.set()
                await asyncio.wait_for(first_done.wait(), 20)
                await route.fulfill(response=await route.fetch())

        await page.route("**/v1/messages", in_order)
        await ask(page, "Quais as formas de pagamento?")  # answered with two buttons of its own
        await ask(page, "e a entrega?")  # asked back: candidate entries and the hand-over
        await expect(page.locator(".msg--bot")).to_have_count(4)
        await expect(page.locator(".chips")).to_have_count(1)
        await expect(page.locator(".chips .chip").last).to_have_text("Falar com atendente")
        assert "Posso parcelar?" not in await page.locator(".chips .chip").all_text_contents()
    finally:
        await context.close()
