"""For operators (issue 13): the questions the bot could not answer, in the admin area and as CSV,
and the knowledge base reloading without a restart (file change, or the admin's button reaching
every worker), a bad file keeping the old base and saying why."""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import uuid
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from shared import unanswered
from shared.messages import Option, ReplyContent
from shared.names import Names
from tests.support import REDIS_URL, TEST_SHARDS, Service, Stack, eventually, post_message
from tests.support.pipeline import wait_ready

TOKEN = "admin-" + uuid.uuid4().hex
SAMPLE = Path(__file__).resolve().parent.parent / "shared" / "data" / "kb-sample.yaml"
BITCOIN = "qual o resultado da loteria?"
BITCOIN_ENTRY = """
  - id: bitcoin
    questions: ["Qual o resultado da loteria?", "Vocês vendem bilhete de loteria?"]
    answer: "Não vendemos nem aceitamos bitcoin e não temos o resultado da loteria."
"""


async def _ask(http: aiohttp.ClientSession, stack: Stack, user: str, text: str) -> dict[str, object]:
    status, body = await post_message(http, stack.gateway, {"user_id": user, "text": text}, wait=10)
    assert status == 200, body
    reply = body["reply"]
    assert isinstance(reply, dict)
    return reply


async def _sign_in(browser: aiohttp.ClientSession, monitor: Service) -> None:
    async with browser.post(monitor.url + "/admin/login", data={"operator": "Ana", "token": TOKEN}) as response:
        assert response.status == 200 and 'id="knowledge-link"' in await response.text()


async def _knowledge_page(browser: aiohttp.ClientSession, monitor: Service) -> str:
    async with browser.get(monitor.url + "/admin/knowledge", headers={"Accept-Language": "en"}) as response:
        assert response.status == 200
        return await response.text()


async def test_unanswered_questions_are_listed_and_exported_and_the_base_reloads_on_every_worker(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    kb_file = stack.tmp / "kb.yaml"
    shutil.copyfile(SAMPLE, kb_file)
    stack.extra_env.update(KB_PATH=str(kb_file), KB_RELOAD_INTERVAL_SECONDS="0.2", HANDOFF_AFTER_FALLBACKS="2")
    await stack.start("gateway")
    await stack.start("worker")
    await stack.start("worker")
    monitor = await stack.start("monitor", ADMIN_TOKEN=TOKEN)
    await wait_ready(stack)

    # Two fallbacks in a row in one conversation: the second hands it to a human.
    assert (await _ask(http, stack, "ana", BITCOIN))["sources"] == []
    assert (await _ask(http, stack, "ana", "Qual o resultado da LOTERIA??"))["handoff"] is True
    assert (await _ask(http, stack, "bia", "qual o prazo de entrega?"))["sources"] == ["prazo-entrega"]

    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        async with browser.get(monitor.url + "/admin/knowledge/unanswered.csv") as response:
            assert response.status == 200 and "/admin/login" in str(response.url)  # signed out: no data
        await _sign_in(browser, monitor)

        async def listed() -> bool:
            return "qual o resultado da loteria" in await _knowledge_page(browser, monitor)

        await eventually(listed, what="the unanswered question in the admin page")
        async with browser.get(monitor.url + "/admin/knowledge/unanswered.csv") as response:
            assert response.status == 200 and response.content_type == "text/csv"
            rows = list(csv.DictReader(io.StringIO(await response.text())))
        assert [row["question"] for row in rows] == ["qual o resultado da loteria"]  # the answered one is not there
        row = rows[0]
        assert (row["last_24h"], row["last_7d"], row["fallback"], row["handoff"]) == ("2", "2", "1", "1")
        assert row["example"] in (BITCOIN, "Qual o resultado da LOTERIA??")

        # Every worker reports the base it serves.
        page = await _knowledge_page(browser, monitor)
        assert page.count("<td>27</td>") == 2, page

        # A changed file is picked up by every worker, without a restart.
        kb_file.write_text(kb_file.read_text(encoding="utf-8") + BITCOIN_ENTRY, encoding="utf-8")

        async def both_reloaded() -> bool:
            return (await _knowledge_page(browser, monitor)).count("<td>28</td>") == 2

        await eventually(both_reloaded, what="both workers serving the 28-entry base")
        for user in ("caio", "duda", "edu", "fabi"):  # different conversations, so both workers answer
            assert (await _ask(http, stack, user, BITCOIN))["sources"] == ["bitcoin"]

        # A bad file keeps the old base, and the admin sees why on each worker.
        good = kb_file.read_text(encoding="utf-8")
        kb_file.write_text(good.replace("  - id: bitcoin\n", "  - id: frete\n"), encoding="utf-8")

        async def refused() -> bool:
            page = await _knowledge_page(browser, monitor)
            # Each worker's row says why; so does the monitor, which reads the same file for its forms.
            return page.count('<tr class="refused">') == 2 and page.count("duplicate id") == 3

        await eventually(refused, what="both workers refusing the bad file")
        assert (await _ask(http, stack, "gabi", BITCOIN))["sources"] == ["bitcoin"]
        assert "knowledge base NOT reloaded" in stack.logs()

        # The admin's button reloads even a file whose change no watcher can see (same size and mtime).
        kb_file.write_text(good, encoding="utf-8")
        await eventually(lambda: _no_refusal(browser, monitor), what="the good file back in service")
        before = kb_file.stat()
        kb_file.write_text(good.replace("aceitamos bitcoin", "aceitamos BITCOIN"), encoding="utf-8")
        os.utime(kb_file, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert kb_file.stat().st_size == before.st_size
        page = await _knowledge_page(browser, monitor)
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf is not None
        async with browser.post(monitor.url + "/admin/knowledge/reload", data={"csrf": "wrong"}) as response:
            assert response.status == 403
        async with browser.post(monitor.url + "/admin/knowledge/reload", data={"csrf": csrf.group(1)}) as response:
            assert response.status == 200 and "Reload requested" in await response.text()

        async def new_answer_everywhere() -> bool:
            for user in ("h1", "h2", "h3", "h4"):
                if "BITCOIN" not in str((await _ask(http, stack, user, BITCOIN))["text"]):
                    return False
            return True

        await eventually(new_answer_everywhere, what="every worker answering from the reloaded file")


async def _no_refusal(browser: aiohttp.ClientSession, monitor: Service) -> bool:
    return "duplicate id" not in await _knowledge_page(browser, monitor)


def test_which_replies_count_as_unanswered() -> None:
    fallback = ReplyContent(text="?", engine="kb", confidence=0.2, fallback=True)
    handoff = ReplyContent(text="!", engine="kb", confidence=0.2, handoff=True)
    asked = ReplyContent(text="", engine="kb", confidence=0.5, kind="clarify", options=(Option("frete", "Frete"),))
    again = ReplyContent(text="?", engine="choice", confidence=1.0, kind="clarify")
    sure = ReplyContent(text="a", engine="kb", confidence=0.8, sources=("frete",))
    small_talk = ReplyContent(text="Olá!", engine="kb", confidence=0.95)
    kinds = [
        unanswered.kind_of(unanswered.Answered("q", generated, sent))
        for generated, sent in (
            (fallback, fallback),
            (fallback, handoff),
            (asked, asked),
            (sure, sure),
            (small_talk, small_talk),
            (again, again),
        )
    ]
    assert kinds == ["fallback", "handoff", "clarify", None, None, None]
    assert unanswered.kind_of(unanswered.Answered("q", fallback, fallback, silenced=True)) is None
    assert unanswered.normalise("  Vocês vendem   BITCOIN?? ") == "voces vendem bitcoin"


@pytest.mark.integration  # the shared Redis
async def test_memory_is_bounded_and_expires() -> None:
    names = Names(f"test-{uuid.uuid4().hex[:8]}", TEST_SHARDS)
    redis = Redis.from_url(REDIS_URL)
    fallback = ReplyContent(text="?", engine="kb", confidence=0.1, fallback=True)
    try:
        now = 1_800_000_000.0
        cap = unanswered.MAX_QUESTIONS_PER_HOUR
        batch = [unanswered.Answered(f"pergunta {i}", fallback, fallback) for i in range(cap + 5)]
        await unanswered.record(redis, names, batch, now=now)
        hour = int(now // unanswered.HOUR_S)
        assert await redis.hlen(unanswered.counts_key(names, hour)) == cap + 1  # the rest in one row
        assert 0 < await redis.ttl(unanswered.counts_key(names, hour)) <= unanswered.TTL_S
        rows = await unanswered.report(redis, names, now=now, limit=cap + 10)
        other = next(row for row in rows if row.question == unanswered.OTHER)
        assert other.last_7d == 5 and sum(row.last_7d for row in rows) == cap + 5
        # Two days later the questions are out of the 24-hour column, still in the 7-day one.
        later = await unanswered.report(redis, names, now=now + 2 * 86_400, limit=3)
        assert later[0].last_24h == 0 and later[0].last_7d >= 1
        assert await unanswered.report(redis, names, now=now + 8 * 86_400) == []
    finally:
        async for key in redis.scan_iter(match=f"{names.namespace}:*"):
            await redis.delete(key)
        await redis.aclose()
