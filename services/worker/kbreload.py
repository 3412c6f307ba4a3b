"""The knowledge base reloads without a restart: when KB_PATH changes, or when the admin area asks.

`LiveEngine` is the reply engine the processor holds; it delegates to the engine built from the
base in force and swaps in a new one atomically (between two replies). `KbReloader.run` checks,
every KB_RELOAD_INTERVAL_SECONDS, the file's fingerprint (size, mtime, then sha256 of its bytes)
and the reload version in Redis (shared/kbstate.py: the admin's button raises it, and every
replica sees it). A new file is validated by building the whole engine from it first: a bad file
keeps the old base, logs why, and publishes the reason in this worker's status, which the admin
area shows. The status is published every round, so the admin sees every live replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.worker.engines.base import EngineRequest
from services.worker.engines.kb import KnowledgeBase, KnowledgeBaseError
from services.worker.engines.policy import ReplyPolicy
from services.worker.engines.text import Language
from shared import kbstate
from shared.messages import ReplyContent
from shared.store import REDIS_ERRORS, Store

log = logging.getLogger(__name__)

# The reply policy and its engine, with the base they answer from: swapped as one, so an option
# offered by a base is resolved by that same base.
Build = Callable[[KnowledgeBase], ReplyPolicy]


@dataclass(frozen=True, slots=True)
class Loaded:
    engine: ReplyPolicy
    entries: int
    language: Language
    fingerprint: str
    stat: tuple[int, int]  # (size, mtime_ns) of the file when it was read
    at: float


def fingerprint(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def _stat(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_size, info.st_mtime_ns


def load(path: Path, build: Build) -> Loaded:
    """Read, validate and index the base; raises KnowledgeBaseError (or OSError) naming the problem."""
    stat = _stat(path)
    data = path.read_bytes()
    knowledge = KnowledgeBase.load(path)
    return Loaded(build(knowledge), len(knowledge.entries), knowledge.language, fingerprint(data), stat, time.time())


class LiveEngine:
    """A ChoosingEngine whose underlying engine can be replaced while the worker runs."""

    def __init__(self, loaded: Loaded) -> None:
        self.loaded = loaded
        self.name = loaded.engine.name
        self.uses_history = loaded.engine.uses_history
        self._retired: set[asyncio.Task[None]] = set()

    @property
    def language(self) -> Language:
        return self.loaded.language

    def may_be_choice(self, text: str) -> bool:
        return self.loaded.engine.may_be_choice(text)

    async def reply(self, request: EngineRequest) -> ReplyContent:
        return await self.loaded.engine.reply(request)

    def swap(self, loaded: Loaded, grace_s: float) -> None:
        """Serve `loaded` from now on; the old engine is closed once replies in flight are done."""
        old, self.loaded = self.loaded.engine, loaded
        task = asyncio.create_task(self._close_later(old, grace_s), name="close-old-engine")
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    @staticmethod
    async def _close_later(engine: ReplyPolicy, grace_s: float) -> None:
        await asyncio.sleep(grace_s)
        await engine.close()

    async def close(self) -> None:
        for task in list(self._retired):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.loaded.engine.close()


@dataclass(slots=True)
class KbReloader:
    path: Path
    build: Build
    live: LiveEngine
    store: Store
    instance: str
    grace_s: float  # how long a reply may still use the old engine (the LLM's whole budget)
    version: int | None = None  # the reload version last acted on (None: not read yet)
    error: str = ""
    error_at: float = 0.0
    _refused: tuple[int, int] | None = None  # the stat of a file already refused: not re-read

    async def run(self, interval_s: float) -> None:
        while True:
            await self.check()
            await asyncio.sleep(interval_s)

    async def check(self) -> None:
        """One round: reload when asked or when the file changed, then publish this worker's status."""
        try:
            version = await kbstate.reload_version(self.store.redis, self.store.names)
        except REDIS_ERRORS as exc:
            log.warning("knowledge base: reload version unreadable: %s", exc)
            version = self.version if self.version is not None else 0
        asked = self.version is not None and version != self.version
        self.version = version
        try:
            stat = _stat(self.path)
        except OSError as exc:
            self._refuse(f"{self.path}: cannot read the file: {exc}", None)
        else:
            changed = stat != self.live.loaded.stat and stat != self._refused
            if asked or changed:
                await self._reload(stat, asked)
        await self._publish()

    async def _reload(self, stat: tuple[int, int], asked: bool) -> None:
        try:
            if not asked and fingerprint(self.path.read_bytes()) == self.live.loaded.fingerprint:
                self.live.loaded = _restamped(self.live.loaded, stat)  # touched, not changed
                self._refused, self.error, self.error_at = None, "", 0.0
                return
            # Indexing a large base takes a second or two: off the event loop, replies go on meanwhile.
            loaded = await asyncio.to_thread(load, self.path, self.build)
        except (KnowledgeBaseError, OSError, ValueError) as exc:
            self._refuse(str(exc), stat)
            return
        self._refused, self.error, self.error_at = None, "", 0.0
        self.live.swap(loaded, self.grace_s)
        log.info(
            "knowledge base reloaded",
            extra={"kb_path": str(self.path), "entries": loaded.entries, "fingerprint": loaded.fingerprint},
        )

    def _refuse(self, reason: str, stat: tuple[int, int] | None) -> None:
        if reason != self.error:
            log.error("knowledge base NOT reloaded, the previous one stays in service: %s", reason)
        self._refused, self.error, self.error_at = stat, reason, time.time()

    async def _publish(self) -> None:
        loaded = self.live.loaded
        status = kbstate.KbStatus(
            self.instance, str(self.path), loaded.entries, loaded.at, loaded.fingerprint, self.error, self.error_at
        )
        try:
            await kbstate.publish_status(self.store.redis, self.store.names, status, time.time())
        except REDIS_ERRORS as exc:
            log.warning("knowledge base: status not published: %s", exc)


def _restamped(current: Loaded, stat: tuple[int, int]) -> Loaded:
    return Loaded(current.engine, current.entries, current.language, current.fingerprint, stat, current.at)
