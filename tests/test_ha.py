"""Losing one server: a RabbitMQ cluster node, then the Redis primary (issue 28).

Real servers of the test's own (tests/support/ha.py): three rabbitmq-server nodes joined in one
cluster, and a Redis primary with two replicas behind three sentinels. Two gateways and two
workers run on them with AMQP_URL listing every node and REDIS_SENTINELS naming the sentinels.
Under load (20 conversations x 10 messages, clients retrying with the same message_id) the node
holding most shard-queue leaders is killed, then the Redis primary is SIGKILLed and Sentinel
promotes a replica. Each time every accepted message is answered exactly once, in its
conversation's order, and the system answers new messages again within 30 seconds. A second
test makes the nacking channel of RabbitMQ before 3.12.5 (shared/broker.py) happen on purpose.

2-3 minutes on two cores (mostly starting Erlang, once per test): marked `ha`, left out of
`make test`, run with `make test-ha`, a step of CI's own (.ci/run). The servers are stopped and
their folders removed after each test, their logs printed first when it failed.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aio_pika.exceptions import DeliveryError
from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel

from shared.broker import BROKER_ERRORS, RENEWED_AFTER_NACK, Broker
from shared.names import Names
from tests.support import TEST_SHARDS, Stack, eventually, get_json, new_namespace
from tests.support.ha import SERVICE, RabbitCluster, SentinelRedis
from tests.support.load import Load, seconds_to_answer_again

pytestmark = [pytest.mark.ha, pytest.mark.integration, pytest.mark.timeout(600)]

RECOVERY_LIMIT_S = 30.0


@pytest.fixture
async def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[RabbitCluster]:
    cluster = RabbitCluster(tmp_path / "rabbitmq")
    try:
        yield await cluster.start()
    finally:
        cluster.stop()
        _print_logs_if_failed_and_remove(request, cluster.workdir, "*/log/*@localhost.log")


@pytest.fixture
async def sentinels(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[SentinelRedis]:
    servers = SentinelRedis(tmp_path / "redis")
    try:
        yield await servers.start()
    finally:
        servers.stop()
        _print_logs_if_failed_and_remove(request, servers.workdir, "*/redis.log")


def _print_logs_if_failed_and_remove(request: pytest.FixtureRequest, folder: Path, logs: str) -> None:
    """The servers are stopped: print their logs' ends if the test failed, then remove their data."""
    reports = (getattr(request.node, f"rep_{when}", None) for when in ("setup", "call"))
    if any(report is not None and report.failed for report in reports):
        for log in sorted(folder.glob(logs)):
            print(f"==== {log.relative_to(folder)}\n{log.read_text(errors='replace')[-3000:]}")
    shutil.rmtree(folder, ignore_errors=True)


async def test_one_server_lost_every_accepted_message_answered_once_in_order(
    stack: Stack, cluster: RabbitCluster, sentinels: SentinelRedis, http: aiohttp.ClientSession
) -> None:
    stack.extra_env.update(
        {
            "AMQP_URL": cluster.amqp_url,
            "REDIS_URL": "redis://127.0.0.1/0",  # the database; the primary is asked of the sentinels
            "REDIS_SENTINELS": sentinels.sentinel_setting,
            "KB_EMBEDDINGS": "off",
            "LOG_LEVEL": "WARNING",
        }
    )
    for name in ("gateway", "gateway", "worker", "worker", "monitor"):
        await stack.start(name)
    names = Names(stack.namespace, TEST_SHARDS)
    primary = Sentinel([("127.0.0.1", s.port) for s in sentinels.sentinels]).master_for(SERVICE, decode_responses=True)
    faults: tuple[tuple[str, Fault], ...] = (
        ("RabbitMQ node with the shard leaders killed", lambda: _kill_the_leaders_node(cluster, names)),
        ("Redis primary SIGKILLed, Sentinel promotes", lambda: _kill_the_redis_primary(sentinels, http, stack)),
    )
    table: list[tuple[str, int, int, int, float, int]] = []
    try:
        for fault, inject in faults:
            table.append(await _under_load(stack, http, primary, names, fault, inject))
    finally:
        await primary.aclose()
        print("\nfault | lost | doubled | reordered | seconds to answer again | client retries")
        for row in table:
            print("{} | {} | {} | {} | {:.1f} | {}".format(*row))
        # A gateway's are RabbitMQ's stuck quorum-queue client (before 3.12.5): it publishes to those only.
        print(f"publishing channels renewed after a nack: {_renewals(stack) or 'none'}")
    for fault, lost, doubled, reordered, recovered, _ in table:
        assert (lost, doubled, reordered) == (0, 0, 0), fault
        assert recovered < RECOVERY_LIMIT_S, fault


def _renewals(stack: Stack) -> dict[str, int]:
    """service -> how many times its publishing channel was renewed after a nack (shared/broker.py)."""
    return dict(Counter(s.name for s in stack.services for line in s.logs().splitlines() if RENEWED_AFTER_NACK in line))


# A fault: injects itself and returns when it struck (time.monotonic) and the check of what must
# hold once the load is answered.
Check = Callable[[], Awaitable[None]]
Fault = Callable[[], Awaitable[tuple[float, Check]]]


async def _under_load(
    stack: Stack, http: aiohttp.ClientSession, redis: Redis, names: Names, fault: str, inject: Fault
) -> tuple[str, int, int, int, float, int]:
    load = Load(stack)
    running = asyncio.create_task(load.run(http))

    async def a_fifth_accepted() -> bool:
        assert not running.done() or running.exception() is None
        return load.accepted >= load.conversations * load.messages // 5

    try:
        await eventually(a_fifth_accepted, timeout=60, what="load flowing before the fault")
        injected, check = await inject()
        recovered = await seconds_to_answer_again(http, stack, injected, RECOVERY_LIMIT_S)
        await asyncio.wait_for(running, 180)
    finally:
        running.cancel()
    lost, doubled, reordered = await load.verdict(redis, names, timeout_s=60)
    await check()
    return fault, lost, doubled, reordered, recovered, load.retries


async def _kill_the_leaders_node(cluster: RabbitCluster, names: Names) -> tuple[float, Check]:
    """Kill the node that leads most shard queues (and holds service connections)."""
    leaders = await cluster.leaders(cluster.nodes[0], names.shard_queues)
    assert len(leaders) == TEST_SHARDS, leaders
    node, held = Counter(leaders.values()).most_common(1)[0]
    connections = await cluster.connections(cluster.nodes[0])
    members = await cluster.members(cluster.nodes[0], names.shard_queues)
    assert set(members.values()) == {3}, f"every shard queue replicated on the 3 nodes: {members}"
    on_node = connections.count(node)
    print(f"\nkilling {node}: leader of {held}/{TEST_SHARDS} shard queues, {on_node} service connections")
    assert node in connections, "the services' failover is exercised"
    cluster.of(node).stop()  # the Erlang VM killed: its connections and queue replicas vanish
    struck = time.monotonic()
    survivor = next(n for n in cluster.nodes if n.node != node)

    async def moved() -> bool:
        leaders_now = await cluster.leaders(survivor, names.shard_queues)
        connections_now = await cluster.connections(survivor)
        return (
            len(leaders_now) == TEST_SHARDS
            and node not in leaders_now.values()
            and len(connections_now) == len(connections)  # every service connected again
            and node not in connections_now
        )

    async def check() -> None:
        await eventually(moved, timeout=30, what="leaders and service connections on the surviving nodes")

    return struck, check


async def _kill_the_redis_primary(
    sentinels: SentinelRedis, http: aiohttp.ClientSession, stack: Stack
) -> tuple[float, Check]:
    old = await sentinels.primary_port()
    sentinels.server_on(old).kill()
    struck = time.monotonic()

    async def degraded_not_dead() -> bool:
        status, health = await get_json(http, stack.monitor.url + "/monitoring/health")
        return status == 200 and health["status"] == "degraded" and health["checks"]["redis"].get("failover") is True

    # Until Sentinel has promoted a replica (3 s at least), the monitor degrades and says why.
    await eventually(degraded_not_dead, timeout=10, interval=0.1, what="the monitor degraded during the failover")

    async def check() -> None:
        new = await sentinels.primary_port()
        assert new != old, "Sentinel promoted a replica"
        await _health_names_the_new_primary(http, stack, sentinels)

    return struck, check


async def _health_names_the_new_primary(http: aiohttp.ClientSession, stack: Stack, sentinels: SentinelRedis) -> None:
    port = await sentinels.primary_port()

    async def healthy_on_new_primary() -> bool:
        _, health = await get_json(http, stack.monitor.url + "/monitoring/health")
        return bool(health["checks"]["redis"].get("primary") == f"127.0.0.1:{port}")

    await eventually(healthy_on_new_primary, timeout=30, what="the monitor's health naming the new primary")


async def test_a_channel_started_at_the_dead_leader_is_renewed(cluster: RabbitCluster) -> None:
    """RabbitMQ before 3.12.5 (shared/broker.py), made to happen: a channel whose first
    publish to a quorum queue comes just after the leader's node died starts its client of the queue
    at the dead node, and then nacks every publish to the queue for as long as it lives. The broker
    publishes on a fresh channel after a nack (shared/broker.py), so every shard queue takes
    messages again within seconds. A RabbitMQ without the bug takes them at once (no nack)."""
    names = Names(new_namespace(), TEST_SHARDS)
    doomed, survivor = cluster.nodes[0], cluster.nodes[1]
    declaring = Broker((doomed.url,), names, "test: declares, so the leaders are on the doomed node")
    declaring.start()
    try:
        await asyncio.wait_for(declaring.wait_ready(), 60)
    finally:
        await declaring.close()
    leaders = await cluster.leaders(survivor, names.shard_queues)
    assert set(leaders.values()) == {doomed.node}, leaders
    broker = Broker((survivor.url,), names, "test: publishes through a surviving node")
    broker.start()
    try:
        await asyncio.wait_for(broker.wait_ready(), 60)
        doomed.stop()
        struck = time.monotonic()
        deadline = struck + RECOVERY_LIMIT_S
        shards = range(TEST_SHARDS)
        nacks = await asyncio.gather(*(_publish_until_confirmed(broker, names, s, deadline) for s in shards))
        recovered = time.monotonic() - struck
    finally:
        await broker.close()
    print(
        f"\nleader node killed: {sum(nacks)} publishes nacked (RabbitMQ < 3.12.5's stuck channel), "
        f"every shard queue confirmed a publish {recovered:.1f} s after the kill"
    )
    assert recovered < RECOVERY_LIMIT_S


async def _publish_until_confirmed(broker: Broker, names: Names, shard: int, deadline: float) -> int:
    """Publish one message to a shard queue, again after each failure, as a client retrying a 503
    would, until it is confirmed; returns how many times it was nacked."""
    nacks = 0
    while True:
        try:
            await broker.publish(names.inbound_exchange, str(shard), b"{}", message_id=f"probe-{shard}")
            return nacks
        except DeliveryError:
            nacks += 1
        except BROKER_ERRORS:
            pass
        assert time.monotonic() < deadline, f"shard queue {shard} still refuses publishes ({nacks} nacks)"
        await asyncio.sleep(0.2)
