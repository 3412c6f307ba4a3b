"""The README stays true to the code (issue 24): a newcomer follows it word for word, so every
variable it names is one something reads, every `make` target it names exists, every setting it
shows with a value (`NAME=value`, alone or as a `.env` block) is accepted by the settings, and every
command block sets the shell variables it uses. No services: this reads files and parses settings."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping

import opentelemetry.sdk.environment_variables as otel_variables
import pytest

from shared import startup
from shared.settings import Settings
from tests.support import ROOT

README = (ROOT / "README.md").read_text()
NAME = r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+"
# A value the reader fills in, or one that takes the shell's: not something to parse.
PLACEHOLDER = re.compile(r"[<…$]")
# The files that read or set the variables the settings do not: the Makefile's `$(BENCH_ARGS)`, the
# scripts' `${ENV_FILE:-.env}`, compose's `${HTTP_PORT:-80}`, the Dockerfile's `ARG PYTHON_IMAGE`.
OTHER_READERS = ("Makefile", "Dockerfile", "docker-compose.yml", "scripts/*.sh", "scripts/*/*.sh")


class _Recording(Mapping[str, str]):
    """An empty environment that notes every name looked up in it."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.names.add(name)
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def settings_names() -> set[str]:
    environment = _Recording()
    Settings.from_env(environment)
    return environment.names


def read_elsewhere(name: str) -> bool:
    use = re.compile(rf"(\$\{{|\$\(|\$|\bARG\s+){name}\b")
    files = (path for pattern in OTHER_READERS for path in ROOT.glob(pattern))
    return any(use.search(path.read_text()) for path in files)


def dotenv_value(raw: str) -> str:
    """A value as scripts/run-all.sh and docker compose read it from .env: quotes removed, or an
    unquoted value ending before ` #`."""
    raw = raw.strip()
    quoted = re.match(r"""^(["'])(.*)\1(\s+#.*)?$""", raw)
    return quoted.group(2) if quoted else raw.split(" #")[0].rstrip()


def shown_settings() -> list[dict[str, str]]:
    """What the README shows with values: each fenced block of `NAME=value` lines (and comments)
    as one environment, each `NAME=value` in backticks alone; placeholders left out."""
    groups: list[dict[str, str]] = []
    for block in re.findall(r"^ *```\w*\n(.*?)^ *```", README, re.M | re.S):
        lines = [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]
        pairs = [re.fullmatch(rf"({NAME})=(.*)", line) for line in lines]
        if lines and all(pairs):
            groups.append({m[1]: dotenv_value(m[2]) for m in pairs if m and not PLACEHOLDER.search(m[2])})
    groups += [{name: dotenv_value(value)} for name, value in re.findall(rf"`({NAME})=([^`]*)`", README)]
    return [group for group in groups if group]


def test_every_variable_the_readme_names_is_read() -> None:
    named = set(re.findall(rf"(?<![\w./-])({NAME})(?![\w-])", README))
    sdk = {value for key, value in vars(otel_variables).items() if key.startswith("OTEL_")}
    unread = sorted(name for name in named - settings_names() - sdk if not read_elsewhere(name))
    assert not unread, f"the README names variables nothing reads (a typo, or a setting gone?): {unread}"


def test_the_guides_name_what_the_settings_read() -> None:
    """The first hour's variables go in `.env` for the services: shared/settings.py must read them."""
    guides = README.split("## The first hour", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(rf"(?<![\w./-])({NAME})(?![\w-])", guides))
    assert named, "the first hour names no variables: was the section renamed?"
    unread = sorted(named - settings_names())
    assert not unread, f"the first hour names variables shared/settings.py does not read: {unread}"


def test_every_shell_variable_a_command_uses_is_set_in_its_block() -> None:
    """A newcomer pastes one block into a fresh shell, which has not read `.env`: a `$NAME` the
    block does not set first would be empty (Telegram's setWebhook would go to `/bot/setWebhook`)."""
    blocks = re.findall(r"^ *```(?:sh|bash|shell)\n(.*?)^ *```", README, re.M | re.S)
    assert blocks
    for block in blocks:
        used = set(re.findall(r"\$\{?([A-Za-z_]\w*)", block))
        assigned = set(re.findall(r"(?:^|\s)([A-Za-z_]\w*)=", block, re.M))
        assert used <= assigned, f"{sorted(used - assigned)} not set in the block:\n{block}"


def test_every_make_target_the_readme_names_exists() -> None:
    targets = set(re.findall(r"^([a-z][\w-]*)\s*:(?!=)", (ROOT / "Makefile").read_text(), re.M))
    named = set(re.findall(r"\bmake ([a-z][\w-]*)", README))
    assert named, "the README names no make target: was the quick start rewritten?"
    assert not sorted(named - targets), f"make targets the Makefile lacks: {sorted(named - targets)}"


@pytest.mark.parametrize("environment", shown_settings(), ids=lambda group: ",".join(group))
def test_every_setting_the_readme_shows_is_accepted(environment: dict[str, str]) -> None:
    read = settings_names()
    Settings.from_env({name: value for name, value in environment.items() if name in read})


# The first hour -----------------------------------------------------------------------------------
# `make first-hour` (scripts/first_hour.py) does the guides for real, in minutes; these check in
# milliseconds that what they promise to see is what the settings and the code make of their lines.
FIRST_HOUR = README.split("\n## The first hour\n", 1)[1].split("\n## ", 1)[0]
# The log lines the first hour quotes (`…` where they vary), with the literal text of the code that
# prints each: a message reworded in the code fails here until the README quotes the new one.
QUOTED_LOG_LINES = {
    "POST /webhooks/whatsapp 401": [("services/gateway/access_log.py", 'f"{request.method} {route} {status}"')],
    "whatsapp reply … not delivered, dead-lettered: WhatsApp answered 401 (code 190)": [
        ("services/gateway/delivery/sender.py", '"%s reply %s to %s not delivered, dead-lettered: %s"'),
        ("services/gateway/delivery/clients.py", 'f"WhatsApp answered {status} (code {code}): '),
    ],
    "LLM reply failed, the knowledge base answers: HTTP 404: …": [
        ("services/worker/engines/openai.py", '"LLM reply failed, the knowledge base answers: %s"'),
        ("services/worker/engines/openai.py", 'f"HTTP {status}: '),
    ],
}


def guide(number: int) -> str:
    return FIRST_HOUR.split(f"**{number}. ", 1)[1].split(f"**{number + 1}. ", 1)[0]


def guide_block(text: str, first_line: str) -> dict[str, str]:
    """The guide's `.env` block starting with `first_line`, as `make run` reads it (placeholders filled in)."""
    [block] = [b for b in re.findall(r"^```\w*\n(.*?)^```", text, re.M | re.S) if b.startswith(first_line)]
    pairs = [re.fullmatch(rf"({NAME})=(.*)", line) for line in block.splitlines()]
    return {m[1]: "sk-filled-in" if PLACEHOLDER.search(m[2]) else dotenv_value(m[2]) for m in pairs if m}


def set_as_told(text: str, prefix: str) -> dict[str, str]:
    """Every variable starting with `prefix` that the guide has you set, given a value."""
    return {name: "first_hour-0123456789" for name in re.findall(rf"`({prefix}[A-Z_]+)`", text)}


def first_line(caplog: pytest.LogCaptureFixture, environment: dict[str, str]) -> str:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=startup.__name__):
        startup.log_start("gateway", Settings.from_env(environment), 8080, 1024)
    return caplog.records[0].getMessage()


def test_the_first_lines_say_what_the_guides_promise(caplog: pytest.LogCaptureFixture) -> None:
    """Each guide's lines, read by the settings, give the first log line the README quotes for them."""
    whatsapp, telegram = set_as_told(guide(2), "WHATSAPP_"), set_as_told(guide(3), "TELEGRAM_")
    assert {"WHATSAPP_APP_SECRET", "WHATSAPP_ACCESS_TOKEN"} <= set(whatsapp), "guide 2 no longer sets them"
    promised = {
        "channels web, whatsapp": whatsapp,
        "channels web, telegram": telegram,
        "channels web, whatsapp, telegram": whatsapp | telegram,
        "engine openai (llama3.1:8b)": guide_block(guide(4), "REPLY_ENGINE="),
    }
    for phrase, environment in promised.items():
        assert f"`{phrase}`" in FIRST_HOUR, f"the first hour no longer quotes {phrase!r}"
        assert phrase in first_line(caplog, environment)
    hosted = guide_block(guide(5), "REPLY_ENGINE=")
    assert "engine openai (gpt-4o-mini)" in first_line(caplog, hosted)
    [quoted] = re.findall(r"`(gateway listening on port 8080: [^`]*)`", README)
    pattern = ".*".join(re.escape(part) for part in quoted.split("…"))
    assert re.fullmatch(pattern, first_line(caplog, {})), "the quick start's first line"


@pytest.mark.parametrize("quote", QUOTED_LOG_LINES)
def test_the_log_lines_the_first_hour_quotes_are_printed(quote: str) -> None:
    assert f"`{quote}`" in re.sub(r"\s+", " ", FIRST_HOUR), "quoted no more: update QUOTED_LOG_LINES"
    for path, literal in QUOTED_LOG_LINES[quote]:
        assert literal in (ROOT / path).read_text(), f"{path} prints {quote!r} no more: update the README"
