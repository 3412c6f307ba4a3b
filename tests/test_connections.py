"""How services connect (shared/connections.py, broker.py, amqp_nodes.py, redis_client.py): the
settings of a cluster, Sentinel and TLS, a dead node skipped, quorum queues made before their
replication factor was declared, and health while Redis fails over. The failovers themselves are
in tests/test_ha.py, TLS against real servers in tests/test_tls.py."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aio_pika import RobustConnection

from services.monitor.health import Checks
from services.monitor.system import overall_status
from shared.amqp_nodes import ATTEMPT_HOOK, ClusterConnection
from shared.broker import QUORUM_GROUP_SIZE_ARGUMENT, Broker, work_queue_arguments
from shared.connections import open_connections
from shared.names import Names
from shared.settings import ConfigError, Settings
from tests.support import AMQP_URL, TEST_SHARDS, free_port, new_namespace, purge_namespace


def test_amqp_url_lists_the_nodes_of_a_cluster() -> None:
    nodes = "amqp://u:p@rmq-0:5672/, amqp://u:p@rmq-1:5672/,amqp://u:p@rmq-2:5672/"
    settings = Settings.from_env({"AMQP_URL": nodes})
    assert settings.amqp_urls == ("amqp://u:p@rmq-0:5672/", "amqp://u:p@rmq-1:5672/", "amqp://u:p@rmq-2:5672/")
    assert Settings.from_env({}).amqp_urls == ("amqp://guest:guest@localhost:5672/",)
    for wrong in ("amqp://a/,http://b/", "amqp://a/,amqps://b/", ",", "amqp://a/,rmq-1:5672"):
        with pytest.raises(ConfigError, match=r"^AMQP_URL="):
            Settings.from_env({"AMQP_URL": wrong})


def test_the_robust_connection_still_has_the_hook_each_attempt_passes_through() -> None:
    """shared/amqp_nodes.py overrides it by name: an aio-pika that renames it must fail here."""
    assert inspect.iscoroutinefunction(getattr(RobustConnection, ATTEMPT_HOOK))
    assert inspect.iscoroutinefunction(getattr(ClusterConnection, ATTEMPT_HOOK))
    assert getattr(ClusterConnection, ATTEMPT_HOOK) is not getattr(RobustConnection, ATTEMPT_HOOK)


def test_redis_sentinels_and_tls_files(tmp_path: Path) -> None:
    settings = Settings.from_env({"REDIS_SENTINELS": "s-0:26379, s-1:26380,[::1]:26381"})
    assert settings.redis_sentinels == (("s-0", 26379), ("s-1", 26380), ("::1", 26381))
    assert settings.redis_sentinel_service == "mymaster"
    for wrong in ("s-0", "s-0:port", "s-0:0", ":26379"):
        with pytest.raises(ConfigError, match=r"^REDIS_SENTINELS="):
            Settings.from_env({"REDIS_SENTINELS": wrong})
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert Settings.from_env({"AMQP_CA_FILE": str(ca)}).amqp_tls.ca_file == ca
    with pytest.raises(ConfigError, match=r"^REDIS_CA_FILE="):
        Settings.from_env({"REDIS_CA_FILE": str(tmp_path / "missing.pem")})
    with pytest.raises(ConfigError, match=r"^AMQP_CERT_FILE and AMQP_KEY_FILE go together"):
        Settings.from_env({"AMQP_CERT_FILE": str(ca)})


async def test_a_redis_ca_file_that_is_no_ca_bundle_stops_the_start_behind_sentinel_too(tmp_path: Path) -> None:
    """Without Sentinel the CA is tried against the server at start; behind Sentinel there is no
    server to try yet, but a file that is no CA bundle must still stop the start, naming it, rather
    than leave the service running with every Redis connection failing."""
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    settings = Settings.from_env(
        {
            "REDIS_URL": f"rediss://127.0.0.1:{free_port()}/0",
            "REDIS_SENTINELS": f"127.0.0.1:{free_port()}",
            "REDIS_CA_FILE": str(garbage),
            "AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/",  # nothing listens: nothing touched
            "ATENDIMENTO_NAMESPACE": new_namespace(),
        }
    )
    with pytest.raises(ConfigError, match=r"^REDIS_CA_FILE="):
        async with open_connections(settings, "monitor"):
            pass


def _checks(redis: dict[str, object], workers: str) -> Checks:
    return {
        "redis": redis,  # type: ignore[typeddict-item]
        "rabbitmq": {"status": "up", "queue_depth": 0, "consumers": 1, "dead_letters": 0},
        "workers": {"status": workers, "alive": None if workers == "unknown" else 1},  # type: ignore[typeddict-item]
        "gateway": {"status": "up", "alive": 1},
    }


def test_health_degrades_while_sentinel_fails_redis_over() -> None:
    primary = {"status": "up", "latency_ms": 0.3, "primary": "10.0.0.5:6379"}
    assert overall_status(_checks(primary, "up"))[0] == "healthy"
    failing_over = {"status": "down", "error": "connection refused", "failover": True}
    assert overall_status(_checks(failing_over, "unknown"))[0] == "degraded"
    assert overall_status(_checks({"status": "down", "error": "refused"}, "unknown"))[0] == "unhealthy"
    assert overall_status(_checks({"status": "down", "error": "x", "failover": False}, "unknown"))[0] == "unhealthy"


@pytest.fixture
async def namespace() -> AsyncIterator[str]:
    name = new_namespace()
    try:
        yield name
    finally:
        await purge_namespace(name)


@pytest.mark.integration
async def test_a_dead_node_in_amqp_url_is_skipped(namespace: str) -> None:
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    broker = Broker((dead, AMQP_URL), Names(namespace, TEST_SHARDS), "test dead node")
    broker.start()
    try:
        await asyncio.wait_for(broker.wait_ready(), 30)
        assert broker.connected
    finally:
        await broker.close()


@pytest.mark.integration
async def test_queues_made_before_the_replication_factor_keep_working(namespace: str) -> None:
    """An upgrade: RabbitMQ refuses to re-declare a queue with an argument it was not made with."""
    names = Names(namespace, TEST_SHARDS)
    old = names.shard_queue(0)
    arguments = work_queue_arguments(names, single_active_consumer=True)
    del arguments[QUORUM_GROUP_SIZE_ARGUMENT]
    connection = await aio_pika.connect(AMQP_URL)
    try:
        await (await connection.channel()).declare_queue(old, durable=True, arguments=arguments)
    finally:
        await connection.close()
    broker = Broker((AMQP_URL,), names, "test upgrade")
    broker.start()
    try:
        await asyncio.wait_for(broker.wait_ready(), 30)
        assert QUORUM_GROUP_SIZE_ARGUMENT not in broker.queue_arguments(old)
        assert broker.queue_arguments(names.shard_queue(1))[QUORUM_GROUP_SIZE_ARGUMENT] == 3
        await broker.publish(names.inbound_exchange, "0", b"{}", message_id="m-1")  # confirmed
        channel = await broker.connection.channel()
        queue = await broker.declare_durable_queue(channel, old)  # as the worker's consumer does
        assert queue.declaration_result.message_count == 1
    finally:
        await broker.close()


@pytest.mark.integration
async def test_a_nacked_publish_renews_the_publishing_channel(namespace: str) -> None:
    """RabbitMQ before 3.12.5 can nack every publish of one channel to a quorum queue whose leader
    died (shared/broker.py; tests/test_ha.py makes it happen): after a nack, the broker
    publishes on a fresh channel. A queue that refuses every message stands in for that here."""
    names = Names(namespace, TEST_SHARDS)
    full = f"{namespace}.full"
    connection = await aio_pika.connect(AMQP_URL)
    broker = Broker((AMQP_URL,), names, "test nack")
    broker.start()
    try:
        channel = await connection.channel()
        refusing: dict[str, Any] = {"x-max-length": 0, "x-overflow": "reject-publish"}
        await channel.declare_queue(full, exclusive=True, arguments=refusing)
        await asyncio.wait_for(broker.wait_ready(), 30)
        first = broker._channel
        with pytest.raises(aio_pika.exceptions.DeliveryError):
            await broker.publish("", full, b"{}", message_id="m-1")
        assert first is not None and first.is_closed
        assert broker._channel is not first and broker._channel is not None and not broker._channel.is_closed
        await broker.publish(names.inbound_exchange, "0", b"{}", message_id="m-2")  # confirmed on the fresh one
        with pytest.raises(aio_pika.exceptions.PublishError):  # a return is not a nack: no renewal
            await broker.publish("", f"{namespace}.nowhere", b"{}", message_id="m-3")
        assert broker._channel is not None and not broker._channel.is_closed
    finally:
        await broker.close()
        await connection.close()
