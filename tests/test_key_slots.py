"""Cluster-ready keys (issue 28 point 3): every Lua script and every multi-key command touches keys
of one Redis Cluster hash slot.

The unit tests compute the slot (CRC16, as the cluster does) of every key the code base can name:
each `Names` key and prefix, and the keys built beside it (knowledge-base state, unanswered
questions, stats slices). The integration test watches the shared Redis with MONITOR while the
real services answer, hand over and release conversations, and checks the slot of every key each
script (EVAL/EVALSHA), each multi-key command and each MULTI/EXEC block received.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import subprocess
import sys
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from shared import kbstate, stats, unanswered
from shared.handoff import Handoffs
from shared.names import Names
from tests.support import (
    PRAZO,
    REDIS_URL,
    ROOT,
    TEST_SHARDS,
    Stack,
    new_namespace,
    post_message,
    purge_namespace,
    web_id,
)
from tests.support.pipeline import start_stack
from tests.support.slots import command_keys, crc16, key_slot

NAMES = Names("atendimento", 16)


def test_crc16_and_slots_match_redis_cluster() -> None:
    assert crc16(b"123456789") == 0x31C3  # the check value of CRC16-XMODEM (Redis's crc16.c)
    assert key_slot("foo") == 12182  # CLUSTER KEYSLOT foo
    assert key_slot("{user1000}.following") == key_slot("{user1000}.followers") == key_slot("user1000")
    assert key_slot("foo{}{bar}") == crc16(b"foo{}{bar}") % 16384  # an empty tag is no tag
    assert key_slot("foo{{bar}}zap") == key_slot("{bar")


def every_key(names: Names) -> dict[str, str]:
    """What each key method and property of `names` gives, called with sample arguments; a prefix
    stands for the keys made under it."""
    keys: dict[str, str] = {}
    for attribute, member in vars(Names).items():
        if attribute.startswith("_") or attribute == "key_prefix" or not _makes_a_key(member):
            continue
        if isinstance(member, property):
            value = getattr(names, attribute)
        else:
            parameters = list(inspect.signature(member).parameters.values())[1:]
            value = getattr(names, attribute)(*(_sample(p) for p in parameters))
        keys[attribute] = value + (":sample" if attribute.endswith("_prefix") else "")
    keys["kbstate.version_key"] = kbstate.version_key(names)
    keys["kbstate.status_key"] = kbstate.status_key(names)
    keys["unanswered.counts_key"] = unanswered.counts_key(names, 7)
    keys["unanswered.examples_key"] = unanswered.examples_key(names, 7)
    for (key, _), which in zip(stats.slice_keys(names, 1_700_000_000.0), ("fine", "hour"), strict=True):
        keys[f"stats.slice_keys {which}"] = key
    return keys


def _makes_a_key(member: Any) -> bool:
    function = member.fget if isinstance(member, property) else member
    return inspect.isfunction(function) and "self.key_prefix" in inspect.getsource(function)


def _sample(parameter: inspect.Parameter) -> Any:
    return 1_700_000_000 if parameter.annotation in (int, "int") else f"sample-{parameter.name}"


@pytest.mark.parametrize("namespace", ["atendimento", "t0abc", "loja-2"])
def test_every_key_of_a_namespace_is_in_its_one_slot(namespace: str) -> None:
    names = Names(namespace, 16)
    keys = every_key(names)
    assert len(keys) > 30 and "reply_key" in keys and "rate_limit_prefix" in keys
    slot = key_slot(f"{{{namespace}}}")
    assert {name: key_slot(key) for name, key in keys.items()} == dict.fromkeys(keys, slot)
    assert all(key.startswith(f"{namespace}:") for key in keys.values()), "the namespace stays the prefix"


def test_namespaces_get_slots_of_their_own() -> None:
    assert len({key_slot(Names(f"shop-{i}", 16).reply_key("m")) for i in range(20)}) > 15


async def test_keys_made_before_the_hash_tag_are_moved_under_it(redis: Redis) -> None:
    namespace = new_namespace()
    names = Names(namespace, TEST_SHARDS)
    await redis.set(f"{namespace}:reply:m-1", "answered", ex=600)
    await redis.hset(f"{namespace}:stats:total", "n", 7)
    await redis.set(f"{namespace}x:reply:m-1", "another deployment")
    try:
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, str(ROOT / "deploy" / "backup" / "redis_keys.py"), "hash-tag", "--redis-url", REDIS_URL,
             "--namespace", namespace],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "2 keys" in result.stderr
        assert await redis.get(names.reply_key("m-1")) == "answered"
        assert 0 < await redis.ttl(names.reply_key("m-1")) <= 600
        assert await redis.hget(names.stats_total_key, "n") == "7"
        assert await redis.get(f"{namespace}x:reply:m-1") == "another deployment"
    finally:
        await redis.delete(f"{namespace}x:reply:m-1")
        await purge_namespace(namespace)


# -------------------------------------------------------------------------------------------------
# every script and multi-key command the running services send
# -------------------------------------------------------------------------------------------------
class SlotWatch:
    """Each atomic unit Redis ran for a namespace (a script, a multi-key command, a MULTI/EXEC
    block), with the slots of the keys it touched."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.units: list[tuple[str, set[int]]] = []
        self._open: dict[str, list[str]] = {}  # client -> keys of its MULTI block so far

    def see(self, client: str, words: list[str]) -> None:
        if client == "lua":  # what a script runs is checked as the script's own keys
            return
        name = words[0].upper()
        if name == "MULTI":
            self._open[client] = []
        elif name in ("EXEC", "DISCARD"):
            keys = self._open.pop(client, [])
            if name == "EXEC" and any(self.namespace in key for key in keys):
                self.units.append(("MULTI/EXEC", {key_slot(key) for key in keys}))
        elif client in self._open:
            self._open[client].extend(command_keys(words) or words[1:2])
        else:
            keys = command_keys(words)
            if len(keys) > 1 and any(self.namespace in key for key in keys):
                self.units.append((" ".join(words[:2]), {key_slot(key) for key in keys}))


@contextlib.asynccontextmanager
async def watching(namespace: str) -> AsyncIterator[SlotWatch]:
    watch = SlotWatch(namespace)
    ready = asyncio.Event()

    async def run() -> None:
        client = Redis.from_url(REDIS_URL, decode_responses=True)
        try:
            async with client.monitor() as monitor:
                ready.set()
                while True:
                    # Each argument apart (next_command joins them with spaces, and scripts hold spaces).
                    line = str(await monitor.connection.read_response())
                    parsed = monitor.monitor_re.match(line.split(" ", 1)[1])
                    if parsed is not None:
                        _, source, command = parsed.groups()
                        words = [word.replace('\\"', '"') for word in monitor.command_re.findall(command)]
                        watch.see(source, words)
        finally:
            await client.aclose()

    task = asyncio.create_task(run())
    try:
        await asyncio.wait_for(ready.wait(), 5)
        yield watch
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_every_script_and_multi_key_command_the_services_send_stays_in_one_slot(
    stack: Stack, http: aiohttp.ClientSession, redis: Redis
) -> None:
    names = Names(stack.namespace, TEST_SHARDS)
    async with watching(stack.namespace) as watch:
        await start_stack(stack)
        gateway = stack.gateway
        chat = f"slots-{uuid.uuid4().hex[:8]}"
        for text in (PRAZO, "quero falar com um atendente", PRAZO):
            status, _ = await post_message(http, gateway, {"user_id": "ana", "conversation_id": chat, "text": text}, 10)
            assert status in (200, 202)
        await Handoffs(redis, names).release(web_id("ana", chat))
        status, _ = await post_message(http, gateway, {"user_id": "ana", "conversation_id": chat, "text": PRAZO}, 10)
        assert status == 200
        async with http.get(stack.monitor.url + "/monitoring/stats") as response:
            assert response.status == 200
    by_kind: dict[str, set[int]] = defaultdict(set)
    for kind, slots in watch.units:
        assert len(slots) == 1, f"{kind} touches keys of {len(slots)} slots"
        by_kind[kind.split(" ")[0]] |= slots
    assert {"EVALSHA", "MGET"} <= set(by_kind), sorted(by_kind)  # the commit's scripts, the handoff reads
