"""Accepting a message: take its rate limits and claim its id once, then queue it durably. Shared by
every channel."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from services.gateway.admission import Admission, Refused
from services.gateway.claims import PROVISIONAL_CLAIM_MS, Claim, GatewayStore, claimed_conversation
from services.gateway.ratelimit import AddressCharge, RateLimiter, too_many
from shared.broker import BROKER_ERRORS, COPY_HEADER, Broker
from shared.messages import InboundMessage, ReplyMessage
from shared.metrics import GatewayMetrics
from shared.store import REDIS_ERRORS
from shared.web import Problem

log = logging.getLogger(__name__)

# A step between a won claim and its publish (the outbound rules' check, /reset ending tokens).
BeforePublish = Callable[[], Awaitable[None]]

RETRY_AFTER_SECONDS = "5"
CLAIM_POLL_S = 0.1


def unavailable(what: str) -> Problem:
    return Problem(
        503, f"{what} is unreachable; nothing was accepted, retry later", headers={"Retry-After": RETRY_AFTER_SECONDS}
    )


@dataclass(frozen=True, slots=True)
class Outcome:
    """`duplicate_of` is set (to the original's conversation) when the id had been accepted before."""

    duplicate_of: str | None = None

    @property
    def duplicate(self) -> bool:
        return self.duplicate_of is not None


@dataclass(frozen=True, slots=True)
class Intake:
    store: GatewayStore
    broker: Broker
    # Per sender (channel and user id), for every channel alike: webhooks included.
    limiter: RateLimiter
    admission: Admission
    metrics: GatewayMetrics

    async def accept(
        self,
        message: InboundMessage,
        address: AddressCharge | None = None,
        before_publish: BeforePublish | None = None,
    ) -> Outcome:
        """Claim and publish with confirm; only a returned Outcome means the message is safe.
        `address`: the API request's client address, limited along with the sender.
        `before_publish` runs only for an id this call claimed (not for a refused or repeated
        one), before the publish; a Problem it raises gives the claim back and is raised."""
        names = self.broker.names
        outcome = await self._claim_and_publish(
            message.message_id,
            message.conversation_id,
            (message.channel, message.user_id),
            names.inbound_exchange,
            str(names.shard_of(message.conversation_id)),
            message.to_bytes(),
            address=address,
            before_publish=before_publish,
        )
        if not outcome.duplicate:
            self.metrics.child(self.metrics.accepted, message.channel).inc()
        return outcome

    async def answer_directly(
        self,
        reply: ReplyMessage,
        address: AddressCharge | None = None,
        before_publish: BeforePublish | None = None,
    ) -> Outcome:
        """A reply the gateway gives itself to a channel message (e.g. "text only, please"), or a
        proactive message (`address`: the API request's, limited with the claim): claimed under
        the message's id like any message, then queued for outbound delivery. `before_publish` as
        for `accept`: so an id accepted before is a duplicate whatever it would say now."""
        names = self.broker.names
        return await self._claim_and_publish(
            reply.message_id,
            reply.conversation_id,
            (reply.channel, reply.user_id),
            names.replies_exchange,
            names.route_of(reply),
            reply.to_bytes(),
            address=address,
            before_publish=before_publish,
        )

    async def accept_all(self, items: Sequence[InboundMessage | ReplyMessage]) -> list[Outcome]:
        """Everything one webhook call carries: one conversation's items one after another, in the
        order they came (so they are queued in that order), different conversations concurrently.
        A conversation stops at its first refusal, so a retry of the call cannot queue a later
        message before an earlier one. Whatever could be queued is; if anything could not, the
        most serious refusal (503 before 429) is raised so the platform retries the call, and the
        retry finds the queued ones already claimed."""
        by_conversation: dict[str, list[InboundMessage | ReplyMessage]] = {}
        for item in items:
            by_conversation.setdefault(item.conversation_id, []).append(item)

        async def in_order(conversation: list[InboundMessage | ReplyMessage]) -> list[Outcome | Problem]:
            results: list[Outcome | Problem] = []
            for item in conversation:
                try:
                    results.append(
                        await (self.accept(item) if isinstance(item, InboundMessage) else self.answer_directly(item))
                    )
                except Problem as refusal:
                    results.append(refusal)
                    break
            return results

        results = [r for group in await asyncio.gather(*map(in_order, by_conversation.values())) for r in group]
        refusals = [result for result in results if isinstance(result, Problem)]
        if refusals:
            raise max(refusals, key=lambda problem: problem.status)
        return [result for result in results if isinstance(result, Outcome)]

    async def lookup(self, message_id: str) -> ReplyMessage | str | None:
        """The reply stored for an accepted message (silenced ones included: the conversation was
        with a human), else the conversation it was accepted for (still on its way), else None
        (never accepted, or forgotten after the idempotency TTL)."""
        names = self.store.names
        try:
            async with self.store.redis.pipeline(transaction=False) as pipe:
                pipe.get(names.reply_key(message_id))
                pipe.get(names.claim_key(message_id))
                reply, conversation = await pipe.execute()
        except REDIS_ERRORS:
            raise unavailable("Redis") from None
        if reply:
            return ReplyMessage.from_bytes(reply)
        return None if conversation is None else claimed_conversation(str(conversation))

    async def _claim_and_publish(
        self,
        message_id: str,
        conversation_id: str,
        sender: tuple[str, str],
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        address: AddressCharge | None = None,
        before_publish: BeforePublish | None = None,
    ) -> Outcome:
        if not self.broker.connected:
            raise unavailable("the message broker")
        claim = await self._claim(message_id, conversation_id, sender, address)
        if not claim.won:
            return Outcome(duplicate_of=claim.duplicate_of)
        if before_publish is not None:
            try:
                await before_publish()
            except Problem:
                # Refused: given back, so the id is not a "duplicate" of a message never queued.
                await self._give_back(message_id, claim.token)
                raise
        try:
            await self.broker.publish(
                exchange,
                routing_key,
                body,
                message_id=message_id,
                conversation_id=conversation_id,
                headers={COPY_HEADER: True} if claim.copy else None,
            )
        except BROKER_ERRORS as exc:
            log.warning("publish failed, message %s not accepted: %s", message_id, exc)
            await self._give_back(message_id, claim.token)
            raise unavailable("the message broker") from None
        self.store.accept(message_id, conversation_id)
        return Outcome()

    async def _give_back(self, message_id: str, token: str) -> None:
        try:
            await self.store.release(message_id, token)
        except REDIS_ERRORS:
            log.error("claim of %s not released; a retry takes it over once it is stale", message_id)

    async def _claim(
        self, message_id: str, conversation_id: str, sender: tuple[str, str], address: AddressCharge | None
    ) -> Claim:
        """Take the rate limits and claim the id; while another request's claim of it waits for its
        confirm, wait for that to end (accepted: a duplicate; given back or stale: ours), within
        the publish window. The limits are taken by the first call only: the waits are one message."""
        deadline = time.monotonic() + 2 * PROVISIONAL_CLAIM_MS / 1000
        token = uuid.uuid4().hex
        buckets = self.limiter.buckets_of(sender, None if address is None else address.address)
        while True:
            try:
                admitted = await self.admission.admit(message_id, conversation_id, token, buckets)
            except REDIS_ERRORS:
                raise unavailable("Redis") from None
            if address is not None:
                address.charged = True  # taken (or refused) here: the middleware need not
            if isinstance(admitted, Refused):
                raise too_many(admitted.wait_s, admitted.who)
            if admitted.won or admitted.duplicate_of is not None:
                return admitted
            if time.monotonic() >= deadline:
                raise unavailable("the message broker")
            buckets = []
            await asyncio.sleep(min(CLAIM_POLL_S, admitted.retry_in_s))
