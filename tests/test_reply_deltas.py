"""The reply's text while it is generated (services/worker/streaming.py): the newest text wins."""

from __future__ import annotations

import asyncio

from services.worker.streaming import DeltaStream


async def test_while_one_delta_is_published_only_the_newest_text_waits() -> None:
    sent: list[str] = []
    release = asyncio.Event()

    async def send(text: str) -> None:
        sent.append(text)
        await release.wait()  # the broker's confirm, slow under load

    stream = DeltaStream(send)
    for text in ("Ent", "Entregamos", "Entregamos em", "Entregamos em até"):
        await stream(text)  # never waits for the broker
        await asyncio.sleep(0)  # one turn of the loop: the first send starts
    assert sent == ["Ent"]
    release.set()
    await stream.finished()
    assert sent == ["Ent", "Entregamos em até"]


async def test_an_idle_broker_gets_every_delta_and_finished_waits_for_the_last() -> None:
    sent: list[str] = []

    async def send(text: str) -> None:
        await asyncio.sleep(0)
        sent.append(text)

    stream = DeltaStream(send)
    for text in ("a", "a b", "a b c"):
        await stream(text)
        await stream.finished()  # the broker was quick: the delta is out before the next text
    assert sent == ["a", "a b", "a b c"]
