"""`python -m bench.outbound`: proactive-message throughput, `POST /v1/outbound` to the channel's API.

One gateway (a process of its own, on the shared RabbitMQ and Redis, a namespace of its own purged
after) with WhatsApp configured against a local stand-in of the Graph API (tests/support), which
answers at once. C concurrent clients post N WhatsApp templates, each to a customer of its own (the
per-recipient pacing never waits). Prints two rates: accepted (202 answers per second at the API)
and delivered (messages the stand-in received per second, from the first POST to the last arrival),
and the gateway's CPU time per message. The clients and the stand-in share this process; the
gateway has its own.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from pathlib import Path

import aiohttp
import psutil

from bench.workdir import working_dir
from tests.support import Stack, eventually, get_json, new_namespace, purge_namespace
from tests.support.channel_fakes import PHONE_NUMBER_ID, WHATSAPP_ENV, FakeChannelApi


async def _clients(url: str, messages: int, concurrency: int) -> tuple[float, int]:
    """Post every message; the seconds it took and how many were refused."""
    numbers = iter(range(messages))
    refused = 0
    template = {"name": "order_shipped", "language": "pt_BR"}

    async def client(http: aiohttp.ClientSession) -> None:
        nonlocal refused
        for n in numbers:
            body = {"channel": "whatsapp", "to": f"55119{n:08d}", "template": template, "message_id": uuid.uuid4().hex}
            async with http.post(url, json=body) as response:
                refused += response.status != 202
                await response.read()

    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    return time.perf_counter() - started, refused


async def run(messages: int, concurrency: int) -> None:
    with working_dir("bench-outbound") as workdir:
        await measure(workdir.path, messages, concurrency)


async def measure(workdir: Path, messages: int, concurrency: int) -> None:
    api = await FakeChannelApi().start()
    stack = Stack(new_namespace(), workdir)
    try:
        gateway = await stack.start("gateway", **WHATSAPP_ENV, **api.env(), WHATSAPP_PHONE_NUMBER_ID=PHONE_NUMBER_ID)
        async with aiohttp.ClientSession() as http:

            async def ready() -> bool:
                status, _ = await get_json(http, gateway.url + "/monitoring/health")
                return status == 200

            await eventually(ready, timeout=60, what="the gateway ready")
        assert gateway.process is not None
        cpu = psutil.Process(gateway.process.pid)
        cpu_before = sum(cpu.cpu_times()[:2])
        started = time.perf_counter()
        accept_s, refused = await _clients(f"{gateway.url}/v1/outbound", messages, concurrency)

        async def all_arrived() -> bool:
            return len(api.delivered) >= messages - refused

        await eventually(all_arrived, timeout=600, interval=0.01, what="every message at the stand-in")
        deliver_s = time.perf_counter() - started
        cpu_ms = (sum(cpu.cpu_times()[:2]) - cpu_before) * 1000 / messages
        print(f"{messages} proactive messages, {concurrency} concurrent clients, {refused} refused")
        print(f"accepted  {messages / accept_s:8.1f} msg/s  (202 answers, {accept_s:.2f} s)")
        print(f"delivered {len(api.delivered) / deliver_s:8.1f} msg/s  (at the Graph API stand-in, {deliver_s:.2f} s)")
        print(f"gateway CPU {cpu_ms:.2f} ms per message (API, queueing and delivery)")
    finally:
        stack.stop_all()
        await purge_namespace(stack.namespace)
        await api.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    asyncio.run(run(args.messages, args.concurrency))


if __name__ == "__main__":
    main()
