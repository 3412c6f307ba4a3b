"""Poison messages (issue 26, point 5): bytes on a shard queue that are no message of this system
are dead-lettered at once with the reason and counted once; the system stays healthy with a
warning (not a critical "not healthy"); the admin shows why, and replays or discards (audited)
every dead letter it lists. Real gateway, worker and monitor over the shared RabbitMQ and Redis."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
from aio_pika.abc import AbstractIncomingMessage

from services.monitor.deadletters import describe
from services.monitor.health import Checks, Liveness
from services.monitor.system import overall_status
from shared.names import Names
from tests.support import TEST_SHARDS, Stack, eventually, get_json, publish_raw
from tests.support.deadletters import ADMIN_TOKEN, bearer, dead_letters, post_letter, publish_to_queue
from tests.support.pipeline import wait_ready

RAW = b"\x00\x01 not JSON at all, from something with broker access"
RAW_ID = "raw-1"
FOREIGN = b'{"v": 2, "event": "message.created", "payload": {"text": "a future format"}}'


async def emptied(http: aiohttp.ClientSession, monitor: str) -> bool:
    _, health = await get_json(http, monitor + "/monitoring/health")
    return bool(health["checks"]["rabbitmq"].get("dead_letters") == 0 and health["warnings"] == [])


async def dashboard_listing(http: aiohttp.ClientSession, monitor: str, letter_id: str) -> str | None:
    async with http.get(monitor + "/admin", headers=bearer()) as response:
        page = await response.text()
    return page if f'data-message-id="{letter_id}"' in page else None


async def errors(http: aiohttp.ClientSession, monitor: str) -> dict[str, int]:
    _, stats = await get_json(http, monitor + "/monitoring/stats")
    return dict(stats["errors"]["by_kind_5_minutes"])


async def test_a_raw_non_json_message_on_a_shard_queue_is_dead_lettered_once_explained_replayed_and_discarded(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    await stack.start("gateway")
    worker = await stack.start("worker")
    monitor = (await stack.start("monitor", ADMIN_TOKEN=ADMIN_TOKEN, ALERT_INTERVAL_SECONDS="0.2")).url
    await wait_ready(stack)
    names = Names(stack.namespace, TEST_SHARDS)

    # Raw bytes straight onto a shard queue; a future version's JSON through the inbound exchange.
    await publish_to_queue(names.shard_queue(1), RAW, message_id=RAW_ID)
    await publish_raw(stack.namespace, "2", FOREIGN, message_id="foreign-1")
    letters = await eventually(lambda: dead_letters(http, monitor, 2), what="two dead letters listed")
    by_id = {letter["id"]: letter for letter in letters}
    assert set(by_id) == {RAW_ID, "foreign-1"}
    raw, foreign = by_id[RAW_ID], by_id["foreign-1"]
    assert raw["kind"] == foreign["kind"] == "unreadable"
    assert raw["problem"].startswith("not JSON") and "KeyError" in foreign["problem"]
    assert raw["queue"] == names.shard_queue(1) and foreign["queue"] == names.shard_queue(2)
    # At once: one death each, no retries; counted once each.
    assert raw["deaths"] == foreign["deaths"] == 1 and raw["replayable"] and foreign["replayable"]
    assert await errors(http, monitor) == {"malformed": 2}
    assert worker.logs().count("dead-lettering a malformed message: not JSON") == 1

    # A warning, not a critical "system not healthy": healthy, 200, the warning says why.
    status, health = await get_json(http, monitor + "/monitoring/health")
    assert status == 200 and health["status"] == "healthy" and health["reasons"] == []
    assert health["checks"]["rabbitmq"]["dead_letters"] == 2
    assert health["warnings"] == ["dead_letters: 2 message(s) in the dead-letter queue, see /admin"]
    _, stats = await get_json(http, monitor + "/monitoring/stats")
    alerts = {alert["name"]: alert["severity"] for alert in stats["alerts"]}
    assert alerts.get("AtendimentoDeadLetters") == "warning" and "AtendimentoSystemNotHealthy" not in alerts
    async with http.get(monitor + "/admin", headers=bearer()) as response:
        page = await response.text()
    assert "not a message of this system" in page and "not JSON" in page and "/admin/dead-letters/discard" in page

    # Replay works for the raw one too: it goes back to the queue it died on, and (still no
    # message) is dead-lettered again at once, counted once more.
    assert (await post_letter(http, monitor + "/admin/api/dead-letters/replay", RAW_ID))[0] == 200

    async def counted_again() -> bool:
        return await errors(http, monitor) == {"malformed": 3}

    await eventually(counted_again, what="the replayed poison dead-lettered and counted again")
    await eventually(lambda: dead_letters(http, monitor, 2), what="both dead letters listed again")

    # Discard, audited; then they are gone, and an unknown id is 404.
    for letter_id in (RAW_ID, "foreign-1"):
        status, body = await post_letter(http, monitor + "/admin/api/dead-letters/discard", letter_id)
        assert status == 200 and body["discarded"]["id"] == letter_id, body
    status, body = await post_letter(http, monitor + "/admin/api/dead-letters/discard", RAW_ID)
    assert status == 404 and body["detail"].startswith("message_id")

    await eventually(lambda: emptied(http, monitor), what="the dead-letter queue empty")
    async with http.get(monitor + "/admin/api/audit", headers=bearer()) as response:
        entries = (await response.json())["entries"]
    done = {(e["action"], e["target"], e["outcome"]) for e in entries}
    assert {
        ("replay_dead_letter", RAW_ID, "ok"),
        ("discard_dead_letter", RAW_ID, "ok"),
        ("discard_dead_letter", "foreign-1", "ok"),
        ("discard_dead_letter", RAW_ID, "refused"),
    } <= done


async def test_a_letter_with_no_origin_cannot_be_replayed_but_can_be_discarded(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    await stack.start("gateway")
    await stack.start("worker")
    monitor = (await stack.start("monitor", ADMIN_TOKEN=ADMIN_TOKEN)).url
    await wait_ready(stack)
    # Published straight into the dead-letter queue: it never died anywhere.
    await publish_to_queue(Names(stack.namespace, TEST_SHARDS).dead_letter_queue, RAW, message_id="orphan")
    letters = await eventually(lambda: dead_letters(http, monitor, 1), what="the orphan listed")
    assert letters[0]["id"] == "orphan" and not letters[0]["replayable"]
    # The dashboard reads the queue's depth from the last health observation, so it may lag the API.
    page = await eventually(lambda: dashboard_listing(http, monitor, "orphan"), what="the orphan on the dashboard")
    row = page[page.index('data-message-id="orphan"') :].split("</tr>")[0]
    assert "/admin/dead-letters/discard" in row and "/admin/dead-letters/replay" not in row
    status, body = await post_letter(http, monitor + "/admin/api/dead-letters/replay", "orphan")
    assert status == 409 and "discard it instead" in body["detail"]
    assert (await post_letter(http, monitor + "/admin/api/dead-letters/discard", "orphan"))[0] == 200
    await eventually(lambda: emptied(http, monitor), what="the orphan gone")


def test_health_says_why_it_is_not_healthy() -> None:
    up: Liveness = {"status": "up", "alive": 1}
    checks: Checks = {
        "redis": {"status": "up"},
        "rabbitmq": {"status": "up", "queue_depth": 0, "consumers": 1, "dead_letters": 7},
        "workers": up,
        "gateway": up,
    }
    assert overall_status(checks) == ("healthy", [])
    gateway_down: Checks = {**checks, "gateway": {"status": "down", "alive": 0}}
    assert overall_status(gateway_down) == ("degraded", ["gateway: no live gateway, no channel can hand in messages"])
    redis_down: Checks = {
        **gateway_down,
        "redis": {"status": "down", "error": "Connection refused"},
        "workers": {"status": "unknown", "alive": None},
    }
    assert overall_status(redis_down) == ("unhealthy", ["redis: Connection refused", "workers: unknown"])


@dataclass
class Letter:
    """The three things `describe` reads of a delivery (a real one comes from the broker above)."""

    body: bytes
    message_id: str | None
    headers: dict[str, Any]


def test_a_letter_without_message_id_is_named_by_its_body_and_says_what_is_wrong() -> None:
    names = Names("ns", TEST_SHARDS)
    death = {
        "queue": names.shard_queue(3),
        "reason": "rejected",
        "count": 1,
        "exchange": "",
        "routing-keys": [names.shard_queue(3)],
    }
    letter = describe(cast(AbstractIncomingMessage, Letter(RAW, None, {"x-death": [death]})), names)
    assert letter.id == f"body-{hashlib.sha256(RAW).hexdigest()[:16]}" and letter.message_id == ""
    assert letter.kind == "unreadable" and letter.problem.startswith("not JSON")
    assert letter.text == "\ufffd\ufffd not JSON at all, from something with broker access"  # printable only
    assert letter.destination == ("", names.shard_queue(3))
    orphan = describe(cast(AbstractIncomingMessage, Letter(b"{}", "x", {})), names)
    assert orphan.destination is None and orphan.problem.startswith("inbound message: KeyError")
