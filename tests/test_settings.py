"""SPEC 2: every setting is parsed and checked once, at start; a missing or malformed one stops the
service with one clear line naming it. That line is printed past the logs' masking, so it must not
carry what the setting keeps secret (a password in a URL, a token)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from shared.settings import ConfigError, Settings
from tests.support import ROOT, free_port


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AMQP_URL", "amqp://guest:guest@127.0.0.1:99999/"),
        ("AMQP_URL", "amqp://guest:guest@rmq-0:5672/,amqp://guest:guest@rmq-1:port/"),
        ("REDIS_URL", "redis://127.0.0.1:notaport/0"),
        ("REDIS_URL", "redis://127.0.0.1:6379/zero"),
        ("REDIS_URL", "redis://127.0.0.1:6379/0?socket_timeout=soon"),
        ("OPENAI_BASE_URL", "http://llm:70000/v1"),
    ],
)
def test_a_url_with_a_malformed_port_or_database_is_refused_naming_it(name: str, value: str) -> None:
    """Such a URL used to pass, then crash the start with a traceback (a port) or quietly use
    database 0 (a database that is no number)."""
    with pytest.raises(ConfigError, match=rf"^{name}="):
        Settings.from_env({name: value})


def test_well_formed_urls_still_pass() -> None:
    settings = Settings.from_env(
        {
            "AMQP_URL": "amqps://u:p@rmq-0:5671/vhost,amqps://u:p@rmq-1/vhost",
            "REDIS_URL": "rediss://:p@redis:6380/2?socket_timeout=5",
        }
    )
    assert settings.amqp_urls == ("amqps://u:p@rmq-0:5671/vhost", "amqps://u:p@rmq-1/vhost")
    assert settings.redis_url == "rediss://:p@redis:6380/2?socket_timeout=5"
    for redis_url in (
        "redis://localhost",
        "redis://localhost/",
        "redis://localhost:6379/15",
        "unix:///run/r.sock?db=1",
    ):
        assert Settings.from_env({"REDIS_URL": redis_url}).redis_url == redis_url


@pytest.mark.parametrize(
    ("name", "value", "secret"),
    [
        ("AMQP_URL", "amqp://atendimento:s3cr3t-pw@rmq-0:5672/,http://rmq-1/", "s3cr3t-pw"),
        ("REDIS_URL", "redis://:s3cr3t-pw@redis:notaport/0", "s3cr3t-pw"),
        ("CONVERSATION_TOKEN_SECRET", "0123456789abcdef0123,tooshort", "tooshort"),
        ("ALERT_WEBHOOK_URL", "hooks.slack.example/services/T0/B0/s3cr3tpath", "s3cr3tpath"),
    ],
)
def test_the_error_line_names_the_setting_without_its_secret(name: str, value: str, secret: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{name}=") as raised:
        Settings.from_env({name: value})
    assert secret not in str(raised.value)


@pytest.mark.integration  # starts the service's process
def test_a_malformed_amqp_port_stops_the_gateway_with_one_line_and_no_password() -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("ATENDIMENTO_", "OTEL_"))}
    env.update(
        {
            "AMQP_URL": "amqp://guest:s3cr3t-pw@127.0.0.1:99999/",
            "GATEWAY_PORT": str(free_port()),
            "OTEL_SDK_DISABLED": "true",
        }
    )
    result = subprocess.run(
        [sys.executable, "-m", "services.gateway"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("atendimento-gateway: configuration error: AMQP_URL=")
    assert "s3cr3t-pw" not in line
