"""Heartbeats: each process says every few seconds that it is alive, with its uptime and memory.

The monitor lists live services from these, and workers divide the shards among the live workers.
A key expires after three missed beats, so a killed process disappears within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from shared import __version__
from shared.store import REDIS_ERRORS, Store

log = logging.getLogger(__name__)

CGROUP_MEMORY_MAX = Path("/sys/fs/cgroup/memory.max")
FORGET_TIMEOUT_S = 2.0


def memory_limit_bytes() -> int:
    """The container's memory limit when there is one (what 'memory %' should be measured against)."""
    total = int(psutil.virtual_memory().total)
    try:
        raw = CGROUP_MEMORY_MAX.read_text().strip()
    except OSError:
        return total
    return min(int(raw), total) if raw.isdigit() else total


@dataclass(slots=True)
class ProcessInfo:
    service: str
    instance_id: str
    started_at: float = field(default_factory=time.time)
    memory_limit: int = field(default_factory=memory_limit_bytes)
    process: psutil.Process = field(default_factory=psutil.Process)
    rss: int = 0  # the last reading, kept when one fails

    @property
    def uptime_seconds(self) -> float:
        return time.time() - self.started_at

    def snapshot(self) -> dict[str, Any]:
        # /proc unreadable (out of file handles, say): the last reading stands, the beat goes on.
        with contextlib.suppress(OSError, psutil.Error):
            self.rss = int(self.process.memory_info().rss)
        rss = self.rss
        return {
            "name": self.service,
            "instance": self.instance_id,
            "version": __version__,
            "started_at": self.started_at,
            "uptime_seconds": round(self.uptime_seconds, 1),
            "memory_rss_bytes": rss,
            "memory_percent": round(100.0 * rss / self.memory_limit, 2),
            "timestamp": time.time(),
        }


async def heartbeat_loop(
    store: Store,
    info: ProcessInfo,
    interval_s: float,
    ttl_s: float,
    extra: Callable[[], dict[str, Any]] | None = None,
) -> None:
    """Beat until cancelled. A failed beat (Redis down, the process out of file handles) is logged
    once per run of failures and never ends the loop: a process that stops beating is taken for
    dead, and the workers divide the shards without it."""
    failing = False
    try:
        while True:
            try:
                state = info.snapshot() | (extra() if extra else {})
                await store.beat(info.service, info.instance_id, state, ttl_s)
                failing = False
            except Exception as exc:  # whatever failed, the next beat may not: nothing ends the loop
                if not failing:
                    log.warning("heartbeat not written: %r", exc)
                failing = True
            await asyncio.sleep(interval_s)
    finally:
        # Leaving at once is a courtesy (the key expires anyway): a Redis that does not answer must
        # not hold a stopping process up.
        with contextlib.suppress(TimeoutError, *REDIS_ERRORS):
            await asyncio.wait_for(asyncio.shield(store.forget(info.service, info.instance_id)), FORGET_TIMEOUT_S)
