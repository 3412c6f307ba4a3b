"""The README stays true to the code (issue 24): a newcomer follows it word for word, so every
variable it names is one something reads, every `make` target it names exists, every setting it
shows with a value (`NAME=value`, alone or as a `.env` block) is accepted by the settings, and every
command block sets the shell variables it uses. No services: this reads files and parses settings."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

import opentelemetry.sdk.environment_variables as otel_variables
import pytest

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
