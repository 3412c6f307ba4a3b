"""Replies in parallel across conversations, in order within each (SPEC section 3).

Real gateway and worker processes, RabbitMQ and Redis; the LLM is `FakeLlm` (OpenAI wire format)
with a fixed time per completion, counting the calls it works on at once.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import uuid
from collections import Counter
from typing import Any

import aio_pika
import aiohttp
import pytest

from shared.messages import InboundMessage, ReplyMessage
from shared.names import Names
from tests.support import AMQP_PORT, AMQP_URL, TEST_SHARDS, Stack, eventually, get_json, post_message
from tests.support.fake_llm import FakeLlm
from tests.support.faultproxy import FaultProxy
from tests.support.pipeline import (
    answered,
    assert_each_answered_once_in_order,
    queue_conversations,
    read_events,
    wait_ready,
)


def llm_env(llm: FakeLlm, **overrides: str) -> dict[str, str]:
    return {
        "REPLY_ENGINE": "openai",
        "OPENAI_BASE_URL": llm.url,
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_TIMEOUT_SECONDS": "30",
        "OPENAI_BREAKER_FAILURES": "1000",
        **overrides,
    }


async def ask_all(http: aiohttp.ClientSession, stack: Stack, conversations: int) -> list[dict[str, Any]]:
    async def ask(i: int) -> dict[str, Any]:
        status, body = await post_message(
            http, stack.gateway, {"user_id": f"u{i}", "conversation_id": f"c-{uuid.uuid4().hex}", "text": "oi"}, wait=30
        )
        assert status == 200 and body["status"] == "answered", body
        return body

    return list(await asyncio.gather(*(ask(i) for i in range(conversations))))


async def test_a_hundred_conversations_are_answered_at_once_by_one_worker(
    stack: Stack, llm: FakeLlm, http: aiohttp.ClientSession
) -> None:
    llm.delay_s = 2.0
    stack.extra_env.update(llm_env(llm, WORKER_CONCURRENCY="128"))
    await stack.start("gateway")
    await stack.start("worker")
    await wait_ready(stack)
    started = asyncio.get_running_loop().time()
    await ask_all(http, stack, 100)
    print(f"100 conversations, 2 s model: all answered in {asyncio.get_running_loop().time() - started:.1f} s")
    assert llm.peak_in_flight >= 90


async def test_two_workers_each_generate_worker_concurrency_replies_at_once(
    stack: Stack, llm: FakeLlm, http: aiohttp.ClientSession
) -> None:
    llm.delay_s = 2.0
    stack.extra_env.update(llm_env(llm, WORKER_CONCURRENCY="40"))
    await stack.start("gateway")
    for _ in range(2):
        await stack.start("worker")
    await wait_ready(stack)

    async def split() -> bool:
        owned = [(await get_json(http, w.url + "/monitoring/health"))[1] for w in stack.of("worker")]
        return all(len(h["checks"]["consumer"]["shards"]) == TEST_SHARDS // 2 for h in owned)

    await eventually(split, what="the shards split between the two workers")
    await ask_all(http, stack, 160)
    # Each worker at its limit (40) while its conversations wait: about 80 in flight; never above.
    assert 70 <= llm.peak_in_flight <= 80


async def test_one_conversation_is_answered_in_order_by_two_workers(
    stack: Stack, llm: FakeLlm, http: aiohttp.ClientSession
) -> None:
    llm.delay_s = 0.5
    stack.extra_env.update(llm_env(llm))
    await stack.start("gateway")
    for _ in range(2):
        await stack.start("worker")
    await wait_ready(stack)
    conversation = f"order-{uuid.uuid4().hex}"
    connected = asyncio.Event()
    reader = asyncio.create_task(
        read_events(http, stack.gateway, conversation, 10, connected, timeout=60, user_id="ana")
    )
    await asyncio.wait_for(connected.wait(), 10)
    sent = []
    for i in range(10):
        status, body = await post_message(
            http, stack.gateway, {"user_id": "ana", "conversation_id": conversation, "text": f"pergunta {i}"}
        )
        assert status == 202
        sent.append(body["message_id"])
    events = await reader
    assert [event["message_id"] for event in events] == sent
    # One at a time: each call saw the previous turn in the memory.
    asked = [turn["content"] for turn in llm.requests[-1]["body"]["messages"] if turn["role"] == "user"]
    assert asked[-1] == "pergunta 9" and "pergunta 8" in asked


@pytest.mark.parametrize("harm", ["sigkill", "connection-drop"])
async def test_conversations_resume_in_order_after_the_worker_loses_its_work(
    stack: Stack, llm: FakeLlm, http: aiohttp.ClientSession, harm: str
) -> None:
    """50 messages of 20 conversations in the worker's hands: it is killed, or its broker
    connection is cut (through a proxy; the shared broker stays up). Every message is answered
    once, each conversation in order, and no stored reply is generated again."""
    llm.delay_s = 0.2
    stack.extra_env.update(llm_env(llm, WORKER_CONCURRENCY="8"))
    await stack.start("gateway")
    await stack.start("monitor")
    sent, readers = await queue_conversations(http, stack, 20, 50)
    proxy = FaultProxy(AMQP_PORT)
    await proxy.start()
    worker = await stack.start("worker", AMQP_URL=f"amqp://guest:guest@127.0.0.1:{proxy.port}/")

    async def some_answered() -> bool:
        return await answered(http, stack) >= 5

    await eventually(some_answered, what="the first replies")
    if harm == "sigkill":
        worker.kill(signal.SIGKILL)
        await stack.start("worker")
    else:
        await proxy.close()
        await proxy.start()
    try:
        # A killed worker takes the counts it had not flushed with it: at most one reply a lane.
        uncounted = 8 if harm == "sigkill" else 0
        await assert_each_answered_once_in_order(http, stack, sent, readers, uncounted_at_most=uncounted)
    finally:
        await proxy.close()
    calls = Counter(request["body"]["messages"][-1]["content"] for request in llm.requests)
    assert set(calls) == {f"msg {i} of {c}" for c, ids in sent.items() for i in range(len(ids))}
    # Only the calls in flight when the work was lost (WORKER_CONCURRENCY) are made again: they
    # had no reply committed yet. A stored reply is handed back, never generated twice.
    assert sum(count - 1 for count in calls.values()) <= 8


async def test_the_failing_conversation_does_not_delay_the_others(
    stack: Stack, llm: FakeLlm, http: aiohttp.ClientSession
) -> None:
    """The model answers 500 to one conversation's message every time: the call is retried within
    its budget (then the knowledge base answers), holding only its own conversation; the others,
    in the same shards, are answered meanwhile."""
    llm.delay_s, llm.failing_text = 0.2, "vai falhar"
    stack.extra_env.update(llm_env(llm, OPENAI_TIMEOUT_SECONDS="8", OPENAI_MAX_RETRIES="5"))
    await stack.start("gateway")
    await stack.start("worker")
    await wait_ready(stack)
    failing = asyncio.create_task(
        post_message(http, stack.gateway, {"user_id": "bia", "text": "isto vai falhar"}, wait=30)
    )

    async def failing_started() -> bool:
        return len(llm.requests) >= 1

    await eventually(failing_started, what="the failing call")
    others = await asyncio.gather(
        *(post_message(http, stack.gateway, {"user_id": f"o{i}", "text": "oi"}, wait=10) for i in range(8))
    )
    assert all(status == 200 and body["reply"]["engine"] == "openai" for status, body in others), others
    assert not failing.done(), "the failing message was expected to be still retrying"
    status, body = await failing
    assert status == 200 and body["reply"]["engine"] == "kb-fallback"


async def rabbitmqctl(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "rabbitmqctl", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, args
    return out.decode()


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="rabbitmqctl is not installed here")
async def test_a_refused_reply_publish_keeps_the_message_until_the_reply_is_out(stack: Stack) -> None:
    """The broker nacks the worker's publish of a channel's reply while the connection stays up (a
    policy caps this namespace's delivery queues at nothing, and one message already waits in
    Telegram's; web replies are pushed over Redis, not published): the message is neither acked
    without its reply nor left stalled; the reply goes out as soon as the broker takes it,
    generated once. No gateway runs: nothing drains the delivery queue meanwhile."""
    names = Names(stack.namespace, TEST_SHARDS)
    worker = await stack.start("worker")
    await wait_ready(stack)
    chat_id = 700_000_000 + uuid.uuid4().int % 100_000_000
    conversation = f"telegram:{chat_id}"
    message = InboundMessage(
        f"telegram:{uuid.uuid4().hex}", conversation, str(chat_id), "Qual o prazo?", "telegram", {"chat_id": chat_id}
    )
    policy = f"refuse-{stack.namespace}"
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        delivery_queue = names.delivery_queue("telegram")
        # Over the cap already: a quorum queue takes the publish that reaches its limit, and refuses the next.
        await channel.default_exchange.publish(aio_pika.Message(b"{}", message_id="filler"), delivery_queue)
        await rabbitmqctl(
            "set_policy",
            "--apply-to",
            "queues",
            policy,
            rf"^{stack.namespace}\.delivery\.",
            '{"max-length": 0, "overflow": "reject-publish"}',
        )
        try:
            inbound = await channel.get_exchange(names.inbound_exchange)
            await inbound.publish(
                aio_pika.Message(message.to_bytes(), message_id=message.message_id),
                str(names.shard_of(conversation)),
            )

            async def refused_twice() -> bool:
                return worker.logs().count("not handed back") >= 2

            await eventually(refused_twice, what="the reply publish to be refused")
            shard_queue = names.shard_queue(names.shard_of(conversation))

            async def held_unacked() -> bool:
                # The shard queue still has it out, unacked (polled: under load the broker may
                # leave a queue out of one listing).
                columns = ("name", "messages_unacknowledged")
                listing = await rabbitmqctl("list_queues", "-q", "--no-table-headers", *columns)
                return any(line.split() == [shard_queue, "1"] for line in listing.splitlines())

            await eventually(held_unacked, interval=0.5, what="the message held unacked")
        finally:
            await rabbitmqctl("clear_policy", policy)
        queue = await channel.declare_queue(delivery_queue, passive=True)

        async def queued_reply() -> ReplyMessage | None:
            got = await queue.get(no_ack=True, fail=False)
            if got is not None and got.message_id == message.message_id:
                return ReplyMessage.from_bytes(got.body)
            return None

        reply = await eventually(queued_reply, what="the reply queued for delivery once the broker takes it")
    assert reply.reply.sources == ("prazo-entrega",)
    assert worker.logs().count('"message processed"') == 1
