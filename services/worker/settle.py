"""The worker's settle protocol: what becomes of a delivery, and the one place it is carried out.

A delivery is parsed once, on arrival (`Received`); the lanes (consumer.py) and the processor
(processor.py) read that, never the body again. Processing a unit of deliveries ends in one
`Outcome`:
  * `Settled`: every reply stands and is out; the deliveries are acked, in order;
  * `DeadLettered`: rejected to the dead-letter queue (malformed, or failed too often) and counted;
  * `RetryAfter`: not settled (the engine failed, or a bug): the same unit runs again in place after
    the pause, so the conversation waits and the others do not;
  * `Abandoned`: the deliveries stopped being ours (their channel closed): nothing is done, the
    broker redelivers them and the stored replies make that harmless.
`Settlement.apply` is the only place an outcome turns into broker actions (the acks leave together,
in tag order: acks.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, assert_never

from aio_pika.abc import AbstractIncomingMessage

from services.worker.acks import ChannelAcks
from shared.broker import BROKER_ERRORS
from shared.messages import InboundMessage, MessageFormatError
from shared.metrics import WorkerMetrics
from shared.store import REDIS_ERRORS, Store

log = logging.getLogger(__name__)

# Why a delivery went to the dead-letter queue, as atendimento_errors_total counts it.
DeadLetterKind = Literal["malformed", "dead_lettered"]


@dataclass(frozen=True, slots=True)
class Received:
    """A delivery with its body parsed, once, when it arrived."""

    delivery: AbstractIncomingMessage
    message: InboundMessage | None  # None: the body is not one of our messages
    problem: str = ""  # what is wrong with the body when it is not

    @classmethod
    def parse(cls, delivery: AbstractIncomingMessage) -> Received:
        try:
            return cls(delivery=delivery, message=InboundMessage.from_bytes(delivery.body))
        except MessageFormatError as exc:
            return cls(delivery=delivery, message=None, problem=str(exc))

    @property
    def lane(self) -> str:
        """The delivery's conversation: the gateway sends it as the correlation id; otherwise (a
        replayed dead letter) it is the body's. A malformed message gets a lane of its own, where it
        is dead-lettered."""
        if self.delivery.correlation_id:
            return self.delivery.correlation_id
        if self.message is not None:
            return self.message.conversation_id
        return f"?{self.delivery.delivery_tag}"


@dataclass(frozen=True, slots=True)
class Settled:
    deliveries: tuple[AbstractIncomingMessage, ...]


@dataclass(frozen=True, slots=True)
class DeadLettered:
    deliveries: tuple[AbstractIncomingMessage, ...]
    kind: DeadLetterKind


@dataclass(frozen=True, slots=True)
class RetryAfter:
    seconds: float


@dataclass(frozen=True, slots=True)
class Abandoned:
    reason: str


Outcome = Settled | DeadLettered | RetryAfter | Abandoned


@dataclass(frozen=True, slots=True)
class Settlement:
    """Carries outcomes out on one shard's channel."""

    shard: int
    acks: ChannelAcks
    store: Store
    metrics: WorkerMetrics

    async def apply(self, outcome: Outcome) -> float | None:
        """Do what the outcome asks of the broker. Returns the pause before the same unit runs
        again in place, or None when the lane is done with it (settled, or given back)."""
        match outcome:
            case Settled(deliveries=deliveries):
                for delivery in deliveries:
                    self.acks.ack(delivery)
            case DeadLettered():
                await self._dead_letter(outcome)
            case RetryAfter(seconds=seconds):
                return seconds
            case Abandoned(reason=reason):
                self._given_back(reason)
            case _:
                assert_never(outcome)
        return None

    async def _dead_letter(self, outcome: DeadLettered) -> None:
        for delivery in outcome.deliveries:
            try:
                await self.acks.reject(delivery)
            except BROKER_ERRORS as exc:
                self._given_back(f"not dead-lettered, the channel is gone: {exc!r}")
                return
            self.metrics.errors.labels(outcome.kind).inc()
            try:
                await self.store.record_error(outcome.kind)
            except REDIS_ERRORS as exc:
                log.error("error not counted (%s): %s", outcome.kind, exc)

    def _given_back(self, reason: str) -> None:
        log.warning("shard %d: deliveries given back, they will be redelivered: %s", self.shard, reason)
