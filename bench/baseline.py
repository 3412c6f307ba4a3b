"""The bare round trip the project is measured against: a minimal aiohttp handler that publishes
to RabbitMQ with confirms (persistent, quorum queue, like the project) and waits for a minimal
consumer's reply. Nothing else: no validation, no Redis, no stats. Both processes run on uvloop,
the services' event loop (shared/service.py), so the floor is measured on the same footing.

    python -m bench.baseline server PORT QUEUE
    python -m bench.baseline consumer QUEUE
"""

from __future__ import annotations

import asyncio
import sys
import uuid

import aio_pika
import uvloop
from aio_pika.abc import AbstractIncomingMessage
from aiohttp import web

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


async def serve(port: int, queue_name: str) -> None:
    connection = await aio_pika.connect_robust(AMQP_URL)
    channel = await connection.channel(publisher_confirms=True)
    await channel.declare_queue(queue_name, durable=True, arguments={"x-queue-type": "quorum"})
    replies = await channel.declare_queue(exclusive=True, auto_delete=True)
    waiting: dict[str, asyncio.Future[bytes]] = {}

    async def on_reply(message: AbstractIncomingMessage) -> None:
        future = waiting.pop(message.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(message.body)

    await replies.consume(on_reply, no_ack=True)

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        waiting[correlation_id] = future
        await channel.default_exchange.publish(
            aio_pika.Message(
                body,
                correlation_id=correlation_id,
                reply_to=replies.name,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=queue_name,
        )
        return web.Response(body=await asyncio.wait_for(future, 10), content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/messages", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


async def consume(queue_name: str) -> None:
    connection = await aio_pika.connect_robust(AMQP_URL)
    channel = await connection.channel(publisher_confirms=True)
    await channel.set_qos(prefetch_count=64)
    queue = await channel.declare_queue(queue_name, durable=True, arguments={"x-queue-type": "quorum"})

    async def on_message(message: AbstractIncomingMessage) -> None:
        await channel.default_exchange.publish(
            aio_pika.Message(b'{"reply": "ok"}', correlation_id=message.correlation_id),
            routing_key=message.reply_to or "",
        )
        await message.ack()

    await queue.consume(on_message)
    await asyncio.Event().wait()


if __name__ == "__main__":
    role = sys.argv[1]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        if role == "server":
            runner.run(serve(int(sys.argv[2]), sys.argv[3]))
        else:
            runner.run(consume(sys.argv[2]))
