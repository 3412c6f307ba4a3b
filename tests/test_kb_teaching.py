"""Operators teach the bot: "this meant entry X" and "out of scope" on the unanswered questions,
suggested phrasings from customers who chose an entry after a question back, and the overlay of
taught phrasings that every running worker applies on top of KB_PATH without a restart, exported
as a YAML patch."""

from __future__ import annotations

import asyncio
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest
import yaml
from aiohttp import web
from redis.asyncio import Redis

from services.monitor.admin import teaching
from services.monitor.admin.basefile import BaseFile
from services.monitor.audit import Actor, AuditLog
from services.monitor.keys import AUDIT, BASE, STORE
from services.worker.engines.kb import KbEngine, KnowledgeBase
from services.worker.engines.kbfile import parse
from services.worker.engines.policy import ReplyPolicy
from services.worker.kbreload import KbReloader, LiveEngine, load
from shared import kbstate, phrasings, unanswered
from shared.messages import ReplyContent
from shared.names import Names
from shared.store import Store
from shared.web import Problem
from tests.support import AMQP_URL, REDIS_URL, TEST_SHARDS, Service, Stack, eventually, post_message
from tests.support.pipeline import wait_ready

TOKEN = "admin-" + uuid.uuid4().hex
SAMPLE = Path(__file__).resolve().parent.parent / "shared" / "data" / "kb-sample.yaml"
LOTTERY = "qual o resultado da loteria?"
BICYCLE = "vocês consertam bicicleta?"
ENTRY = "loja-fisica"
ANA = Actor("Ana", "127.0.0.1")


@pytest.fixture
async def names() -> AsyncIterator[tuple[Redis, Names]]:
    """A client of the real Redis and a fresh namespace, purged afterwards."""
    redis = Redis.from_url(REDIS_URL)
    found = Names(f"test-{uuid.uuid4().hex[:8]}", TEST_SHARDS)
    try:
        yield redis, found
    finally:
        async for key in redis.scan_iter(match=f"{found.namespace}:*"):
            await redis.delete(key)
        await redis.aclose()


def _admin(redis: Redis, names: Names, kb_path: Path) -> web.Application:
    """What teaching.py needs of the monitor's application."""
    app = web.Application()
    app[STORE] = Store(redis, names)
    app[AUDIT] = AuditLog(redis, names)
    app[BASE] = BaseFile(kb_path)
    return app


def test_taught_phrasings_are_appended_to_their_entries_and_unknown_entries_are_named() -> None:
    knowledge = KnowledgeBase.load(SAMPLE)
    taught = knowledge.with_phrasings(
        {ENTRY: ["Cadê o balcão de vocês?", "  vocês têm LOJA física? "], "gone": ["qualquer coisa"]}
    )
    original = next(e for e in knowledge.entries if e.id == ENTRY)
    entry = next(e for e in taught.entries if e.id == ENTRY)
    assert entry.questions == (*original.questions, "Cadê o balcão de vocês?")  # the file's own one not twice
    assert entry.answer == original.answer and len(taught.entries) == len(knowledge.entries)
    assert knowledge.unknown(["gone", ENTRY]) == ["gone"]
    assert KbEngine(taught).answer("Cadê o balcão de vocês?").sources == (ENTRY,)


@pytest.mark.integration  # the shared Redis
async def test_the_reloader_applies_the_overlay_when_it_changes_and_reports_unknown_entries(
    names: tuple[Redis, Names], tmp_path: Path
) -> None:
    redis, ns = names
    kb_file = tmp_path / "kb.yaml"
    shutil.copyfile(SAMPLE, kb_file)
    built: list[KnowledgeBase] = []

    def build(knowledge: KnowledgeBase) -> ReplyPolicy:
        built.append(knowledge)
        catalog = KbEngine(knowledge)
        return ReplyPolicy(catalog, knowledge.language, catalog=catalog)

    live = LiveEngine(load(kb_file, build))
    reloader = KbReloader(kb_file, build, live, Store(redis, ns), "w1", grace_s=0.0)
    await reloader.check()
    assert len(built) == 1  # nothing taught: nothing rebuilt

    assert await phrasings.add(redis, ns, ENTRY, LOTTERY)
    assert not await phrasings.add(redis, ns, ENTRY, f"  {LOTTERY} ")  # the same, once cleaned
    assert await phrasings.add(redis, ns, "gone", "qualquer coisa")
    await reloader.check()
    assert len(built) == 2 and LOTTERY in next(e for e in built[-1].entries if e.id == ENTRY).questions
    assert (live.loaded.phrasings, live.loaded.ignored) == (1, ("gone",))
    [status] = await kbstate.statuses(redis, ns, live.loaded.at)
    assert (status["phrasings"], status["ignored"]) == (1, ["gone"])
    await reloader.check()
    assert len(built) == 2  # unchanged overlay: not rebuilt again

    assert await phrasings.remove(redis, ns, ENTRY, LOTTERY)
    assert not await phrasings.remove(redis, ns, ENTRY, LOTTERY)
    await reloader.check()
    assert len(built) == 3 and LOTTERY not in next(e for e in built[-1].entries if e.id == ENTRY).questions
    await live.close()


@pytest.mark.integration  # the shared Redis
async def test_a_suggested_phrasing_is_recorded_from_a_resolved_question_back_and_accepted_by_a_person(
    names: tuple[Redis, Names],
) -> None:
    redis, ns = names
    app = _admin(redis, ns, SAMPLE)
    asked = "Cadê o balcão de vocês??"
    chosen = ReplyContent(
        text="Somos uma loja só online", engine="kb", confidence=1.0, sources=(ENTRY,), resolves=asked
    )
    plain = ReplyContent(text="Somos uma loja só online", engine="kb", confidence=0.9, sources=(ENTRY,))
    answered = [
        unanswered.Answered("1", chosen, chosen),
        unanswered.Answered("1", plain, plain),  # an answer nobody chose from options: no suggestion
        unanswered.Answered("1", chosen, chosen, silenced=True),  # never shown: no suggestion
    ]
    await unanswered.record(redis, ns, answered)
    await unanswered.record(redis, ns, answered[:1])
    [suggestion] = await unanswered.suggestions(redis, ns)
    assert (suggestion.entry_id, suggestion.question, suggestion.example, suggestion.count) == (
        ENTRY,
        "cade o balcao de voces",
        asked,
        2,
    )
    assert 0 < await redis.ttl(ns.kb_suggestions_key) <= unanswered.TTL_S
    assert (await phrasings.read(redis, ns)).phrasings == {}  # never applied without a person

    assert await teaching.accept(app, ANA, ENTRY, suggestion.question) == asked
    overlay = await phrasings.read(redis, ns)
    assert overlay.phrasings == {ENTRY: (asked,)} and overlay.version == 1
    assert await unanswered.suggestions(redis, ns) == []
    await unanswered.record(redis, ns, answered[:1])
    assert await unanswered.suggestions(redis, ns) == []  # accepted once: not suggested again
    with pytest.raises(Problem) as refused:
        await teaching.accept(app, ANA, ENTRY, suggestion.question)
    assert refused.value.status == 404 and refused.value.detail.startswith("question")

    # Another one, dismissed: gone, and not suggested again either.
    other = ReplyContent(text="x", engine="kb", confidence=1.0, sources=("frete",), resolves="quanto custa mandar?")
    await unanswered.record(redis, ns, [unanswered.Answered("2", other, other)])
    [suggestion] = await unanswered.suggestions(redis, ns)
    await teaching.dismiss_suggestion(app, ANA, "frete", suggestion.question)
    await unanswered.record(redis, ns, [unanswered.Answered("2", other, other)])
    assert await unanswered.suggestions(redis, ns) == []
    assert (await phrasings.read(redis, ns)).phrasings == {ENTRY: (asked,)}
    with pytest.raises(Problem) as bad:
        await teaching.accept(app, ANA, "no-such-entry", suggestion.question)
    assert bad.value.status == 400 and bad.value.detail.startswith("entry_id")
    actions = [(e["action"], e["target"], e["outcome"]) for e in reversed(await app[AUDIT].recent())]
    assert actions[:2] == [("accept_phrasing", ENTRY, "ok"), ("accept_phrasing", ENTRY, "refused")]
    assert ("dismiss_suggestion", "frete", "ok") in actions
    assert all(asked not in str(entry) for entry in await app[AUDIT].recent())  # no customer words


@pytest.mark.integration  # the shared Redis
async def test_a_question_taught_one_way_is_no_longer_offered_the_other_way(names: tuple[Redis, Names]) -> None:
    """A question back the customer then resolved is both an unanswered question (the bot asked back)
    and a suggested phrasing of the entry they chose: teaching it either way settles both."""
    redis, ns = names
    app = _admin(redis, ns, SAMPLE)
    for asked in ("Cadê o balcão de vocês??", "tem loja pra eu ir?"):
        clarify = ReplyContent(text="Você quis dizer...?", engine="kb", confidence=0.5, kind="clarify")
        chosen = ReplyContent(text="Somos online", engine="kb", confidence=1.0, sources=(ENTRY,), resolves=asked)
        await unanswered.record(
            redis, ns, [unanswered.Answered(asked, clarify, clarify), unanswered.Answered("1", chosen, chosen)]
        )
    listed = {row.question for row in await unanswered.report(redis, ns)}
    suggested = {s.question for s in await unanswered.suggestions(redis, ns)}
    assert listed == suggested == {"cade o balcao de voces", "tem loja pra eu ir"}

    await teaching.accept(app, ANA, ENTRY, "cade o balcao de voces")  # the suggestion accepted
    assert {row.question for row in await unanswered.report(redis, ns)} == {"tem loja pra eu ir"}
    await teaching.attach(app, ANA, "tem loja pra eu ir", ENTRY)  # the question attached
    assert await unanswered.suggestions(redis, ns) == []
    assert (await phrasings.read(redis, ns)).phrasings == {ENTRY: ("Cadê o balcão de vocês??", "tem loja pra eu ir?")}


@pytest.mark.integration  # the shared Redis
async def test_suggestions_are_bounded() -> None:
    redis = Redis.from_url(REDIS_URL)
    ns = Names(f"test-{uuid.uuid4().hex[:8]}", TEST_SHARDS)
    try:
        now = 1_800_000_000.0
        batch = [
            unanswered.Answered("q", reply, reply)
            for i in range(unanswered.MAX_SUGGESTIONS + 3)
            for reply in [ReplyContent("a", "kb", 1.0, sources=("frete",), resolves=f"pergunta {i}")]
        ]
        await unanswered.record(redis, ns, batch, now=now)
        assert await redis.zcard(ns.kb_suggestions_key) == unanswered.MAX_SUGGESTIONS
        # Once a suggestion is older than TTL_S, the next one recorded sweeps it out.
        fresh = ReplyContent("a", "kb", 1.0, sources=("frete",), resolves="bem nova")
        await unanswered.record(redis, ns, [unanswered.Answered("q", fresh, fresh)], now=now + unanswered.TTL_S + 1)
        assert [s.question for s in await unanswered.suggestions(redis, ns, now=now + unanswered.TTL_S + 1)] == [
            "bem nova"
        ]
        assert await redis.hlen(ns.kb_suggestion_examples_key) == 1
    finally:
        async for key in redis.scan_iter(match=f"{ns.namespace}:*"):
            await redis.delete(key)
        await redis.aclose()


def test_the_yaml_patch_says_what_it_is_and_parses_as_entries() -> None:
    overlay = phrasings.Overlay(3, {ENTRY: ("Cadê o balcão?", 'tem "loja": sim?'), "gone": ("x",)})
    text = phrasings.export_yaml(overlay, "prod", frozenset({"gone"}), now=0)
    assert text.startswith("# Phrasings taught in the admin area (namespace prod), exported 1970-01-01T00:00:00Z.")
    assert "# Not in the base in force (ignored by the workers): gone." in text
    assert yaml.safe_load(text) == {
        "entries": [
            {"id": ENTRY, "questions": ["Cadê o balcão?", 'tem "loja": sim?']},
            {"id": "gone", "questions": ["x"]},
        ]
    }
    # Merged by hand into the base, it is a valid base whose entry answers the taught phrasing.
    base = yaml.safe_load(SAMPLE.read_text(encoding="utf-8"))
    for entry in base["entries"]:
        if entry["id"] == ENTRY:
            entry["questions"] += yaml.safe_load(text)["entries"][0]["questions"]
    assert KbEngine(parse(base, "merged")).answer("Cadê o balcão?").sources == (ENTRY,)


# End to end: real gateway, worker and monitor ---------------------------------------------------
async def _ask(http: aiohttp.ClientSession, stack: Stack, text: str) -> dict[str, Any]:
    # A new conversation each time: fallbacks in a row would hand one to a human.
    status, body = await post_message(http, stack.gateway, {"user_id": uuid.uuid4().hex, "text": text}, wait=10)
    assert status == 200, body
    reply = body["reply"]
    assert isinstance(reply, dict)
    return reply


async def _page(browser: aiohttp.ClientSession, monitor: Service, language: str = "en") -> str:
    async with browser.get(monitor.url + "/admin/knowledge", headers={"Accept-Language": language}) as response:
        assert response.status == 200
        return await response.text()


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None
    return found.group(1)


async def _anonymous_is_refused(monitor: Service) -> None:
    async with aiohttp.ClientSession() as anonymous:
        for path in ("/admin/knowledge/phrasings.yaml",):
            async with anonymous.get(monitor.url + path, allow_redirects=False) as response:
                assert response.status == 303 and response.headers["Location"] == "/admin/login"
        forms = ("attach", "dismiss", "suggestions/accept", "suggestions/dismiss", "phrasings/remove")
        for form in forms:
            async with anonymous.post(
                f"{monitor.url}/admin/knowledge/{form}",
                data={"question": "x", "entry_id": ENTRY},
                allow_redirects=False,
            ) as response:
                assert (response.status, response.headers.get("Location")) == (303, "/admin/login"), form
        for path in ("/admin/api/knowledge", "/admin/api/knowledge/phrasings.yaml"):
            async with anonymous.get(monitor.url + path) as response:
                assert response.status == 401 and response.content_type == "application/problem+json", path
        for form in forms:
            async with anonymous.post(f"{monitor.url}/admin/api/knowledge/{form}", json={"question": "x"}) as response:
                assert response.status == 401, form


async def test_an_operator_teaches_a_running_worker_and_dismisses_out_of_scope_questions(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    kb_file = stack.tmp / "kb.yaml"
    shutil.copyfile(SAMPLE, kb_file)
    stack.extra_env.update(KB_PATH=str(kb_file), KB_RELOAD_INTERVAL_SECONDS="0.2")
    await stack.start("gateway")
    await stack.start("worker")
    monitor = await stack.start("monitor", ADMIN_TOKEN=TOKEN)
    await wait_ready(stack)
    await _anonymous_is_refused(monitor)

    assert (await _ask(http, stack, LOTTERY))["kind"] == "fallback"
    assert (await _ask(http, stack, BICYCLE))["kind"] == "fallback"
    answer = next(e.answer for e in KnowledgeBase.load(kb_file).entries if e.id == ENTRY)

    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        async with browser.post(monitor.url + "/admin/login", data={"operator": "Ana", "token": TOKEN}) as response:
            assert response.status == 200

        async def listed() -> str | None:
            page = await _page(browser, monitor)
            return page if "qual o resultado da loteria" in page and "voces consertam bicicleta" in page else None

        page = await eventually(listed, what="both questions in the admin page")
        assert '<option value="loja-fisica">Vocês têm loja física?</option>' in page  # the base's entries
        csrf = _csrf(page)
        attach = {"csrf": csrf, "question": "qual o resultado da loteria", "entry_id": ENTRY}
        async with browser.post(monitor.url + "/admin/knowledge/attach", data=attach | {"csrf": "wrong"}) as response:
            assert response.status == 403
        async with browser.post(
            monitor.url + "/admin/knowledge/attach", data=attach | {"entry_id": "nope"}
        ) as response:
            assert response.status == 400 and (await response.json())["detail"].startswith("entry_id")
        async with browser.post(
            monitor.url + "/admin/knowledge/attach", data=attach, headers={"Accept-Language": "en"}
        ) as response:
            assert response.status == 200 and "Taught: every worker answers" in await response.text()

        # The running worker picks the phrasing up: same question, the entry's answer, no restart.
        async def taught() -> bool:
            reply = await _ask(http, stack, LOTTERY)
            return (reply["sources"], reply["text"], reply["kind"]) == ([ENTRY], answer, "answer")

        await eventually(taught, what="the worker answering the taught question")
        page = await _page(browser, monitor)
        assert "qual o resultado da loteria</td>" not in page  # attached: no longer listed
        assert '<td data-taught="1">1</td>' in page  # the worker says it applies one taught phrasing

        # The YAML patch holds the customer's words under the entry.
        async with browser.get(monitor.url + "/admin/knowledge/phrasings.yaml") as response:
            assert response.status == 200 and response.content_type == "application/yaml"
            assert "taught-phrasings.yaml" in response.headers["Content-Disposition"]
            text = await response.text()
        assert text.startswith("# Phrasings taught in the admin area")
        assert yaml.safe_load(text) == {"entries": [{"id": ENTRY, "questions": [LOTTERY]}]}

        # Out of scope: the row goes.
        dismiss = {"csrf": csrf, "question": "voces consertam bicicleta"}
        async with browser.post(monitor.url + "/admin/knowledge/dismiss", data=dismiss) as response:
            assert response.status == 200
        page = await _page(browser, monitor)
        assert "voces consertam bicicleta" not in page
        assert "Nothing in the last 7 days." in page
        async with browser.post(monitor.url + "/admin/knowledge/dismiss", data=dismiss) as response:
            assert response.status == 404 and (await response.json())["detail"].startswith("question")
        portuguese = await _page(browser, monitor, "pt-BR")
        assert "Formulações ensinadas na área administrativa" in portuguese and "Baixar como patch YAML" in portuguese

    # The same through the JSON API, with the bearer token: list, then remove the phrasing.
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with http.get(monitor.url + "/admin/api/knowledge", headers=bearer) as response:
        view = await response.json()
    assert view["phrasings"]["entries"] == [{"id": ENTRY, "questions": [LOTTERY], "in_base": True}]
    assert {"id": ENTRY, "label": "Vocês têm loja física?"} in view["entries"] and view["unanswered"] == []
    removal = {"entry_id": ENTRY, "phrasing": LOTTERY}
    async with http.post(
        monitor.url + "/admin/api/knowledge/phrasings/remove", json=removal, headers=bearer
    ) as response:
        assert response.status == 200, await response.text()

    async def forgotten() -> bool:
        return bool((await _ask(http, stack, LOTTERY))["kind"] == "fallback")

    await eventually(forgotten, what="the worker forgetting the removed phrasing")
    async with http.get(monitor.url + "/admin/api/audit", headers=bearer) as response:
        done = [(e["action"], e["actor"], e["outcome"]) for e in (await response.json())["entries"]]
    assert ("teach_phrasing", "Ana", "ok") in done and ("teach_phrasing", "Ana", "refused") in done
    assert ("dismiss_question", "Ana", "ok") in done and ("remove_phrasing", "api", "ok") in done


async def waiting_messages(namespace: str) -> int:
    """Messages ready in the namespace's shard queues."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        total = 0
        for name in Names(namespace, TEST_SHARDS).shard_queues:
            queue = await channel.declare_queue(name, passive=True)
            total += queue.declaration_result.message_count or 0
        return total


@pytest.mark.parametrize("interval", ["2", "0"])
async def test_a_worker_that_starts_answers_with_what_was_taught_from_its_first_message(
    stack: Stack, http: aiohttp.ClientSession, interval: str
) -> None:
    """A new replica, or one restarted, takes the messages waiting for it with the taught phrasings
    already on top of the file; with KB_RELOAD_INTERVAL_SECONDS=0 too (the file is read at start)."""
    kb_file = stack.tmp / "kb.yaml"
    shutil.copyfile(SAMPLE, kb_file)
    stack.extra_env.update(KB_PATH=str(kb_file), KB_RELOAD_INTERVAL_SECONDS=interval)
    redis = Redis.from_url(REDIS_URL)
    try:
        assert await phrasings.add(redis, Names(stack.namespace, TEST_SHARDS), ENTRY, LOTTERY)
    finally:
        await redis.aclose()
    await stack.start("gateway")
    await wait_ready(stack)  # the gateway (no worker yet)
    # Waiting for the worker: a backlog it takes as soon as it starts.
    asked = asyncio.create_task(
        post_message(http, stack.gateway, {"user_id": uuid.uuid4().hex, "text": LOTTERY}, wait=30)
    )

    async def queued() -> bool:  # the message waits in its shard queue: the worker finds a backlog
        return await waiting_messages(stack.namespace) > 0

    await eventually(queued, what="the message queued before the worker starts")
    await stack.start("worker")
    status, body = await asked
    assert status == 200, body
    assert (body["reply"]["kind"], body["reply"]["sources"]) == ("answer", [ENTRY]), body["reply"]
