from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Generator
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser, async_playwright
from redis.asyncio import Redis

from tests.support import CHROMIUM, CHROMIUM_ARGS, REDIS_URL, Stack, new_namespace, purge_namespace
from tests.support.channel_fakes import FakeChannelApi
from tests.support.fake_llm import FakeLlm

# The multilingual model's engine (OpenMP) spreads each embedding over every core by default. The
# suite runs two test processes on two cores, each with workers of its own: threads of one process
# then wait at every barrier for cores the others hold, spending CPU to save nothing. One thread
# each, in this process and in every service it starts (they inherit its environment); the
# vectors are the same.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# A test using one of these starts services, talks to the shared servers or drives Chromium: it is
# marked `integration` here, so that `pytest -m "not integration"` (the unit tier) needs none of them.
# Tests that reach a server otherwise carry the mark themselves.
INTEGRATION_FIXTURES = frozenset({"stack", "redis", "browser"})
# Loading the multilingual model and embedding with it takes seconds to minutes on a busy machine:
# tests using it (test_kb_engine's `model` fixture) are marked `model`, and every `model` test counts
# as `integration` too, so the unit tier stays fast; `pytest -m model` runs them alone.
MODEL_FIXTURES = frozenset({"model"})


@pytest.fixture
async def stack(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    """An empty stack in a fresh namespace; the test starts the services it needs."""
    stack = Stack(new_namespace(), tmp_path)
    try:
        yield stack
    finally:
        # In a thread: the servers this test runs in its own event loop (trace collector, fake LLM,
        # channel APIs) must keep answering the services while they stop (their last flush).
        await asyncio.to_thread(stack.stop_all)
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(stack.logs())
        await purge_namespace(stack.namespace)


@pytest.fixture
async def api() -> AsyncIterator[FakeChannelApi]:
    """Local stand-ins for the WhatsApp Graph API and the Telegram Bot API. Asked for before
    `stack` it outlives the services (fixtures are torn down in reverse): a test whose gateway may
    still be delivering when it ends needs that, or the stop retries those sends for its whole grace."""
    fake = await FakeChannelApi().start()
    try:
        yield fake
    finally:
        await fake.close()


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    """A client of the shared Redis, for tests that look at what the services stored."""
    client = Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def llm() -> AsyncIterator[FakeLlm]:
    """A local OpenAI-compatible server (chat completions, audio) with a scriptable behaviour."""
    server = await FakeLlm().start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium headless shell driven by Playwright's own driver: nothing is downloaded."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"Debian's Chromium is needed at {CHROMIUM}: run scripts/ensure-test-tools.sh (make test does)")
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if MODEL_FIXTURES.intersection(fixtures):
            item.add_marker(pytest.mark.model)
        if INTEGRATION_FIXTURES.intersection(fixtures) or item.get_closest_marker("model"):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    setattr(item, f"rep_{report.when}", report)
    return report
