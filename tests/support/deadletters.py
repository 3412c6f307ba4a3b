"""The admin area's dead letters, as tests reach them: the admin token the monitor is started with,
bytes put straight onto a queue, the letters listed, and a replay or discard posted."""

from __future__ import annotations

from typing import Any

import aio_pika
import aiohttp

from tests.support import AMQP_URL

ADMIN_TOKEN = "poison-admin-token-0123456789"


def bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def publish_to_queue(queue: str, body: bytes, **properties: Any) -> None:
    """Bytes straight onto a queue through the default exchange, as anything with broker access can."""
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        await channel.default_exchange.publish(aio_pika.Message(body, **properties), routing_key=queue)
    finally:
        await connection.close()


async def dead_letters(http: aiohttp.ClientSession, monitor: str, count: int) -> list[dict[str, Any]] | None:
    """The dead letters the admin lists, once there are `count` of them."""
    async with http.get(monitor + "/admin/api/overview", headers=bearer()) as response:
        body = await response.json()
    letters = body["dead_letters"] or []
    return letters if len(letters) == count else None


async def post_letter(http: aiohttp.ClientSession, url: str, letter_id: str) -> tuple[int, dict[str, Any]]:
    """A replay or discard of one dead letter: its status and body."""
    async with http.post(url, json={"message_id": letter_id}, headers=bearer()) as response:
        return response.status, await response.json()
