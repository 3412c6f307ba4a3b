"""Web replies pushed to the gateways over Redis pub/sub (services/worker/push.py,
services/gateway/replies.py): a reply reaches the request waiting at the gateway that accepted
its message and the streams of its conversation at any other gateway, and one pushed while a
gateway's subscription was down reaches the request still waiting there once it is up again."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from services.worker.commit import Committer
from shared.messages import ReplyContent, ReplyMessage
from shared.names import Names
from tests.support import PRAZO, TEST_SHARDS, Stack, eventually, new_namespace, post_message, purge_namespace, web_id
from tests.support.commits import commit_of, message
from tests.support.pipeline import read_events, wait_ready
from tests.support.servers import PrivateRedis, have


async def test_a_reply_reaches_the_waiting_request_and_a_stream_at_another_gateway_once(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    accepting = await stack.start("gateway")
    streaming = await stack.start("gateway")
    await stack.start("worker")
    await wait_ready(stack)
    conversation = f"push-{uuid.uuid4().hex[:8]}"
    connected = asyncio.Event()
    # Two events asked for: the stream must show the first reply once, then the second.
    reader = asyncio.create_task(read_events(http, streaming, conversation, 2, connected, user_id="ana"))
    await asyncio.wait_for(connected.wait(), 10)
    answers = []
    for text in (PRAZO, "Vocês aceitam Pix?"):
        status, answer = await post_message(
            http, accepting, {"user_id": "ana", "conversation_id": conversation, "text": text}, wait=10
        )
        assert status == 200, answer
        answers.append(answer)
    events = await reader
    assert [event["message_id"] for event in events] == [answer["message_id"] for answer in answers]
    assert [event["reply"]["text"] for event in events] == [answer["reply"]["text"] for answer in answers]


async def test_the_commit_pushes_the_reply_that_stands_once(redis: Redis) -> None:
    """A fresh reply is pushed by the script call that stores it; another delivery of the message,
    generated again, finds that one stored: the stored one is pushed again (its request may wait
    at another gateway), never the second generation."""
    names = Names(new_namespace(), TEST_SHARDS)
    committer = Committer(redis, names)
    item = message("c-push")
    first = commit_of(item, ReplyContent(text="Cinco dias.", engine="kb", confidence=0.9))
    heard = redis.pubsub(ignore_subscribe_messages=True)
    try:
        await heard.subscribe(names.gateway_push_channel(first.reply.gateway_id))
        (standing,) = await committer.commit_all([first])
        again = commit_of(item, ReplyContent(text="Generated again.", engine="kb", confidence=0.9))
        (second,) = await committer.commit_all([again])
        assert standing == second == first.reply
        pushed = []
        async with asyncio.timeout(10):
            async for event in heard.listen():
                pushed.append(ReplyMessage.from_bytes(event["data"]))
                if len(pushed) == 2:
                    break
        assert pushed == [first.reply, first.reply]
        assert await heard.get_message(timeout=0.2) is None  # nothing more: one push per commit
    finally:
        await heard.aclose()
        await purge_namespace(names.namespace)


@pytest.mark.skipif(not have("redis-server"), reason="needs redis-server for a private Redis")
async def test_a_reply_pushed_while_the_subscription_is_down_reaches_the_waiting_request(
    stack: Stack, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """The gateway's subscription is dropped and cannot be made again (an ACL of the private Redis
    refuses SUBSCRIBE) while the worker pushes the reply to nobody; once it can, the request still
    waiting gets the reply long before its wait would have ended (and read the stored one)."""
    private = await PrivateRedis(tmp_path / "redis").start()
    redis = Redis.from_url(private.url)
    try:
        stack.extra_env["REDIS_URL"] = private.url
        gateway = await stack.start("gateway")
        await wait_ready(stack)
        public_id, conversation = f"m-{uuid.uuid4().hex}", f"c-{uuid.uuid4().hex[:8]}"
        body = {"user_id": "bia", "conversation_id": conversation, "message_id": public_id, "text": PRAZO}
        names = Names(stack.namespace, TEST_SHARDS)
        message_id = web_id("bia", public_id)
        waiting = asyncio.create_task(post_message(http, gateway, body, wait=30))

        async def accepted() -> bool:
            return bool(await redis.exists(names.claim_key(message_id)))

        await eventually(accepted, what="the message accepted, its request waiting")
        await _subscribing(redis, allowed=False)
        await redis.client_kill_filter(_type="pubsub")

        async def unheard() -> bool:
            return not await redis.pubsub_channels(f"{stack.namespace}:push:*")

        await eventually(unheard, what="no gateway subscribed")

        worker = await stack.start("worker")

        async def stored() -> bool:
            return bool(await redis.exists(names.reply_key(message_id)))

        await eventually(stored, what="the reply committed and pushed to nobody")
        assert "not handed back" not in worker.logs()  # pushed (to no listener): the worker is done
        assert not waiting.done()
        await _subscribing(redis, allowed=True)
        # Sooner than the request's wait ends (30 s after it was made): heard, not read at its end.
        async with asyncio.timeout(20):
            status, answer = await waiting
        assert status == 200, answer
        assert answer["message_id"] == public_id
        assert answer["reply"]["sources"] == ["prazo-entrega"]
    finally:
        await redis.aclose()
        private.stop()


async def _subscribing(redis: Redis, *, allowed: bool) -> None:
    """Let the default user (every service's) SUBSCRIBE, or not; its other commands stay allowed."""
    rule = "+subscribe" if allowed else "-subscribe"
    await redis.execute_command("ACL", "SETUSER", "default", rule)  # type: ignore[no-untyped-call]
