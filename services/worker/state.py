"""The worker's own Redis reads and writes before a reply is committed: what it must know first
(`WorkerStore.begin`: a stored reply, earlier failures, the memory, the options offered) and the
count of failed attempts at a message. The commit is services/worker/commit.py.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.commands.core import AsyncScript

from services.worker.coalesce import Coalescer
from shared.messages import InboundMessage, Option, ReplyMessage
from shared.store import IDEMPOTENCY_TTL_SECONDS, Store
from shared.telemetry import redis_span, traced_redis

# How long the options a reply offered may still be chosen: time enough to read and tap, not so
# long that a tap on an old message is taken for an answer to a question long left behind.
OFFERED_TTL_SECONDS = 30 * 60

# KEYS: 1 attempts, 2 the last failure counted. ARGV: 1 token, 2 ttl. Counts one failure once: a
# command resent after its reply was lost finds its token and does not count it again.
_RECORD_FAILURE = """
if redis.call('GET', KEYS[2]) == ARGV[1] then
  return tonumber(redis.call('GET', KEYS[1]) or '0')
end
local failures = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[1], 'EX', 300)
return failures
"""


@dataclass(frozen=True, slots=True)
class Offered:
    """The options the conversation's last reply offered (written by the worker's commit, for
    OFFERED_TTL_SECONDS), and the customer's question that led to them: what an entry chosen
    from them answers."""

    options: tuple[Option, ...] = ()
    question: str = ""

    def to_bytes(self) -> bytes:
        return orjson.dumps({"options": [option.to_dict() for option in self.options], "question": self.question})

    @classmethod
    def from_bytes(cls, raw: bytes | str) -> Offered:
        data = orjson.loads(raw)
        return cls(tuple(Option.from_dict(option) for option in data["options"]), str(data["question"]))


@dataclass(frozen=True, slots=True)
class WorkState:
    """What the worker needs to know before it generates a reply."""

    stored_reply: ReplyMessage | None
    attempt: int  # 1 + the failures recorded so far
    history: list[dict[str, str]]
    # The conversation is with a human (only read along with the memory: for an engine that costs).
    handed_off: bool = False
    # What the last reply offered (only read for a message that may choose one of them).
    offered: Offered = field(default_factory=Offered)


# One message's first read: the keys to GET or LRANGE, in the order `WorkState` is made from.
Read = tuple[tuple[str, str], ...]


@dataclass(slots=True)
class WorkerStore(Store):
    """The shared operations, and the worker's first read and failure count."""

    # Turns of memory the worker reads before generating (its commit writes them).
    memory_turns: int = 10
    _record_failure: AsyncScript = field(init=False)
    # The first reads of all the lanes waiting share a round trip (see `begin`).
    _reads: Coalescer[Read, list[Any]] = field(init=False)

    def __post_init__(self) -> None:
        # A registered script runs by EVALSHA: its text crosses the wire once, not per message.
        self._record_failure = self.redis.register_script(_RECORD_FAILURE)
        self._reads = Coalescer(self._read_all, name="begin")

    async def begin(
        self, message: InboundMessage, *, redelivered: bool, with_history: bool, with_offered: bool
    ) -> WorkState:
        """Read what the worker must know first, in one round trip, shared with the other lanes
        reading meanwhile (a round trip's own cost, not its commands, is most of what a read costs
        the worker). A first delivery cannot have a stored reply or earlier failures, so the
        common case reads only the memory, and only for engines using it (they also learn whether
        the conversation is with a human, and skip generating then), and the options offered only
        for a message that may choose one: plain text on the knowledge-base engine reads nothing."""
        if not (redelivered or with_history or with_offered):
            return WorkState(stored_reply=None, attempt=1, history=[])
        conversation = message.conversation_id
        read: list[tuple[str, str]] = []
        if redelivered:
            read += [
                ("GET", self.names.reply_key(message.message_id)),
                ("GET", self.names.attempts_key(message.message_id)),
            ]
        if with_history:
            read += [("LRANGE", self.names.memory_key(conversation)), ("GET", self.names.handoff_key(conversation))]
        if with_offered:
            read.append(("GET", self.names.offered_key(conversation)))
        results = iter(await self._reads.submit(tuple(read)))
        stored, attempt = (next(results), int(next(results) or 0) + 1) if redelivered else (None, 1)
        memory, handoff = (next(results), next(results)) if with_history else ([], None)
        offered = next(results) if with_offered else None
        return WorkState(
            stored_reply=ReplyMessage.from_bytes(stored) if stored else None,
            attempt=attempt,
            history=[orjson.loads(item) for item in memory],
            handed_off=handoff is not None,
            offered=Offered.from_bytes(offered) if offered else Offered(),
        )

    async def _read_all(self, reads: list[Read]) -> list[list[Any]]:
        """Every lane's first read in one pipeline; each lane gets its own replies, in order. A
        pipeline that fails fails them all (each lane then waits for Redis: until_redis_answers)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for read in reads:
                for command, key in read:
                    if command == "LRANGE":
                        pipe.lrange(key, -2 * self.memory_turns, -1)
                    else:
                        pipe.get(key)
            with redis_span("begin", **{"atendimento.begin.batch": len(reads)}):
                replies = iter(await pipe.execute())
        return [[next(replies) for _ in read] for read in reads]

    @traced_redis("record_failure")
    async def record_failure(self, message_id: str) -> int:
        """Count a failed attempt at a message; returns how many there have been."""
        key = self.names.attempts_key(message_id)
        failures = await self._record_failure([key, f"{key}:last"], [uuid.uuid4().hex, IDEMPOTENCY_TTL_SECONDS])
        return int(failures)
