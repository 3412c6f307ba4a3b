"""Health that tells the truth (issue 3, SPEC section 5): the monitor's view of Redis, RabbitMQ and
the live services, and each service's own readiness on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp

from tests.support import TEST_SHARDS, Service, Stack, eventually, free_port, get_json, publish_raw
from tests.support.pipeline import wait_ready
from tests.support.servers import LocalRedis


async def health(http: aiohttp.ClientSession, monitor: Service) -> tuple[int, dict[str, Any]]:
    return await get_json(http, monitor.url + "/monitoring/health")


async def test_redis_stopped_is_unhealthy_with_a_critical_alert_and_recovers_by_itself(
    stack: Stack, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with LocalRedis(tmp_path) as redis:
        stack.extra_env["REDIS_URL"] = redis.url
        await stack.start("gateway")
        await stack.start("worker")
        monitor = await stack.start("monitor", ALERT_INTERVAL_SECONDS="0.2")
        await wait_ready(stack)
        await eventually(lambda: _status_is(http, monitor, 200, "healthy"), what="healthy at start")

        redis.stop()
        status, body = await eventually(lambda: _status_is(http, monitor, 503, "unhealthy"), what="unhealthy")
        assert body["checks"]["redis"]["status"] == "down"
        assert body["checks"]["rabbitmq"]["status"] == "up"
        # Statistics still answer, with the alert, even though their numbers cannot be read now.
        status, stats = await get_json(http, monitor.url + "/monitoring/stats")
        assert status == 200 and stats["messages"] is None and stats["unavailable"] == ["redis"]
        critical = {a["name"] for a in stats["alerts"] if a["severity"] == "critical"}
        assert {"AtendimentoRedisDisconnected", "AtendimentoSystemNotHealthy"} <= critical
        async with http.get(monitor.url + "/metrics") as response:
            assert "atendimento_redis_up 0.0" in await response.text()

        await redis.start()
        # Nobody restarts anything: the services reconnect and beat again, and health follows.
        await eventually(lambda: _status_is(http, monitor, 200, "healthy"), timeout=30, what="recovery")
        _, stats = await get_json(http, monitor.url + "/monitoring/stats")
        assert not {a["name"] for a in stats["alerts"]} & {
            "AtendimentoRedisDisconnected",
            "AtendimentoSystemNotHealthy",
        }


async def _status_is(
    http: aiohttp.ClientSession, monitor: Service, code: int, status: str
) -> tuple[int, dict[str, Any]] | None:
    answer = await health(http, monitor)
    return answer if answer[0] == code and answer[1]["status"] == status else None


async def test_dead_letters_warn_and_no_live_worker_is_unhealthy_within_the_heartbeat_ttl(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    await stack.start("gateway")
    worker = await stack.start("worker")
    monitor = await stack.start("monitor")
    await wait_ready(stack)
    _, body = await eventually(lambda: _status_is(http, monitor, 200, "healthy"), what="healthy at start")
    assert body["checks"]["workers"] == {"status": "up", "alive": 1}
    assert body["checks"]["gateway"] == {"status": "up", "alive": 1}
    assert body["checks"]["redis"]["latency_ms"] >= 0
    assert body["checks"]["rabbitmq"]["consumers"] == TEST_SHARDS

    # A message no worker can read is dead-lettered by the worker: a warning, the system healthy.
    await publish_raw(stack.namespace, "0", b"not a message", message_id="garbage-1")

    async def warned() -> dict[str, Any] | None:
        _, body = await health(http, monitor)
        return body if body["warnings"] else None

    body = await eventually(warned, what="the dead letter's warning")
    assert body["status"] == "healthy" and body["reasons"] == []
    assert body["checks"]["rabbitmq"]["dead_letters"] == 1
    _, stats = await get_json(http, monitor.url + "/monitoring/stats")
    assert stats["queue"]["dead_letters"] == 1
    assert stats["errors"]["last_5_minutes"] == 1 and stats["errors"]["by_kind_5_minutes"] == {"malformed": 1}
    assert "AtendimentoDeadLetters" in {a["name"] for a in stats["alerts"]}

    # A worker killed outright cannot say goodbye: its heartbeat expires (3 beats of 0.5 s).
    worker.kill(signal.SIGKILL)
    _, body = await eventually(
        lambda: _status_is(http, monitor, 503, "unhealthy"), timeout=1.5 + 2, what="unhealthy within the TTL"
    )
    assert body["checks"]["workers"] == {"status": "down", "alive": 0}
    assert body["reasons"] == ["workers: no live worker"]


async def test_sigterm_turns_readiness_off_first_and_keeps_serving_while_draining(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    drain = {"DRAIN_SECONDS": "4"}
    services = [await stack.start(name, **drain) for name in ("gateway", "worker", "monitor")]
    await wait_ready(stack)
    for service in services:
        service.kill(signal.SIGTERM)

    async def draining(service: Service) -> bool:
        async with http.get(service.url + "/monitoring/live") as live:
            assert live.status == 200
        status, body = await health(http, service)
        if service.name == "monitor":
            return status in (200, 503) and "checks" in body  # the system's health, still answered
        return status == 503 and body["status"] == "draining"

    await asyncio.gather(*(eventually(partial(draining, s), what=f"{s.name} draining") for s in services))
    for service in services:
        assert service.process is not None
        assert await asyncio.to_thread(service.process.wait, 30) == 0, service.logs()


async def test_with_rabbitmq_unreachable_health_still_carries_every_field_of_its_check(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    """SPEC 5 names `queue_depth` and `consumers` in checks.rabbitmq: when the broker cannot be
    asked they are null (as /monitoring/stats' queue says), not missing."""
    monitor = await stack.start("monitor", AMQP_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    status, body = await health(http, monitor)
    assert status == 503 and body["status"] == "unhealthy"
    assert body["checks"]["rabbitmq"] == {
        "status": "down",
        "queue_depth": None,
        "consumers": None,
        "dead_letters": None,
    }
    _, stats = await get_json(http, monitor.url + "/monitoring/stats")
    assert stats["queue"] == {"depth": None, "consumers": None, "dead_letters": None}
