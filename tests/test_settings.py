"""SPEC 2: every setting is parsed and checked once, at start; a missing or malformed one stops the
service with one clear line naming it."""

from __future__ import annotations

import pytest

from shared.settings import ConfigError, Settings


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
