"""The knowledge base reloads without a restart: when KB_PATH changes, or when the admin area asks.

`LiveEngine` is the reply engine the processor holds; it delegates to the engine built from the
base in force and swaps in a new one atomically (between two replies). `KbReloader.run` checks,
every KB_RELOAD_INTERVAL_SECONDS, the file's fingerprint (size, mtime, then sha256 of its bytes)
and the reload version in Redis (shared/kbstate.py: the admin's button raises it, and every
replica sees it). A new file is validated by building the whole engine from it first: a bad file
keeps the old base, logs why, and publishes the reason in this worker's status, which the admin
area shows. The status is published every round, so the admin sees every live replica.

The phrasings operators taught in the admin area (shared/phrasings.py, an overlay in Redis) are
applied on top of the file at every load, from the worker's start (`KbReloader.start`, before
its first message); its version is watched like the reload version, so a taught phrasing reaches
every worker within one interval. Phrasings of an entry the file no longer
has are left out, logged, and named in the status.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from services.worker.engines.base import EngineRequest
from services.worker.engines.kb import KnowledgeBase, KnowledgeBaseError
from services.worker.engines.policy import ReplyPolicy
from services.worker.engines.text import Language
from shared import kbstate, phrasings
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
    overlay_version: int = 0  # of the taught phrasings applied (0: none)
    phrasings: int = 0  # taught phrasings applied
    ignored: tuple[str, ...] = ()  # entry ids of taught phrasings the file does not have


def fingerprint(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def _stat(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_size, info.st_mtime_ns


NOTHING_TAUGHT = phrasings.Overlay(0, {})


def load(path: Path, build: Build, overlay: phrasings.Overlay = NOTHING_TAUGHT) -> Loaded:
    """Read, validate and index the base, with the taught phrasings of `overlay` on top; raises
    KnowledgeBaseError (or OSError) naming the problem."""
    stat = _stat(path)
    data = path.read_bytes()
    knowledge = KnowledgeBase.load(path)
    ignored = knowledge.unknown(overlay.phrasings)
    applied = sum(len(questions) for entry_id, questions in overlay.phrasings.items() if entry_id not in ignored)
    return Loaded(
        build(knowledge.with_phrasings(overlay.phrasings)),
        len(knowledge.entries),
        knowledge.language,
        fingerprint(data),
        stat,
        time.time(),
        overlay.version,
        applied,
        tuple(ignored),
    )


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

    async def start(self) -> None:
        """Before the first message: the base loaded at start gets the taught phrasings on top, so a
        new or restarted worker never answers (a backlog waiting for it included) without them."""
        try:
            taught = await phrasings.version(self.store.redis, self.store.names)
        except REDIS_ERRORS as exc:
            log.warning("knowledge base: taught phrasings unreadable at start, applied later: %s", exc)
            return
        if taught == self.live.loaded.overlay_version:
            return  # nothing taught
        try:
            stat = _stat(self.path)
        except OSError as exc:
            self._refuse(f"{self.path}: cannot read the file: {exc}", None)
            return
        await self._reload(stat, asked=True)

    async def check(self) -> None:
        """One round: reload when asked or when the file changed, then publish this worker's status."""
        try:
            version, taught = await self._versions()
        except REDIS_ERRORS as exc:
            log.warning("knowledge base: reload version unreadable: %s", exc)
            version = self.version if self.version is not None else 0
            taught = self.live.loaded.overlay_version
        asked = (self.version is not None and version != self.version) or taught != self.live.loaded.overlay_version
        previous, self.version = self.version, version
        try:
            stat = _stat(self.path)
        except OSError as exc:
            self._refuse(f"{self.path}: cannot read the file: {exc}", None)
        else:
            changed = stat != self.live.loaded.stat and stat != self._refused
            if (asked or changed) and not await self._reload(stat, asked):
                self.version = previous  # the request still stands: the next round acts on it
        await self._publish()

    async def _reload(self, stat: tuple[int, int], asked: bool) -> bool:
        """False when it could not be tried for want of the taught phrasings (Redis unreachable)."""
        try:
            if not asked and fingerprint(self.path.read_bytes()) == self.live.loaded.fingerprint:
                self.live.loaded = _restamped(self.live.loaded, stat)  # touched, not changed
                self._refused, self.error, self.error_at = None, "", 0.0
                return True
        except OSError as exc:
            self._refuse(str(exc), stat)
            return True
        try:
            overlay = await phrasings.read(self.store.redis, self.store.names)
        except REDIS_ERRORS as exc:
            log.warning("knowledge base: taught phrasings unreadable, not reloaded yet: %s", exc)
            return False
        try:
            # Indexing a large base takes a second or two: off the event loop, replies go on meanwhile.
            loaded = await asyncio.to_thread(load, self.path, self.build, overlay)
        except (KnowledgeBaseError, OSError, ValueError) as exc:
            self._refuse(str(exc), stat)
            return True
        if loaded.ignored:
            log.warning(
                "knowledge base: taught phrasings of entries the file does not have are ignored: %s",
                ", ".join(loaded.ignored),
            )
        self._refused, self.error, self.error_at = None, "", 0.0
        self.live.swap(loaded, self.grace_s)
        log.info(
            "knowledge base reloaded",
            extra={
                "kb_path": str(self.path),
                "entries": loaded.entries,
                "fingerprint": loaded.fingerprint,
                "taught_phrasings": loaded.phrasings,
            },
        )
        return True

    async def _versions(self) -> tuple[int, int]:
        """The reload version and the taught phrasings' version, in one round trip."""
        names = self.store.names
        values = await self.store.redis.mget([kbstate.version_key(names), names.kb_phrasings_version_key])
        reload_version, taught = (int(value) if value is not None else 0 for value in values)
        return reload_version, taught

    def _refuse(self, reason: str, stat: tuple[int, int] | None) -> None:
        if reason != self.error:
            log.error("knowledge base NOT reloaded, the previous one stays in service: %s", reason)
        self._refused, self.error, self.error_at = stat, reason, time.time()

    async def _publish(self) -> None:
        loaded = self.live.loaded
        status = kbstate.KbStatus(
            self.instance,
            str(self.path),
            loaded.entries,
            loaded.at,
            loaded.fingerprint,
            self.error,
            self.error_at,
            loaded.phrasings,
            loaded.ignored,
        )
        try:
            await kbstate.publish_status(self.store.redis, self.store.names, status, time.time())
        except REDIS_ERRORS as exc:
            log.warning("knowledge base: status not published: %s", exc)


def _restamped(current: Loaded, stat: tuple[int, int]) -> Loaded:
    return replace(current, stat=stat)
