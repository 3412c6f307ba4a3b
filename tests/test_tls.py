"""TLS in transit (issue 23 point 5): `rediss://` and `amqps://` with the CA and client certificates
the settings name, against a redis-server with only a `tls-port` and a rabbitmq-server with a TLS
listener, both requiring client certificates of a test CA the fixture makes with openssl; a CA
that did not sign the server's certificate stops the service at start with one line naming it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from tests.support import PRAZO, Service, Stack, eventually, free_port, get_json, post_message
from tests.support.ha import RedisNode
from tests.support.servers import PrivateRabbit, wait_closed
from tests.support.tls import Pki, make_test_pki, redis_serving, tls_rabbit, tls_redis

pytestmark = pytest.mark.integration


@dataclass
class TlsServers:
    pki: Pki
    redis: RedisNode
    rabbit: PrivateRabbit
    amqps_port: int

    def env(self, *, redis_ca: Path | None = None, amqp_ca: Path | None = None) -> dict[str, str]:
        pki = self.pki
        return {
            "REDIS_URL": f"rediss://127.0.0.1:{self.redis.port}/0",
            "REDIS_CA_FILE": str(redis_ca or pki.ca),
            "REDIS_CERT_FILE": str(pki.path("client.crt")),
            "REDIS_KEY_FILE": str(pki.path("client.key")),
            "AMQP_URL": f"amqps://guest:guest@127.0.0.1:{self.amqps_port}/",
            "AMQP_CA_FILE": str(amqp_ca or pki.ca),
            "AMQP_CERT_FILE": str(pki.path("client.crt")),
            "AMQP_KEY_FILE": str(pki.path("client.key")),
            "KB_EMBEDDINGS": "off",
        }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tls_servers(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TlsServers]:
    """One PKI and pair of servers for the module: each test uses a namespace of its own on them
    (the stack's), and the refused starts never reach them."""
    tmp_path = tmp_path_factory.mktemp("tls")
    pki = await asyncio.to_thread(make_test_pki, tmp_path / "pki")
    redis = tls_redis(tmp_path / "redis", pki)
    rabbit, amqps_port = tls_rabbit(tmp_path / "rabbitmq", pki)
    try:
        redis.start()
        await redis_serving(redis)
        await rabbit.start(timeout=120)
        yield TlsServers(pki, redis, rabbit, amqps_port)
    finally:
        redis.kill()
        rabbit.stop()


async def test_services_answer_over_tls_with_client_certificates(
    stack: Stack, tls_servers: TlsServers, http: aiohttp.ClientSession
) -> None:
    stack.extra_env.update(tls_servers.env())
    gateway = await stack.start("gateway")
    await stack.start("worker")
    monitor = await stack.start("monitor")
    status, answer = await post_message(http, gateway, {"user_id": "tls", "text": PRAZO}, wait=20)
    assert status == 200, answer
    assert answer["reply"]["sources"] == ["prazo-entrega"]

    async def both_up() -> bool:
        _, health = await get_json(http, monitor.url + "/monitoring/health")
        return bool(health["checks"]["redis"]["status"] == health["checks"]["rabbitmq"]["status"] == "up")

    await eventually(both_up, what="the monitor reaching Redis and RabbitMQ over TLS")


@pytest.mark.parametrize("wrong", ["REDIS_CA_FILE", "AMQP_CA_FILE"])
async def test_a_ca_that_did_not_sign_the_server_stops_the_start_naming_the_setting(
    stack: Stack, tls_servers: TlsServers, wrong: str
) -> None:
    wrong_ca = tls_servers.pki.wrong_ca
    env = tls_servers.env(**{wrong.split("_")[0].lower() + "_ca": wrong_ca})
    service = Service("monitor", free_port(), stack.env(**env), stack.tmp / f"wrong-{wrong}.log")
    service.start()
    assert service.process is not None
    assert await wait_closed(service.process, 60) == 2, service.logs()
    errors = [line for line in service.logs().splitlines() if "configuration error" in line]
    assert len(errors) == 1, service.logs()
    assert f"{wrong}={wrong_ca}" in errors[0] and "does not verify" in errors[0], errors[0]
    assert "Traceback" not in service.logs()
