"""`make soak`: messages keep flowing while workers, then gateways, are SIGKILLed at random and
Redis is restarted once; then every accepted message must have exactly one reply, committed in
its conversation's order.

Runs 2 gateways and 2 workers on the shared RabbitMQ (a namespace of its own, purged after) and a
PRIVATE redis-server (append-only file, fsync always, so a restart keeps what it acknowledged).
Clients post each conversation's messages one after another, retrying a message (same id, any live
gateway) until it is accepted. Prints messages, kills of each kind, and lost / doubled / reordered,
which must all be 0:
  lost       accepted and never answered (no stored reply once the system is idle again)
  doubled    committed twice (the conversation log holds it twice, or the stats counted it twice)
  reordered  committed before a message its conversation sent earlier
Not part of `make test`: it takes minutes. `SOAK_ARGS="--messages 3000"` for a longer run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from redis.asyncio import Redis

from bench.workdir import working_dir
from shared.names import Names
from tests.support import Service, Stack, eventually, purge_namespace, web_id
from tests.support.load import verdict
from tests.support.servers import PrivateRedis

QUESTIONS = ["Qual o prazo de entrega?", "Vocês aceitam Pix?", "Como rastreio meu pedido?", "Posso parcelar?"]
SHARDS = 8
GATEWAYS = 2
WORKERS = 2


@dataclass
class Tally:
    sent: dict[str, list[str]] = field(default_factory=dict)  # conversation -> message ids in order
    kills: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    redis_restarts: int = 0


async def post_until_accepted(http: aiohttp.ClientSession, stack: Stack, body: dict[str, str], tally: Tally) -> None:
    while True:
        gateways = stack.of("gateway")
        if gateways:
            gateway = random.choice(gateways)
            try:
                async with http.post(f"{gateway.url}/v1/messages", json=body) as response:
                    if response.status in (200, 202):
                        return
            except (aiohttp.ClientError, OSError):
                pass
        tally.retries += 1
        await asyncio.sleep(0.2)


async def conversation(
    http: aiohttp.ClientSession, stack: Stack, name: str, count: int, pace_s: float, tally: Tally
) -> None:
    ids = tally.sent.setdefault(name, [])
    for i in range(count):
        await asyncio.sleep(random.uniform(0, 2 * pace_s))  # spread over the run, so kills land mid-flow
        message_id = f"{name}-{i:05d}"
        body = {"user_id": name, "conversation_id": name, "message_id": message_id, "text": QUESTIONS[i % 4]}
        await post_until_accepted(http, stack, body, tally)
        ids.append(web_id(name, message_id))  # the id inside the system (Redis keys, logs)


async def restart(stack: Stack, service: Service) -> None:
    stack.services.remove(service)
    await stack.start(service.name)


async def chaos(
    stack: Stack, redis_server: PrivateRedis, tally: Tally, done: asyncio.Event, every_s: float, half_s: float
) -> None:
    """Workers first, then gateways, one SIGKILL at a time, each replaced at once; Redis restarted
    once, half-way."""
    phase_started = time.monotonic()
    kind = "worker"
    while not done.is_set():
        try:
            await asyncio.wait_for(done.wait(), random.uniform(0.5, 1.5) * every_s)
            return
        except TimeoutError:
            pass
        if kind == "worker" and time.monotonic() - phase_started > half_s:
            kind = "gateway"
            tally.redis_restarts += 1
            await redis_server.restart()
        victim = random.choice(stack.of(kind))
        victim.kill(signal.SIGKILL)
        assert victim.process is not None
        victim.process.wait()
        tally.kills[kind] += 1
        await restart(stack, victim)


async def check(redis: Redis, names: Names, tally: Tally, timeout_s: float) -> tuple[int, int, int]:
    ids = [message_id for ids in tally.sent.values() for message_id in ids]
    lost, doubled, reordered = await verdict(redis, names, tally.sent, timeout_s)

    async def counted_all() -> bool:
        return int(await redis.hget(names.stats_total_key, "n") or 0) >= len(ids) - lost

    # Statistics land with each process's next flush (a SIGKILLed one's last second never does).
    with contextlib.suppress(AssertionError):
        await eventually(counted_all, timeout=10, interval=0.2, what="the statistics flushed")
    counted = int(await redis.hget(names.stats_total_key, "n") or 0)
    doubled += max(0, counted - (len(ids) - lost))
    return lost, doubled, reordered


async def soak(messages: int, conversations: int, seconds: float, every_s: float) -> int:
    with working_dir("soak") as workdir:
        failed = await soak_in(workdir.path, messages, conversations, seconds, every_s)
        if failed:
            workdir.keep()
        return failed


async def soak_in(workdir: Path, messages: int, conversations: int, seconds: float, every_s: float) -> int:
    namespace = f"soak{uuid.uuid4().hex[:8]}"
    redis_server = await PrivateRedis(workdir / "redis", persistent=True).start()
    stack = Stack(
        namespace,
        workdir,
        extra_env={"REDIS_URL": redis_server.url, "ATENDIMENTO_SHARDS": str(SHARDS), "LOG_LEVEL": "WARNING"},
    )
    names = Names(namespace, SHARDS)
    tally = Tally()
    started = time.monotonic()
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        for _ in range(GATEWAYS):
            await stack.start("gateway")
        for _ in range(WORKERS):
            await stack.start("worker")
        done = asyncio.Event()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
            killer = asyncio.create_task(chaos(stack, redis_server, tally, done, every_s, seconds / 2))
            share, extra = divmod(messages, conversations)
            per_conversation = [share + (i < extra) for i in range(conversations)]
            pace_s = seconds * conversations / messages
            await asyncio.gather(
                *(
                    conversation(http, stack, f"c{i:03d}-{namespace}", n, pace_s, tally)
                    for i, n in enumerate(per_conversation)
                )
            )
            done.set()
            await killer
        lost, doubled, reordered = await check(redis, names, tally, timeout_s=120)
        print(
            f"soak: {sum(map(len, tally.sent.values()))} messages in {conversations} conversations, "
            f"{time.monotonic() - started:.0f}s; killed {tally.kills['worker']} workers and "
            f"{tally.kills['gateway']} gateways (SIGKILL), Redis restarted {tally.redis_restarts}x; "
            f"{tally.retries} client retries"
        )
        print(f"lost {lost}  doubled {doubled}  reordered {reordered}")
        return 0 if lost == doubled == reordered == 0 else 1
    finally:
        await redis.aclose()
        stack.stop_all()
        redis_server.stop()
        await purge_namespace(namespace, SHARDS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1500)
    parser.add_argument("--conversations", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the messages are spread over")
    parser.add_argument("--kill-every", type=float, default=3.0, help="mean seconds between two kills")
    args = parser.parse_args()
    sys.exit(asyncio.run(soak(args.messages, args.conversations, args.seconds, args.kill_every)))


if __name__ == "__main__":
    main()
