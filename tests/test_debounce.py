"""DEBOUNCE_MS: a burst of messages in one conversation gets one reply; none is lost.

The worker waits for the rest of a burst before taking its shard's batch, answers the joined text
once with the last message's reply, and commits the others as merged into it: stored, counted,
logged and acked. A request waiting on a merged message gets 200 with the combined reply and
`merged_into`; the conversation's stream shows the one reply.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import orjson
from redis.asyncio import Redis

from shared.names import Names
from tests.support import REDIS_URL, TEST_SHARDS, Stack, eventually, post_message, web_id
from tests.support.pipeline import read_events, wait_ready

BURST = ["oi", "qual o prazo", "de entrega pra curitiba?"]


async def test_a_burst_is_answered_once_and_every_message_is_settled(stack: Stack, http: aiohttp.ClientSession) -> None:
    gateway = await stack.start("gateway")
    await stack.start("worker", DEBOUNCE_MS="1000")
    await wait_ready(stack)
    conversation, other = f"burst-{uuid.uuid4().hex}", f"other-{uuid.uuid4().hex}"
    ids = [f"{conversation}-{i}" for i in range(len(BURST))]

    async def post(conversation_id: str, text: str, message_id: str, wait: float = 0) -> tuple[int, dict[str, Any]]:
        body = {"user_id": "iva", "conversation_id": conversation_id, "text": text, "message_id": message_id}
        return await post_message(http, gateway, body, wait=wait)

    connected = asyncio.Event()
    stream = asyncio.create_task(read_events(http, gateway, conversation, 2, connected, user_id="iva"))
    await asyncio.wait_for(connected.wait(), 10)

    assert (await post(conversation, BURST[0], ids[0]))[0] == 202
    assert (await post(other, "aceita pix?", f"{other}-0"))[0] == 202  # another conversation, same window
    assert (await post(conversation, BURST[1], ids[1]))[0] == 202
    # A client waiting on a message that will be merged (here: the first, asked again with wait).
    waiting = asyncio.create_task(post(conversation, BURST[0], ids[0], wait=10))
    status, last = await post(conversation, BURST[2], ids[2], wait=10)

    # One reply, to the joined text ("de entrega pra curitiba?" alone is asked back on).
    assert status == 200 and "merged_into" not in last, last
    assert last["reply"]["sources"] == ["prazo-entrega"]
    status, first = await waiting
    assert status == 200 and first["duplicate"] is True
    assert first["merged_into"] == ids[2] and first["reply"] == last["reply"]
    status, second = await post(conversation, BURST[1], ids[1])
    assert status == 200 and second["merged_into"] == ids[2]
    status, alone = await post(other, "aceita pix?", f"{other}-0", wait=10)
    assert status == 200 and "merged_into" not in alone and alone["reply"]["sources"] == ["formas-pagamento"]

    # The stream shows the combined reply once; the next message, after the window, is its own.
    status, later = await post(conversation, "aceita pix?", f"{conversation}-later", wait=10)
    assert status == 200 and "merged_into" not in later
    events = await asyncio.wait_for(stream, 10)
    assert [e["message_id"] for e in events] == [ids[2], f"{conversation}-later"]

    # Every message is counted and logged; the burst is one turn in memory.
    names = Names(stack.namespace, TEST_SHARDS)
    redis = Redis.from_url(REDIS_URL, decode_responses=True)
    try:

        async def counted() -> bool:
            return int(await redis.hget(names.stats_total_key, "n") or 0) >= 5

        await eventually(counted, what="the five messages counted")  # with the worker's next flush
        assert await redis.hget(names.stats_total_key, "n") == "5"
        log = [
            orjson.loads(raw)
            for raw in await redis.lrange(names.conversation_log_key(web_id("iva", conversation)), 0, -1)
        ]
        # The log is the operators': it names messages by their ids inside the system.
        internal = [web_id("iva", i) for i in ids]
        assert [(e["message_id"], e.get("merged_into")) for e in log] == [
            (internal[0], internal[2]),
            (internal[1], internal[2]),
            (internal[2], None),
            (web_id("iva", f"{conversation}-later"), None),
        ]
        turns = [orjson.loads(raw) for raw in await redis.lrange(names.memory_key(web_id("iva", conversation)), 0, -1)]
        assert [t["text"] for t in turns if t["role"] == "user"] == ["\n".join(BURST), "aceita pix?"]
    finally:
        await redis.aclose()
