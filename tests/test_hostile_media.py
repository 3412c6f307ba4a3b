"""Hostile media cannot hurt the worker (issue 26, points 1 and 2): a PDF decompression bomb ends
in its own child process with the polite "too large" reply while the worker's memory stays within
its budget, and media is fetched only where the platform serves it: an SSRF target on 127.0.0.1
stays untouched, the token goes nowhere else, and a Telegram file_path cannot climb out.

The Graph API, the Bot API and the LLM are local stand-ins (tests/support); the worker is the
real process, its peak memory read from the kernel (/proc/<pid>/status VmHWM)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from services.worker.media import POLITE
from services.worker.media.documents import MAX_STREAM_BYTES, TooLargeDocument, Unreadable, pdf_text
from services.worker.media.fetch import TELEGRAM_PATH_RE
from services.worker.media.hosts import ForbiddenAddress, GuardedResolver, MediaHosts, NotAllowed, is_public
from services.worker.media.pdfchild import Limits
from shared.settings import Settings
from tests.support import Stack, eventually, free_port
from tests.support.channel_fakes import (
    TELEGRAM_ENV,
    WHATSAPP_ENV,
    FakeChannelApi,
    Received,
    post_telegram,
    post_whatsapp,
    telegram_media,
    whatsapp_message,
)
from tests.support.fake_llm import LLM_TEXT, FakeLlm
from tests.support.pdfs import pdf_bomb, tiny_pdf
from tests.support.pipeline import wait_ready

polite = POLITE["pt"]
WORKER_BUDGET_BYTES = 150 * 2**20
LIMITS = Limits(
    max_chars=20_000, max_pages=20, max_stream_bytes=MAX_STREAM_BYTES, memory_bytes=256 * 2**20, cpu_seconds=10
)
PDF = "application/pdf"


# -- the PDF reader child ---------------------------------------------------------------------


async def test_an_honest_pdf_is_read_in_the_child() -> None:
    assert await pdf_text(tiny_pdf("Fatura 2026-11: total R$ 123,45"), LIMITS, 30) == "Fatura 2026-11: total R$ 123,45"


async def test_a_bomb_stops_at_the_inflation_cap() -> None:
    with pytest.raises(TooLargeDocument, match="inflates past the limit"):
        await pdf_text(pdf_bomb(), LIMITS, 30)


async def test_a_bomb_past_the_inflation_cap_still_stops_at_the_memory_ceiling() -> None:
    # As if pypdf had no cap of its own (an older version): the address-space limit holds.
    uncapped = Limits(20_000, 20, max_stream_bytes=2**31, memory_bytes=160 * 2**20, cpu_seconds=30)
    with pytest.raises(TooLargeDocument):
        await pdf_text(pdf_bomb(200 * 2**20), uncapped, 60)


async def test_a_bomb_past_the_inflation_cap_stops_at_the_cpu_limit() -> None:
    # Room enough in memory, but one CPU second: the kernel stops the child (SIGXCPU/SIGKILL).
    slow = Limits(20_000, 20, max_stream_bytes=2**31, memory_bytes=2**31, cpu_seconds=1)
    with pytest.raises(TooLargeDocument, match="signal"):
        await pdf_text(pdf_bomb(), slow, 60)


async def test_a_damaged_pdf_is_unreadable_not_too_large() -> None:
    for damaged in (b"%PDF-1.4 this is not really a PDF", tiny_pdf("x")[:200], b""):
        with pytest.raises(Unreadable):
            await pdf_text(damaged, LIMITS, 30)


async def test_the_text_kept_is_capped() -> None:
    short = Limits(
        max_chars=100, max_pages=20, max_stream_bytes=MAX_STREAM_BYTES, memory_bytes=256 * 2**20, cpu_seconds=10
    )
    assert len(await pdf_text(pdf_bomb(200_000), short, 30)) == 100


# -- where media may come from ----------------------------------------------------------------


def hosts(**env: str) -> MediaHosts:
    base = {"WHATSAPP_API_BASE": "http://127.0.0.1:8123/v19.0", "TELEGRAM_API_BASE": "https://api.telegram.org"}
    return MediaHosts.from_settings(Settings.from_env({**base, **env}))


def test_the_api_base_origin_is_allowed_as_configured_and_nothing_else_on_that_machine() -> None:
    allowed = hosts()
    assert allowed.check("http://127.0.0.1:8123/graph-files/1").port == 8123
    for refused in (
        "http://127.0.0.1:8124/steal",  # another port of the stand-in's host
        "http://localhost:8123/x",  # the same machine by another name
        "https://127.0.0.1/x",
        "https://169.254.169.254/latest/meta-data/",
        "http://lookaside.fbsbx.com/x",  # not HTTPS
        "https://lookaside.fbsbx.com:8443/x",  # not the standard port
        "https://user:pw@lookaside.fbsbx.com/x",
        "https://evil.example/x",
        "https://fbsbx.com.evil.example/x",
        "file:///etc/passwd",
        "gopher://127.0.0.1:6379/_FLUSHALL",
    ):
        with pytest.raises(NotAllowed):
            allowed.check(refused)
    assert allowed.check("https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1&ext=2").host == (
        "lookaside.fbsbx.com"
    )
    assert allowed.check("https://api.telegram.org/file/bot1:x/voice/file_1.oga").host == "api.telegram.org"


def test_the_token_goes_only_to_the_graph_api_base_and_metas_lookaside() -> None:
    allowed = hosts(MEDIA_ALLOWED_HOSTS=".fbsbx.com,cdn.example.com")
    assert allowed.gets_token(allowed.check("http://127.0.0.1:8123/graph-files/1"))
    assert allowed.gets_token(allowed.check("https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1"))
    assert not allowed.gets_token(allowed.check("https://cdn.example.com/file"))
    assert not allowed.gets_token(allowed.check("https://api.telegram.org/file/bot1:x/a.pdf"))


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("voice/file_12.oga", True),
        ("documents/file_3.pdf", True),
        ("../../bot123:abc/getMe", False),
        ("voice/../../secrets", False),
        ("/etc/passwd", False),
        ("https://evil.example/x", False),
        ("voice/file.oga?x=1", False),
        ("voice/%2e%2e/x", False),
        (".hidden", False),
        ("voice\\..\\x", False),
    ],
)
def test_a_telegram_file_path_is_a_plain_relative_path(path: str, ok: bool) -> None:
    assert bool(TELEGRAM_PATH_RE.match(path)) is ok


def test_public_addresses() -> None:
    public = ["8.8.8.8", "2606:4700:4700::1111", "157.240.1.1"]
    private = ["127.0.0.1", "10.1.2.3", "192.168.0.1", "172.16.0.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "::1"]
    assert all(is_public(address) for address in public)
    assert not any(is_public(address) for address in [*private, "fe80::1", "fd00::1", "::ffff:127.0.0.1", "224.0.0.1"])


async def test_a_name_resolving_to_a_private_address_is_refused_unless_it_is_an_api_base() -> None:
    guarded = GuardedResolver(frozenset({"trusted.localhost"}))
    try:
        with pytest.raises(ForbiddenAddress):
            await guarded.resolve("localhost", 443)
    finally:
        await guarded.close()
    trusted = GuardedResolver(frozenset({"localhost"}))
    try:
        assert {result["host"] for result in await trusted.resolve("localhost", 443)} <= {"127.0.0.1", "::1"}
    finally:
        await trusted.close()


# -- the real worker --------------------------------------------------------------------------


class Target:
    """A server on 127.0.0.1 that must never be asked anything (the SSRF target)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[str] = []

    async def _any(self, request: web.Request) -> web.Response:
        self.requests.append(f"{request.method} {request.path_qs} {dict(request.headers)}")
        return web.Response(body=tiny_pdf("secret of the internal service"), content_type=PDF)


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    server = Target()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server._any)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", server.port).start()
    try:
        yield server
    finally:
        await runner.cleanup()


async def llm_worker(stack: Stack, api: FakeChannelApi, llm: FakeLlm) -> int:
    """Gateway and an LLM worker with both channels; the worker's pid."""
    channels = {**WHATSAPP_ENV, **TELEGRAM_ENV, **api.env()}
    await stack.start("gateway", **channels)
    worker = await stack.start(
        "worker",
        **channels,
        REPLY_ENGINE="openai",
        OPENAI_BASE_URL=llm.url,
        OPENAI_API_KEY="sk-t",
        OPENAI_MODEL="v",
        KB_EMBEDDINGS="off",  # the budget measured is the media's, not the ranking model's
    )
    await wait_ready(stack)
    assert worker.process is not None
    return worker.process.pid


def peak_rss(pid: int) -> int:
    """The process's resident-memory high-water mark, as the kernel keeps it."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


async def replies_to(api: FakeChannelApi, recipients: list[str | int]) -> list[Received]:
    async def arrived() -> list[Received] | None:
        got = [api.delivered_to(recipient) for recipient in recipients]
        return [replies[0] for replies in got] if all(got) else None

    return await eventually(arrived, timeout=120, what=f"replies to {recipients}")


def wa_document(wamid: str, sender: str, media_id: str) -> dict[str, object]:
    return whatsapp_message(wamid, sender, "document", {"id": media_id, "mime_type": PDF, "filename": "catalogo.pdf"})


async def test_four_pdf_bombs_at_once_get_too_large_and_the_worker_stays_within_budget(
    stack: Stack, http: aiohttp.ClientSession, api: FakeChannelApi, llm: FakeLlm
) -> None:
    pid = await llm_worker(stack, api, llm)
    at_start = peak_rss(pid)
    bomb = pdf_bomb()
    assert len(bomb) < 100_000  # some tens of kilobytes that inflate to 60 MiB
    senders = [f"55119000077{index:02d}" for index in range(4)]
    for index in range(len(senders)):
        api.add_media(f"bomb-{index}", bomb, PDF)
    started = time.monotonic()
    await asyncio.gather(
        *(
            post_whatsapp(http, stack.gateway, wa_document(f"wamid.bomb-{index}", sender, f"bomb-{index}"))
            for index, sender in enumerate(senders)
        )
    )
    replies = await replies_to(api, list(senders))
    elapsed = time.monotonic() - started
    assert [reply.text for reply in replies] == [polite["too_large"]] * 4
    assert not llm.requests  # the model is never asked about a bomb
    peak = peak_rss(pid)
    print(f"worker peak RSS: {at_start / 2**20:.1f} MiB ready, {peak / 2**20:.1f} MiB with four PDF bombs at once")
    print(f"the four answered in {elapsed:.1f}s")
    assert peak < WORKER_BUDGET_BYTES

    # And the worker still reads an honest PDF afterwards.
    api.add_media("honest", tiny_pdf("Pedido 123: total R$ 50,00"), PDF)
    await post_whatsapp(http, stack.gateway, wa_document("wamid.honest", "5511900007799", "honest"))
    assert (await replies_to(api, ["5511900007799"]))[0].text == LLM_TEXT
    assert "Pedido 123" in llm.requests[0]["body"]["messages"][-1]["content"]


async def test_media_urls_off_the_platform_are_never_fetched_and_the_target_stays_untouched(
    stack: Stack, http: aiohttp.ClientSession, api: FakeChannelApi, llm: FakeLlm, target: Target
) -> None:
    await llm_worker(stack, api, llm)
    document = tiny_pdf("ok")
    hostile = {
        "ssrf-port": f"http://127.0.0.1:{target.port}/internal/admin",  # another port on the API's host
        "ssrf-name": f"http://localhost:{target.port}/internal/admin",
        "ssrf-https": f"https://127.0.0.1:{target.port}/internal/admin",
        "metadata": "http://169.254.169.254/latest/meta-data/iam/",
        "elsewhere": "https://evil.example/steal",
    }
    senders: list[str | int] = []
    for index, (media_id, url) in enumerate(hostile.items()):
        api.add_media(media_id, document, PDF, url=url)
        sender = f"55119000088{index:02d}"
        senders.append(sender)
        await post_whatsapp(http, stack.gateway, wa_document(f"wamid.{media_id}", sender, media_id))
    # Telegram: a file_path climbing out of /file/bot<token>/ towards other paths of the API host.
    chat = 700_200_001
    api.add_media("tg-climb", document, PDF, file_path=f"../../bot{TELEGRAM_ENV['TELEGRAM_BOT_TOKEN']}/getMe")
    pdf = {"file_id": "tg-climb", "file_unique_id": "c1", "file_name": "a.pdf", "mime_type": PDF}
    await post_telegram(http, stack.gateway, telegram_media(910_000_900, chat, "document", pdf))
    senders.append(chat)

    replies = await replies_to(api, senders)
    assert [reply.text for reply in replies] == [polite["unavailable"]] * len(senders)
    assert target.requests == []
    assert not llm.requests
    assert all(media.fetches == 0 for media in api.media.values())
    # The lookups were made (on the API base, with the token); no download followed them.
    assert not [path for path in api.media_requests if "/file/" in path or "/graph-files/" in path]
