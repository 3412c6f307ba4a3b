"""Conversations under load while a server fails, and the verdict afterwards (tests/test_ha.py).

Clients post each conversation's messages one after another and retry a message that was not
accepted (a 503, a refused connection) with the same `message_id`, on any live gateway, as a
channel would. The verdict reads what the workers committed:
  lost       accepted and never answered (no stored reply once the system is idle again)
  doubled    committed twice (the conversation log holds it twice, or the stats counted it twice)
  reordered  committed before a message its conversation sent earlier
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import orjson
from redis.asyncio import Redis

from shared.names import Names
from tests.support import PRAZO, Stack, eventually, web_id

QUESTIONS = ["Qual o prazo de entrega?", "Vocês aceitam Pix?", "Como rastreio meu pedido?", "Posso parcelar?"]


@dataclass
class Load:
    stack: Stack
    conversations: int = 20
    messages: int = 10
    pace_s: float = 0.6  # mean pause between two messages of one conversation
    prefix: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    sent: dict[str, list[str]] = field(default_factory=dict)  # conversation -> accepted ids, in order
    retries: int = 0

    @property
    def accepted(self) -> int:
        return sum(map(len, self.sent.values()))

    async def run(self, http: aiohttp.ClientSession) -> None:
        await asyncio.gather(*(self._conversation(http, f"{self.prefix}-c{i:02d}") for i in range(self.conversations)))

    async def _conversation(self, http: aiohttp.ClientSession, name: str) -> None:
        ids = self.sent.setdefault(name, [])
        for i in range(self.messages):
            await asyncio.sleep(random.uniform(0, 2 * self.pace_s))  # spread, so the fault lands mid-flow
            message_id = f"{name}-{i:03d}"
            body = {"user_id": name, "conversation_id": name, "message_id": message_id, "text": QUESTIONS[i % 4]}
            while await post(http, self.stack, body) is None:
                self.retries += 1
                await asyncio.sleep(0.2)
            ids.append(web_id(name, message_id))

    async def verdict(self, redis: Redis, names: Names, timeout_s: float) -> tuple[int, int, int]:
        """(lost, doubled, reordered) once every accepted message is answered or the time is up."""
        return await verdict(redis, names, self.sent, timeout_s)


async def verdict(redis: Redis, names: Names, sent_by: dict[str, list[str]], timeout_s: float) -> tuple[int, int, int]:
    """(lost, doubled, reordered) of the web conversations `sent_by` names (each its accepted ids,
    in order), once every one is answered or the time is up; what is still unanswered is lost."""
    ids = [message_id for ids in sent_by.values() for message_id in ids]

    async def answered() -> bool:
        return all(await redis.mget([names.reply_key(message_id) for message_id in ids]))

    with contextlib.suppress(AssertionError):  # what is still unanswered is counted as lost below
        await eventually(answered, timeout=timeout_s, interval=0.5, what="every accepted message answered")
    stored = await redis.mget([names.reply_key(message_id) for message_id in ids])
    lost = sum(1 for value in stored if not value)
    doubled = reordered = 0
    for name, sent in sent_by.items():
        entries = await redis.lrange(names.conversation_log_key(web_id(name, name)), 0, -1)
        logged = [orjson.loads(entry)["message_id"] for entry in entries]
        doubled += sum(count - 1 for count in Counter(logged).values())
        position = {message_id: i for i, message_id in enumerate(sent)}
        order = [position[message_id] for message_id in dict.fromkeys(logged) if message_id in position]
        reordered += sum(1 for before, after in itertools.pairwise(order) if after < before)
    return lost, doubled, reordered


async def post(
    http: aiohttp.ClientSession, stack: Stack, body: dict[str, str], wait: float = 0
) -> dict[str, object] | None:
    """The gateway's answer when it accepted the message (200/202), None when it did not."""
    gateways = stack.of("gateway")
    if not gateways:
        return None
    gateway = random.choice(gateways)
    try:
        async with http.post(f"{gateway.url}/v1/messages", params={"wait": str(wait)}, json=body) as response:
            if response.status in (200, 202):
                return dict(await response.json())
    except (aiohttp.ClientError, OSError, TimeoutError):
        pass
    return None


async def seconds_to_answer_again(http: aiohttp.ClientSession, stack: Stack, since: float, limit_s: float) -> float:
    """Seconds from `since` (a monotonic time) until a new message is answered; `limit_s` plus a
    margin at most. One probe message, posted again and again with its id (a repeat answers as the
    original did: 200 with the reply once there is one), so a reply that went to a gateway's waiter
    queue while that was being re-made still counts when it is stored."""
    probe = f"probe-{uuid.uuid4().hex[:8]}"
    body = {"user_id": probe, "conversation_id": probe, "message_id": uuid.uuid4().hex, "text": PRAZO}
    deadline = since + limit_s + 30
    while time.monotonic() < deadline:
        answer = await post(http, stack, body, wait=1)
        if answer is not None and answer.get("status") == "answered":
            return time.monotonic() - since
        await asyncio.sleep(0.1)
    return float("inf")
