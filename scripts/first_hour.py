"""The README's "first hour", tried from a fresh clone (`make first-hour`).

Clones the committed HEAD into a temporary folder and does there what each guide says: `cp
.env.example .env`, the guide's lines into `.env` (its env blocks taken from the README itself, so a
README change that breaks a guide breaks this), `make run` (which creates the clone's own .venv),
the guide's steps, then Ctrl-C and `make run` again for the next guide. Only what cannot be reached
from here is a local stand-in (tests/support): the Graph API and the Bot API (WHATSAPP_API_BASE,
TELEGRAM_API_BASE), Ollama on its port, a hosted OpenAI-compatible API (OPENAI_BASE_URL). There is
no public HTTPS address (no tunnel): the stand-ins call the gateway at http://localhost directly.
The run uses a namespace of its own on the local Redis and RabbitMQ, purged at the end.
One line per checked step; the exit status is 1 when any step failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tests.support import PRAZO, free_port, purge_namespace
from tests.support.channel_fakes import (
    GRAPH_VERSION,
    TELEGRAM_ENV,
    WHATSAPP_ENV,
    Answer,
    FakeChannelApi,
    kb_answer,
    sign,
    telegram_text,
    whatsapp_text,
)
from tests.support.fake_llm import FakeLlm

ROOT = Path(__file__).resolve().parents[1]
SERVICES = {"gateway": 8080, "worker": 8081, "monitor": 8082}
OLLAMA_PORT = 11434
FIRST_START_S, RESTART_S, STOP_S = 900.0, 180.0, 90.0
ANSWER = kb_answer("prazo-entrega")
# What Graph answers a send with an expired token (the guide's "the token expired").
EXPIRED = {"error": {"message": "Error validating access token: Session has expired", "code": 190}}


class Failed(Exception):
    """A step that did not go as the README says; the guide stops there."""


class Walk:
    """The clone, its `.env`, its `make run`, the stand-ins, and the report."""

    def __init__(self, clone: Path) -> None:
        self.clone = clone
        self.env_path = clone / ".env"
        readme = (clone / "README.md").read_text()
        self.quick = _section(readme, "## Quick start")
        self.hour = _section(readme, "## The first hour")
        self.log = clone.parent / "make-run.log"
        self.ports = {name: port if _free(port) else free_port() for name, port in SERVICES.items()}
        self.process: asyncio.subprocess.Process | None = None
        self.offset = 0
        self.passed = self.failures = 0
        self.http = aiohttp.ClientSession(headers={"Accept-Language": "en"}, cookie_jar=aiohttp.CookieJar(unsafe=True))

    # Report -----------------------------------------------------------------------------------
    def check(self, what: str, passed: bool, seen: object = "") -> None:
        if not passed:
            raise Failed(f"{what}: saw {seen!s:.600}")
        self.passed += 1
        print(f"ok      {what}", flush=True)

    # The README -------------------------------------------------------------------------------
    def guide(self, number: int) -> str:
        return self.hour.split(f"**{number}. ", 1)[1].split(f"**{number + 1}. ", 1)[0]

    def command(self, text: str, start: str) -> str:
        """The first command in `text`'s code blocks that starts with `start`, pointed at this run's
        gateway port."""
        found = [line for block in _blocks(text) for line in _commands(block) if line.startswith(start)]
        if not found:
            raise Failed(f"the README has no command starting {start!r}")
        return found[0].replace("localhost:8080", f"localhost:{self.ports['gateway']}")

    def block(self, text: str, starts: str) -> str:
        """The code block of `text` whose first line starts with `starts`, verbatim."""
        found = [block for block in _blocks(text) if block.startswith(starts)]
        if not found:
            raise Failed(f"the README has no block starting {starts!r}")
        return found[0]

    # .env -------------------------------------------------------------------------------------
    def set_line(self, name: str, value: str) -> None:
        """Change the variable's line (.env.example lists every variable; the last line wins)."""
        text = self.env_path.read_text()
        last = list(re.finditer(rf"^{name}=.*$", text, re.M))[-1]
        self.env_path.write_text(f"{text[: last.start()]}{name}={value}{text[last.end() :]}")

    def append(self, lines: str) -> None:
        with self.env_path.open("a") as env:
            env.write("\n" + lines.rstrip("\n") + "\n")

    # make run ---------------------------------------------------------------------------------
    async def start(self, first: bool = False) -> float:
        """`make run`, until the three services answer; the seconds it took."""
        started = time.monotonic()
        self.offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                "make",
                "run",
                cwd=self.clone,
                env=_fresh_shell(self.clone),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, as a terminal's foreground job
            )
        deadline = started + (FIRST_START_S if first else RESTART_S)
        for port in self.ports.values():
            while not await self._answers(port):
                if self.process.returncode is not None:
                    raise Failed(f"make run exited ({self.process.returncode}):\n{self.tail()}")
                if time.monotonic() > deadline:
                    raise Failed(f"nothing answered on port {port} in time:\n{self.tail()}")
                await asyncio.sleep(0.25)
        return time.monotonic() - started

    async def _answers(self, port: int) -> bool:
        try:
            async with self.http.get(f"http://localhost:{port}/monitoring/live") as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    async def stop(self) -> None:
        """Ctrl-C: SIGINT to the whole foreground group, then wait until every process is gone."""
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        deadline = time.monotonic() + STOP_S
        while process.returncode is None or _group_alive(process.pid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                raise Failed(f"Ctrl-C did not stop make run within {STOP_S:.0f}s:\n{self.tail()}")
            await asyncio.sleep(0.1)

    async def restart(self) -> None:
        await self.stop()
        print(f"        (Ctrl-C, make run: the services answered in {await self.start():.1f}s)", flush=True)

    def lines(self, service: str) -> list[str]:
        """The messages `service` logged since the last start."""
        with self.log.open("rb") as log:
            log.seek(self.offset)
            raw = log.read().decode(errors="replace")
        prefix = f"[{service}] "
        return [_message(line[len(prefix) :]) for line in raw.splitlines() if line.startswith(prefix)]

    async def logged(self, service: str, quote: str, timeout: float = 20.0) -> str | None:
        """The first line `service` logged since the start matching the README's quote (its `…`
        standing for anything), waited for."""
        pattern = re.compile(".*".join(re.escape(part.strip()) for part in quote.split("…")))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((line for line in self.lines(service) if pattern.search(line)), None)
            if found is not None:
                return found
            await asyncio.sleep(0.1)
        return None

    async def first_lines_say(self, phrase: str) -> None:
        firsts = []
        for service in SERVICES:
            await self.logged(service, "listening on port")
            firsts.append((self.lines(service) or ["(nothing)"])[0])
        self.check(f"the first log lines say `{phrase}`", all(phrase in line for line in firsts), firsts)

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""

    # Users' actions ---------------------------------------------------------------------------
    async def shell(self, command: str) -> str:
        """A command as typed in a fresh shell (bash), its output."""
        process = await asyncio.create_subprocess_exec(
            "bash", "-c", command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_fresh_shell(self.clone)
        )
        out, _ = await asyncio.wait_for(process.communicate(), 60)
        return out.decode()

    async def ask(self) -> dict[str, Any]:
        """The quick start's curl, its JSON answer."""
        out = await self.shell(self.command(self.quick, "curl -s -X POST"))
        try:
            return dict(json.loads(out))
        except ValueError:
            raise Failed(f"the quick start's curl did not answer JSON: {out!r}") from None

    async def falls_back(self, what: str, guide: str, quoted: str) -> None:
        """The quick start's curl answered by the knowledge base, and the worker's log line that the
        guide quotes (starting with `quoted`) saying why the LLM was not."""
        reply = await self.ask()
        line = await self.logged("worker", _quoted(guide, quoted))
        passed = reply["reply"]["engine"] == "kb-fallback" and line is not None
        self.check(what, passed, (reply, self.lines("worker")[-3:]))

    async def request(self, method: str, url: str, **kwargs: Any) -> tuple[int, str, str]:
        """(status, final path, body) of a request, redirects followed as a browser does."""
        async with self.http.request(method, url, **kwargs) as response:
            return response.status, response.url.path, await response.text()

    def url(self, service: str, path: str) -> str:
        return f"http://localhost:{self.ports[service]}{path}"


# Guides --------------------------------------------------------------------------------------
async def quick_start(walk: Walk) -> None:
    print(
        f"        (make run in the fresh clone, .venv created: the services answered in {await walk.start(True):.1f}s)"
    )
    await walk.first_lines_say("engine kb")
    await walk.first_lines_say("channels web")
    reply = await walk.ask()
    walk.check(
        "the quick start's curl is answered by the knowledge base", reply.get("reply", {}).get("engine") == "kb", reply
    )
    status, _, body = await walk.request("GET", walk.url("monitor", "/admin"))
    walk.check(
        "without ADMIN_TOKEN /admin refuses and says so", status == 503 and "ADMIN_TOKEN is not set" in body, status
    )
    await walk.stop()  # Ctrl-C
    stopped = [service for service in SERVICES if any("closing the listener" in line for line in walk.lines(service))]
    walk.check("Ctrl-C stops all three, and what they log while stopping is shown", stopped == list(SERVICES), stopped)


async def admin(walk: Walk) -> None:
    token = secrets.token_hex(24)  # openssl rand -hex 24
    walk.set_line("ADMIN_TOKEN", token)
    await walk.restart()
    status, path, body = await walk.request("GET", walk.url("monitor", "/admin"))
    walk.check(
        "/admin sends to the sign-in page, which asks for Your name",
        (path, "Your name" in body) == ("/admin/login", True),
        (status, path),
    )
    form = {"operator": "Ana (first hour)", "token": token}
    browser = {"Sec-Fetch-Site": "same-origin"}
    status, path, body = await walk.request("POST", walk.url("monitor", "/admin/login"), data=form, headers=browser)
    walk.check("name and token sign in: the dashboard opens", status == 200 and path == "/admin", (status, path))
    status, _, body = await walk.request("GET", walk.url("monitor", "/admin/inbox"))
    walk.check(
        "the Inbox (/admin/inbox) lists who waits for a person",
        status == 200 and "Waiting for a person" in body,
        status,
    )
    async with aiohttp.ClientSession(headers=browser) as stranger:  # another browser: no session
        for _ in range(5):
            async with stranger.post(walk.url("monitor", "/admin/login"), data={**form, "token": "wrong"}) as response:
                wrong = response.status
        async with stranger.post(walk.url("monitor", "/admin/login"), data=form, allow_redirects=False) as response:
            locked = response.status
    walk.check(
        "five wrong tokens lock the address out (the right one then refused)",
        (wrong, locked) == (401, 429),
        (wrong, locked),
    )


async def whatsapp(walk: Walk, api: FakeChannelApi) -> None:
    guide = walk.guide(2)
    curl = walk.command(guide, "curl").replace("https://<that address>", walk.url("gateway", ""))
    verify = secrets.token_hex(16)  # openssl rand -hex 16
    out = await walk.shell(curl.replace("<your verify token>", verify) + " -s -w ' %{http_code}'")
    walk.check("before WhatsApp is set up, the verify GET answers 404", out.endswith(" 404"), out)
    walk.set_line("WHATSAPP_VERIFY_TOKEN", verify)
    walk.set_line("WHATSAPP_APP_SECRET", WHATSAPP_ENV["WHATSAPP_APP_SECRET"])
    walk.set_line("WHATSAPP_ACCESS_TOKEN", WHATSAPP_ENV["WHATSAPP_ACCESS_TOKEN"])
    walk.set_line("WHATSAPP_API_BASE", f"{api.url}/{GRAPH_VERSION}")  # the Graph API stand-in
    await walk.restart()
    await walk.first_lines_say("channels web, whatsapp")
    out = await walk.shell(curl.replace("<your verify token>", verify))
    walk.check("the verify GET with hub.challenge=42 answers 42", out == "42", out)
    out = await walk.shell(curl.replace("<your verify token>", "not-it") + " -s -w ' %{http_code}'")
    walk.check(
        "a wrong verify token: 403 naming hub.verify_token", out.endswith(" 403") and "hub.verify_token" in out, out
    )

    sender, name = "5511987650001", "Maria Clara"

    async def notify(wamid: str, secret: str) -> int:
        payload = whatsapp_text(wamid, sender, PRAZO)
        payload["entry"][0]["changes"][0]["value"]["contacts"][0]["profile"]["name"] = name
        body = orjson.dumps(payload)
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(body, secret)}
        status, _, _ = await walk.request("POST", walk.url("gateway", "/webhooks/whatsapp"), data=body, headers=headers)
        return status

    status = await notify("wamid.firsthour1", WHATSAPP_ENV["WHATSAPP_APP_SECRET"])
    sent = await _until(lambda: _texts(api, sender, 1))
    walk.check(
        "a message signed with the app secret is answered (Graph API stand-in)",
        status == 200 and sent == [ANSWER],
        (status, sent),
    )
    body = await _until(lambda: _page(walk, "/admin/conversations", name))
    walk.check(f"the admin shows the customer by their profile name ({name})", body is not None, "not listed")
    status = await notify("wamid.firsthour2", "not-this-apps-secret")
    line = await walk.logged("gateway", _quoted(guide, "POST /webhooks/whatsapp"))
    walk.check(
        "a wrong app secret: 401 and the POST /webhooks/whatsapp 401 line", status == 401 and line is not None, status
    )

    api.script.append(Answer(401, body=EXPIRED))
    await notify("wamid.firsthour3", WHATSAPP_ENV["WHATSAPP_APP_SECRET"])
    line = await walk.logged("gateway", _quoted(guide, "whatsapp reply"))
    walk.check(
        "a reply refused (401, code 190) is logged as the README quotes it",
        line is not None,
        walk.lines("gateway")[-3:],
    )
    dashboard = await _until(lambda: _page(walk, "/admin", 'data-kind="reply"'))
    letters = re.findall(r'<tr data-message-id="([^"]+)" data-kind="reply">', dashboard or "")
    walk.check("it waits under Dead letters in the admin", len(letters) == 1, letters)
    form = {"csrf": _csrf(dashboard or ""), "message_id": html.unescape(letters[0])}
    await walk.request(
        "POST", walk.url("monitor", "/admin/dead-letters/replay"), data=form, headers={"Sec-Fetch-Site": "same-origin"}
    )
    sent = await _until(lambda: _texts(api, sender, 2))
    walk.check("replayed from the admin, it is delivered", sent == [ANSWER, ANSWER], sent)


async def telegram(walk: Walk, api: FakeChannelApi) -> None:
    guide = walk.guide(3)
    token, secret = TELEGRAM_ENV["TELEGRAM_BOT_TOKEN"], secrets.token_hex(16)
    walk.set_line("TELEGRAM_BOT_TOKEN", token)  # BotFather's (the Bot API stand-in knows it)
    walk.set_line("TELEGRAM_SECRET_TOKEN", secret)
    walk.set_line("TELEGRAM_API_BASE", api.url)  # the Bot API stand-in
    await walk.restart()
    await walk.first_lines_say("channels web, whatsapp, telegram")
    block = walk.block(guide, "export TELEGRAM_BOT_TOKEN").replace("https://api.telegram.org", api.url)
    commands = _commands(block.replace("https://<your host>", walk.url("gateway", "")))
    export, set_webhook, webhook_info = (
        next(c for c in commands if word in c) for word in ("export", "/setWebhook", "/getWebhookInfo")
    )

    async def run(command: str, the_secret: str) -> dict[str, Any]:
        exported = export.replace("'<the token>'", f"'{token}'").replace("'<the secret>'", f"'{the_secret}'")
        out = await walk.shell(f"{exported}\n{command}")
        return dict(json.loads(out))

    said = await run(set_webhook, secret)
    walk.check(
        "setWebhook answers as the README shows",
        said == {"ok": True, "result": True, "description": "Webhook was set"},
        said,
    )
    info = (await run(webhook_info, secret))["result"]
    walk.check(
        "getWebhookInfo: the url, no last_error_message",
        info["url"].endswith("/webhooks/telegram") and "last_error_message" not in info,
        info,
    )
    chat = 777000111
    status = await api.send_update(telegram_text(1, chat, PRAZO))
    sent = await _until(lambda: _texts(api, chat, 1))
    walk.check(
        "an update Telegram posts with the secret is answered (sendMessage)",
        status == 200 and sent == [ANSWER],
        (status, sent),
    )
    await run(set_webhook, "not-the-secret-in-env")
    status = await api.send_update(telegram_text(2, chat, PRAZO))
    info = (await run(webhook_info, secret))["result"]
    error = str(info.get("last_error_message"))
    walk.check(
        "a secret that is not TELEGRAM_SECRET_TOKEN: 401 in last_error_message", status == 401 and "401" in error, info
    )
    await run(set_webhook, secret)
    status = await api.send_update(telegram_text(3, chat, PRAZO))
    walk.check(
        "registered again with the right secret, updates are taken",
        status == 200 and await _until(lambda: _texts(api, chat, 2)) is not None,
        status,
    )


async def local_llm(walk: Walk, ollama: FakeLlm) -> None:
    guide = walk.guide(4)
    block = walk.block(guide, "REPLY_ENGINE=openai")
    model = re.search(r"`ollama pull (\S+)`", guide)
    walk.check(
        "the guide pulls the model its block names", model is not None and f"OPENAI_MODEL={model[1]}\n" in block, block
    )
    assert model is not None
    walk.append(block)  # the README's block, literally
    if ollama.url != f"http://127.0.0.1:{OLLAMA_PORT}/v1":
        walk.append(f"OPENAI_BASE_URL={ollama.url}  # port {OLLAMA_PORT} is taken here: the stand-in listens elsewhere")
    ollama.models = {model[1]}  # ollama pull
    await walk.restart()
    await walk.first_lines_say(f"engine openai ({model[1]})")
    reply = await walk.ask()
    walk.check(
        'the quick start\'s curl: "engine":"openai"',
        reply["reply"]["engine"] == "openai" and len(ollama.requests) == 1,
        reply,
    )
    ollama.models = set()  # a model not pulled
    await walk.falls_back(
        'a model not pulled: "engine":"kb-fallback" and the worker says why', guide, "LLM reply failed"
    )


async def hosted_llm(walk: Walk, hosted: FakeLlm) -> None:
    guide = walk.guide(5)
    ollama_lines = walk.block(walk.guide(4), "REPLY_ENGINE=openai").rstrip("\n")
    walk.env_path.write_text(walk.env_path.read_text().replace(ollama_lines, ""))  # instead of the Ollama lines
    key = f"sk-firsthour-{secrets.token_hex(16)}"
    hosted.api_keys = {key}
    walk.append(walk.block(guide, "REPLY_ENGINE=openai").replace("<your key>", key))
    walk.append(f"OPENAI_BASE_URL={hosted.url}  # the hosted API's stand-in")
    await walk.restart()
    await walk.first_lines_say("engine openai (gpt-4o-mini)")
    reply = await walk.ask()
    walk.check('the quick start\'s curl: "engine":"openai"', reply["reply"]["engine"] == "openai", reply)
    walk.set_line("OPENAI_API_KEY", "sk-not-a-key-of-this-account-0000")
    await walk.restart()
    await walk.falls_back('a wrong key: "engine":"kb-fallback" and HTTP 401 in the worker\'s log', guide, "HTTP 401")


# Helpers -------------------------------------------------------------------------------------
def _blocks(text: str) -> list[str]:
    """The fenced code blocks of `text`, their indentation (a list item's) removed."""
    return [textwrap.dedent(block) for _, block in re.findall(r"^( *)```\w*\n(.*?)^\1```", text, re.M | re.S)]


def _commands(block: str) -> list[str]:
    """A block's commands, continued lines joined, comment lines left out."""
    lines = (line.strip() for line in re.sub(r"\\\n\s*", " ", block).splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _section(readme: str, heading: str) -> str:
    return readme.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]


def _quoted(text: str, start: str) -> str:
    """The README's quote (in backticks) that starts with `start`."""
    found = re.search(rf"`({re.escape(start)}[^`]*)`", text)
    if found is None:
        raise Failed(f"the README quotes no `{start}…`")
    return re.sub(r"\s+", " ", found[1])


def _message(line: str) -> str:
    try:
        return str(json.loads(line)["message"])
    except (ValueError, KeyError, TypeError):
        return line


def _texts(api: FakeChannelApi, recipient: str | int, count: int) -> list[str] | None:
    texts = [received.text for received in api.delivered_to(recipient)]
    return texts if len(texts) >= count else None


async def _page(walk: Walk, path: str, needle: str) -> str | None:
    status, _, body = await walk.request("GET", walk.url("monitor", path))
    return body if status == 200 and needle in body else None


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    return html.unescape(found[1]) if found else ""


async def _until(probe: Callable[[], Any], timeout: float = 20.0) -> Any:
    """`probe()` (awaited when it is a coroutine) once it is not None, or None at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if isinstance(result, Awaitable):
            result = await result
        if result is not None or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.1)


def _free(port: int) -> bool:
    """Nothing listens on `port` (bound as the services bind: the last run's TIME_WAIT is no owner)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _fresh_shell(clone: Path) -> dict[str, str]:
    """This environment without what would override the clone's .env (a variable set in the shell
    wins over it) or leak a parent make into `make run`."""
    names = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", (clone / ".env.example").read_text(), re.M))
    names |= {"ENV_FILE", "MAKEFLAGS", "MAKELEVEL", "MFLAGS", "VIRTUAL_ENV"}
    return {key: value for key, value in os.environ.items() if key not in names and not key.startswith("OTEL_")}


def fresh_clone() -> Path:
    """`git clone` of this repository's committed HEAD into a new temporary folder, and `cp
    .env.example .env` there: nothing of this checkout's .env, .venv or uncommitted changes."""
    folder = Path(tempfile.mkdtemp(prefix="first-hour-"))
    clone = folder / "ia-atendimento-bot"
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    shutil.copy(clone / ".env.example", clone / ".env")
    print(f"first hour: a fresh clone of HEAD {head.stdout.strip()} in {clone}")
    return clone


async def main(clone: Path, began: float, keep: bool) -> int:
    namespace = f"firsthour-{uuid.uuid4().hex[:8]}"
    walk = Walk(clone)
    print(
        f"        namespace {namespace}; no public HTTPS here (no tunnel): the stand-ins call {walk.url('gateway', '')}"
    )
    walk.set_line("ATENDIMENTO_NAMESPACE", namespace)
    for name, port in walk.ports.items():
        if port != SERVICES[name]:
            print(f"        port {SERVICES[name]} is taken here: {name.upper()}_PORT={port}")
            walk.set_line(f"{name.upper()}_PORT", str(port))
    if not _free(OLLAMA_PORT):
        print(f"        port {OLLAMA_PORT} (Ollama's) is taken here: the Ollama stand-in listens elsewhere")
    api = await FakeChannelApi().start()
    ollama = await FakeLlm(models=set()).start(OLLAMA_PORT if _free(OLLAMA_PORT) else None)
    hosted = await FakeLlm().start()
    guides: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("quick start", lambda: quick_start(walk)),
        ("1. sign in to the admin", lambda: admin(walk)),
        ("2. a WhatsApp number (Cloud API)", lambda: whatsapp(walk, api)),
        ("3. a Telegram bot", lambda: telegram(walk, api)),
        ("4. a local LLM (Ollama)", lambda: local_llm(walk, ollama)),
        ("5. a hosted LLM", lambda: hosted_llm(walk, hosted)),
    ]
    try:
        for title, guide in guides:
            print(f"-- {title}", flush=True)
            started = time.monotonic()
            try:
                await guide()
            except Failed as failure:
                walk.failures += 1
                print(f"FAILED  {failure}", flush=True)
            except Exception as error:  # a broken step must not hide the guides after it
                walk.failures += 1
                print(f"FAILED  {title}: {error!r}\n{walk.tail()}", flush=True)
            print(f"        ({title}: {time.monotonic() - started:.1f}s)", flush=True)
    finally:
        await walk.stop()
        await walk.http.close()
        for server in (ollama, hosted):
            await server.stop()
        await api.close()
        shards = re.findall(r"^ATENDIMENTO_SHARDS=(\d+)", walk.env_path.read_text(), re.M)
        await purge_namespace(namespace, int(shards[-1]) if shards else 16)
    took = time.monotonic() - began
    print(f"first hour: {walk.passed} steps ok, {walk.failures} failed, in {took:.0f}s")
    if walk.failures or keep:
        print(f"the clone and its make run log are kept in {clone.parent}")
    else:
        shutil.rmtree(clone.parent)
    return 1 if walk.failures else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--keep", action="store_true", help="keep the clone and its logs")
    signal.signal(signal.SIGINT, signal.default_int_handler)  # so that `make run` can be Ctrl-C'd
    keep = parser.parse_args().keep
    began = time.monotonic()
    sys.exit(asyncio.run(main(fresh_clone(), began, keep)))
