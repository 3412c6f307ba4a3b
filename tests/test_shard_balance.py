"""Workers share the shards evenly, lend shards with a backlog to an idle worker (or exchange
them for some of its own), and hand them over safely (services/worker/ownership.py).

Real gateway, worker and monitor processes on the shared RabbitMQ and Redis, with the product's
default shard count (so the namespace's queues are purged for that count afterwards).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from shared.names import Names
from shared.settings import DEFAULT_SHARDS
from tests.support import Service, Stack, eventually, get_json, new_namespace, post_message, purge_namespace, web_id
from tests.support.fake_llm import FakeLlm
from tests.support.pipeline import answered, assert_each_answered_once_in_order, queue_conversations, read_events

pytestmark = pytest.mark.integration

TOTAL = 300


@pytest.fixture
async def wide_stack(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    stack = Stack(new_namespace(), tmp_path, extra_env={"ATENDIMENTO_SHARDS": str(DEFAULT_SHARDS)})
    try:
        yield stack
    finally:
        stack.stop_all()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(stack.logs())
        await purge_namespace(stack.namespace, shards=DEFAULT_SHARDS)


async def owned(http: aiohttp.ClientSession, workers: list[Service]) -> list[list[int]]:
    """The shards each worker says it consumes (its health check)."""
    return [(await get_json(http, w.url + "/monitoring/health"))[1]["checks"]["consumer"]["shards"] for w in workers]


async def wait_even(http: aiohttp.ClientSession, workers: list[Service]) -> float:
    """Poll until the workers own every shard once and evenly; returns how long that took."""
    started = time.monotonic()

    async def even() -> bool:
        shards = await owned(http, workers)
        counts = [len(s) for s in shards]
        every_once = sorted(shard for s in shards for shard in s) == list(range(DEFAULT_SHARDS))
        return every_once and max(counts) == -(-DEFAULT_SHARDS // len(workers)) and min(counts) > 0

    await eventually(even, timeout=30, what=f"the shards split evenly over {len(workers)} workers")
    return time.monotonic() - started


def llm_env(llm: FakeLlm) -> dict[str, str]:
    """Workers answering with the LLM stand-in, 4 replies at once each: a slow reply keeps a shard busy."""
    return {
        "REPLY_ENGINE": "openai",
        "OPENAI_BASE_URL": llm.url,
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_TIMEOUT_SECONDS": "30",
        "WORKER_CONCURRENCY": "4",
    }


async def two_llm_workers(stack: Stack, llm: FakeLlm, http: aiohttp.ClientSession) -> tuple[Service, Service]:
    """Gateway, monitor and two such workers, the shards split evenly between them."""
    stack.extra_env.update(llm_env(llm))
    await stack.start("gateway")
    await stack.start("monitor")
    first, second = [await stack.start("worker") for _ in range(2)]
    await wait_even(http, [first, second])
    return first, second


def assert_generated_once(llm: FakeLlm, total: int) -> None:
    """The stand-in was asked for each of `total` messages once: no reply was generated twice."""
    calls = Counter(request["body"]["messages"][-1]["content"] for request in llm.requests)
    assert len(calls) == total and set(calls.values()) == {1}


def conversations_on(names: Names, shards: set[int], count: int) -> list[str]:
    """`count` conversation ids (of user "eva") that hash to one of `shards`."""
    found: list[str] = []
    while len(found) < count:
        candidate = f"on-{uuid.uuid4().hex[:10]}"
        if names.shard_of(web_id("eva", candidate)) in shards:
            found.append(candidate)
    return found


async def test_two_three_and_five_workers_share_the_default_shards_evenly(
    wide_stack: Stack, http: aiohttp.ClientSession
) -> None:
    wide_stack.extra_env["KB_EMBEDDINGS"] = "off"  # five workers: the words-only engine is enough
    for count in (2, 3, 5):
        while len(wide_stack.of("worker")) < count:
            await wide_stack.start("worker")
        took = await wait_even(http, wide_stack.of("worker"))
        counts = [len(s) for s in await owned(http, wide_stack.of("worker"))]
        print(f"{count} workers: shards {counts}, even {took:.1f} s after the last one was live")
        assert max(counts) - min(counts) <= 1


async def test_a_worker_joining_and_one_leaving_keep_order_and_answer_once(
    wide_stack: Stack, llm: FakeLlm, http: aiohttp.ClientSession
) -> None:
    """300 messages of 20 conversations: a second worker joins while the first works through
    them, then the first stops (SIGTERM) and a third joins. Shards move both times; every
    message is answered once, each conversation in order, and no reply is generated twice."""
    llm.delay_s = 0.25
    wide_stack.extra_env.update(llm_env(llm))
    await wide_stack.start("gateway")
    await wide_stack.start("monitor")
    sent, readers = await queue_conversations(http, wide_stack, 20, TOTAL)
    first = await wide_stack.start("worker")

    async def answered_at_least(count: int) -> bool:
        return await answered(http, wide_stack) >= count

    await eventually(lambda: answered_at_least(20), what="the first replies")
    await wide_stack.start("worker")
    joined = await wait_even(http, wide_stack.of("worker"))
    before_leave = await answered(http, wide_stack)
    assert before_leave < TOTAL, "everything was answered before the second worker took its shards"
    await asyncio.to_thread(first.stop)
    assert await answered(http, wide_stack) < TOTAL, "everything was answered before the first worker left"
    staying = [w for w in wide_stack.of("worker") if w is not first]
    left = await wait_even(http, staying)
    await wide_stack.start("worker")
    rejoined = await wait_even(http, [w for w in wide_stack.of("worker") if w is not first])
    print(f"shards even again: {joined:.1f} s after a join, {left:.1f} s after a leave, {rejoined:.1f} s after a join")

    await assert_each_answered_once_in_order(http, wide_stack, sent, readers)
    # Shards are handed over between units: what one worker generated, no other generates again.
    assert_generated_once(llm, TOTAL)


async def test_an_idle_worker_takes_over_the_backlog_of_a_busy_one_in_order_and_once(
    wide_stack: Stack, llm: FakeLlm, http: aiohttp.ClientSession
) -> None:
    """Every conversation hashes to the first worker's shards (48 messages of 12 conversations, 4
    slots each): it lends shards with a backlog to the idle second worker, which answers part of
    them; every message is answered once, each conversation in order, no reply is generated
    twice, and once the backlog is gone the shards are split evenly again."""
    llm.delay_s = 0.3
    busy, idle = await two_llm_workers(wide_stack, llm, http)
    (busy_shards,) = await owned(http, [busy])
    names = Names(wide_stack.namespace, DEFAULT_SHARDS)
    skewed = conversations_on(names, set(busy_shards), 12)
    sent, readers = await queue_conversations(http, wide_stack, len(skewed), 48, names=skewed)

    await assert_each_answered_once_in_order(http, wide_stack, sent, readers)
    assert_generated_once(llm, 48)
    by_idle = idle.logs().count('"message processed"')
    print(f"the idle worker answered {by_idle} of 48")
    assert "lending shards" in busy.logs()
    assert 0 < by_idle < 48
    assert busy.logs().count('"message processed"') + by_idle == 48
    await wait_even(http, [busy, idle])  # the lent shards went back


async def test_shards_exchanged_to_even_out_a_backlog_exactly_keep_order_and_answer_once(
    wide_stack: Stack, llm: FakeLlm, http: aiohttp.ClientSession
) -> None:
    """4 slots each (and 4 deliveries in hand per shard). The busy worker generates one reply of
    its shard p, one of q and two of t; then 3 more of p and 3 of q wait: 2 more than its next
    round. The other worker generates 4 replies of its shards and has 1 more waiting. No shard of
    the busy one holds exactly 2 waiting, so it lends one of p and q and takes the other's shard
    with 1 waiting in exchange (3 - 1 = 2), a move written with the other worker as giver. Every
    message is answered once, each conversation in order, no reply is generated twice, and the
    shards go back to the even split."""
    llm.delay_s = 2.5
    busy, other = await two_llm_workers(wide_stack, llm, http)
    busy_shards, other_shards = await owned(http, [busy, other])
    names = Names(wide_stack.namespace, DEFAULT_SHARDS)
    (p, q, t), (r, r2) = busy_shards[:3], other_shards[:2]
    first = [*conversations_on(names, {p}, 1), *conversations_on(names, {q}, 1), *conversations_on(names, {t}, 2)]
    rest = [
        *conversations_on(names, {p}, 3),
        *conversations_on(names, {q}, 3),
        *conversations_on(names, {r}, 4),
        *conversations_on(names, {r2}, 1),
    ]
    readers = []
    for conversation in first + rest:  # every reply stream open before anything is sent
        connected = asyncio.Event()
        reader = read_events(http, wide_stack.gateway, conversation, 1, connected, timeout=90, user_id="eva")
        readers.append(asyncio.create_task(reader))
        await asyncio.wait_for(connected.wait(), 10)

    async def send(conversation: str) -> str:
        body = {"user_id": "eva", "conversation_id": conversation, "text": f"msg 0 of {conversation}"}
        status, answer = await post_message(http, wide_stack.gateway, body)
        assert status == 202
        return str(answer["message_id"])

    sent = {conversation: [await send(conversation)] for conversation in first}

    async def busy_full() -> bool:
        return llm.in_flight == 4

    await eventually(busy_full, what="the busy worker's slots all generating")
    # At once, so neither worker weighs the other's backlog half-landed.
    ids = await asyncio.gather(*(send(conversation) for conversation in rest))
    sent |= {conversation: [message_id] for conversation, message_id in zip(rest, ids, strict=True)}

    await assert_each_answered_once_in_order(http, wide_stack, sent, readers)
    assert_generated_once(llm, len(sent))
    lends = [line for line in busy.logs().splitlines() if "lending shards" in line]
    assert len(lends) == 1 and (f"[{p}]" in lends[0] or f"[{q}]" in lends[0]), lends
    assert f"taking [{r}]" in lends[0] or f"taking [{r2}]" in lends[0], lends
    by_other = other.logs().count('"message processed"')
    print(f"the other worker answered {by_other} of {len(sent)}")
    assert by_other == 4 + 3  # its 4 in hand, and the 3 of the shard lent; its waiting 1 went over
    await wait_even(http, [busy, other])  # the exchanged shards went back
