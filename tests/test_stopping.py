"""A stop with nothing left to do ends at once (shared/service.py): the grace period
(SHUTDOWN_GRACE_SECONDS) is for work in hand, not for a stop that lost its way. A rolling update
waits on every process it stops."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

from shared.service import supervised
from tests.support import ROOT, Service, Stack
from tests.support.servers import wait_closed

# Far under the grace (20 s by default) and the 23 s after which a wedged stop exits anyway.
PROMPT_STOP_S = 5.0

# What redis-py and aiormq do around each command: `asyncio.wait_for`, looked up at the call. The
# task is cancelled in the instant the operation completes, before wait_for's task runs again.
CANCEL_AS_IT_COMPLETES = """
import asyncio
from shared.service import keep_cancellations

async def main() -> None:
    operation = asyncio.get_running_loop().create_future()
    carried_on = []

    async def loop_body() -> None:
        await asyncio.wait_for(operation, 5)
        carried_on.append(True)

    task = asyncio.create_task(loop_body())
    await asyncio.sleep(0)  # the task waits for the operation
    operation.set_result(None)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        print("cancelled")
    else:
        print("carried on" if carried_on else "returned")

keep_cancellations()
asyncio.run(main())
"""


def test_a_cancellation_that_lands_as_a_wait_for_completes_is_not_lost() -> None:
    # In a process of its own: what `run_service` installs is the whole process's asyncio.
    done = subprocess.run(
        [sys.executable, "-c", CANCEL_AS_IT_COMPLETES], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "cancelled"


async def test_a_supervised_loop_that_loses_its_cancellation_still_ends() -> None:
    """What aiormq does to a cancellation landing while a channel closes: it becomes the channel's
    error, which the loop takes for a broker hiccup, and the loop carries on."""
    running = asyncio.Event()
    lost: list[bool] = []

    async def loses_the_first_cancellation() -> None:
        while True:
            running.set()
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if lost:
                    raise
                lost.append(True)

    task = supervised("careless", loses_the_first_cancellation, recancel_s=0.1)
    await asyncio.wait_for(running.wait(), 5)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert task in done and task.cancelled()
    assert lost == [True]


async def stopped_within(service: Service, seconds: float) -> tuple[str, int | None, float]:
    """SIGTERM the service; (name, exit code or None if still running, seconds it took)."""
    assert service.process is not None
    started = time.monotonic()
    service.kill(signal.SIGTERM)
    code = await wait_closed(service.process, seconds)
    return service.name, code, round(time.monotonic() - started, 1)


async def test_services_stopped_as_soon_as_they_answer_leave_at_once(stack: Stack) -> None:
    """Stopped while their background loops make their first calls to Redis: a loop whose
    cancellation Python 3.11's wait_for lost kept the stop waiting out the whole grace (about one
    stop in two did, before `keep_cancellations`)."""

    async def start_and_stop(name: str) -> tuple[str, int | None, float]:
        return await stopped_within(await stack.start(name), PROMPT_STOP_S)

    exits = await asyncio.gather(*(start_and_stop(name) for name in ("monitor", "gateway") * 2))
    assert all(code == 0 for _, code, _ in exits), (exits, stack.logs())


async def test_a_service_whose_broker_never_answers_stops_at_once(stack: Stack) -> None:
    """A broker that accepts the connection and never answers (a node hung before the service
    connected): the stop cancels the connection attempt, and aio-pika's own reconnection task must
    end with it, not try again forever."""
    accepted = asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        try:
            await reader.read()
        finally:
            writer.close()

    silent = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        monitor = await stack.start("monitor", AMQP_URL=f"amqp://guest:guest@127.0.0.1:{port}/")
        await asyncio.wait_for(accepted.wait(), 20)
        stop = await stopped_within(monitor, PROMPT_STOP_S)
        assert stop[1] == 0, (stop, stack.logs())
    finally:
        silent.close()
