"""Start-up common to the three services: settings from the environment, logging, a clear
one-line exit when a setting is wrong, and the order of a graceful stop.

On SIGTERM (or SIGINT) readiness turns false first and the server keeps answering everything,
probes included, for DRAIN_SECONDS, so load balancers and Kubernetes stop sending work while it
still succeeds; only then does the listener close and the apps drain their in-flight work (within
SHUTDOWN_GRACE_SECONDS). aiohttp's own `run_app` would stop listening at the signal itself. A
second signal skips what is left of the drain period. The whole stop is bounded: if draining and
closing take longer than SHUTDOWN_GRACE_SECONDS (a wedged broker never answers a close), the
process exits anyway; whatever it still held unacked is redelivered by the broker.

A stop is a cancellation of the background loops, so none may be lost: see `keep_cancellations`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import uvloop
from aiohttp import web

from shared.edge import ConnectionCounts, EdgeLimits, GuardedSite, quiet_malformed_requests, raise_file_limit
from shared.logs import setup_logging
from shared.settings import ConfigError, Settings
from shared.startup import log_start
from shared.telemetry import tracing_context
from shared.web import PROBES

log = logging.getLogger(__name__)

T = TypeVar("T")

RESTART_DELAY_S = 1.0
MAX_RESTART_DELAY_S = 30.0
# A supervised loop still running this long after it was cancelled has lost the cancellation: longer
# than the bounded last work a loop does when stopped (the statistics' final flush, 5 s).
RECANCEL_S = 6.0
# Beyond the grace: time for the listener to close and the last log lines to be written.
STOP_MARGIN_S = 3.0


def run_service(
    service: str, create_app: Callable[[Settings], web.Application], port_of: Callable[[Settings], int]
) -> None:
    try:
        settings = Settings.from_env()
        setup_logging(
            service,
            settings.log_level,
            settings.log_dir,
            max_bytes=settings.log_file_max_bytes,
            backups=settings.log_file_backups,
        )
        quiet_malformed_requests()
        app = create_app(settings)
        # First in, last out: spans are flushed after every other context has drained its work.
        app.cleanup_ctx.insert(0, tracing_context(service, settings))
    except ConfigError as exc:
        print(f"atendimento-{service}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    keep_cancellations()
    # uvloop: the services are I/O-bound event loops; it cuts their per-message CPU markedly.
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(service, app, port_of(settings), settings))
    except ConfigError as exc:  # found while connecting: a TLS server the configured CA does not sign
        print(f"atendimento-{service}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


async def serve(service: str, app: web.Application, port: int, settings: Settings) -> None:
    """Serve until a stop signal, then drain: readiness off, keep serving, close, clean up."""
    open_files = raise_file_limit()
    # The drain of in-flight work happens in the apps' cleanup contexts; give them the grace period.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=settings.shutdown_grace_s)
    await runner.setup()
    try:
        counts = ConnectionCounts(settings.max_connections_per_ip, settings.trusted_proxies)
        await GuardedSite(runner, port, EdgeLimits(counts, settings.http_header_timeout_s)).start()
        log_start(service, settings, port, open_files)
        _settle_garbage_collector()
        signals = _StopSignals()
        await signals.first.wait()
        probes = app.get(PROBES)
        if probes is not None:
            probes.draining = True
        log.info("stop requested: readiness off, serving for %.1fs more", settings.drain_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(signals.second.wait(), settings.drain_s)
    finally:
        log.info("closing the listener and draining in-flight work")
        cleanup = asyncio.create_task(runner.cleanup())
        done, _ = await asyncio.wait({cleanup}, timeout=settings.shutdown_grace_s + STOP_MARGIN_S)
        if not done:
            log.warning("stop took longer than the grace of %.0fs; exiting anyway", settings.shutdown_grace_s)
            logging.shutdown()
            # Not a normal return: cancelling what is left would wait on the same wedged peer.
            os._exit(0)
        cleanup.result()


def keep_cancellations() -> None:
    """Python 3.11's `asyncio.wait_for` loses a cancellation that lands just as the operation it
    waits for completes: it returns the result and the cancelled task carries on (CPython gh-86296,
    fixed in 3.12). redis-py wraps every command it sends in one, and aiormq every AMQP call, so a
    stop that cancels a background loop in that instant (the heartbeat, beating every few seconds)
    never ends it: the stop waited out SHUTDOWN_GRACE_SECONDS, then exited without its cleanup.
    The libraries look `asyncio.wait_for` up at each call: the service gives them 3.12's."""
    if sys.version_info < (3, 12):
        # typeshed's signature still admits generator-based coroutines, which Python 3.11 no longer has.
        asyncio.wait_for = wait_for  # type: ignore[assignment]


async def wait_for(operation: Awaitable[T], timeout: float | None) -> T:
    """CPython 3.12's `asyncio.wait_for`: the operation runs in the caller's task under a timeout,
    so a cancellation of the caller reaches it, or the caller, always."""
    if timeout is None or timeout <= 0:  # no waiter to race with: 3.11's own does the same as 3.12's
        return await asyncio.tasks.wait_for(operation, timeout)
    async with asyncio.timeout(timeout):
        return await operation


# Young objects collected this often (CPython's default is 700): a message makes a few hundred,
# nearly all freed by reference counting, so the default runs a collection every message or two.
GC_YOUNG_THRESHOLD = 10_000


def _settle_garbage_collector() -> None:
    """What start-up built (the knowledge-base index, modules, settings) lives as long as the
    process: frozen, it is never traversed again by the collector, which then costs per message
    what the message's own objects cost."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def supervised(
    name: str,
    loop: Callable[[], Awaitable[None]],
    *,
    restart_delay_s: float = RESTART_DELAY_S,
    recancel_s: float = RECANCEL_S,
) -> asyncio.Task[None]:
    """Start a background loop that lives as long as the service: a crash is logged and the loop
    starts again (after a pause that grows while it keeps crashing); returning ends it, and so does
    cancelling the task, even when a library loses the cancellation (see `_to_the_end`)."""
    return asyncio.create_task(_supervise(name, loop, restart_delay_s, recancel_s), name=name)


async def _supervise(name: str, loop: Callable[[], Awaitable[None]], restart_delay_s: float, recancel_s: float) -> None:
    delay = restart_delay_s
    while True:
        started = time.monotonic()
        try:
            await _to_the_end(asyncio.ensure_future(loop()), recancel_s)
            return
        except Exception:
            log.exception("background loop %s crashed; restarting it in %.0fs", name, delay)
        # A loop that ran a good while before crashing starts again soon; one crashing at once waits longer.
        delay = restart_delay_s if time.monotonic() - started > MAX_RESTART_DELAY_S else delay
        await asyncio.sleep(delay)
        delay = min(2 * delay, MAX_RESTART_DELAY_S)


async def _to_the_end(run: asyncio.Future[None], recancel_s: float) -> None:
    """Await `run`; once cancelled, cancel it again every `recancel_s` until it has ended. Libraries
    lose cancellations: aiormq turns one that lands while a channel closes into the channel's error,
    which a loop takes for a broker hiccup before carrying on (seen in the monitor's retention
    sweep), and the stop waited out its whole grace for it."""
    try:
        await asyncio.shield(run)
    except asyncio.CancelledError:
        while not run.done():
            run.cancel()
            await asyncio.wait({run}, timeout=recancel_s)
        raise


class _StopSignals:
    def __init__(self) -> None:
        self.first = asyncio.Event()
        self.second = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._received)

    def _received(self) -> None:
        (self.second if self.first.is_set() else self.first).set()
