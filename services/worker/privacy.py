"""What the worker does once a reply to a customer's request about their data stands and is sent
(the requests are recognised by the reply policy, services/worker/engines/privacy.py):
  * the erasure they confirmed: everything held about them goes (shared/privacy/erasure.py), but the
    records of the messages being answered now, so that the confirmation still reaches them and a
    redelivery finds its reply (those expire within a day);
  * a request for a copy: recorded for the operators (shared/privacy/requests.py).
It runs before the deliveries are acked, so a crash before it is done redelivers the message, whose
stored reply brings it here again (both are safe to repeat).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from services.worker.engines import privacy
from shared.audit import Actor, AuditLog
from shared.broker import BROKER_ERRORS
from shared.messages import InboundMessage, ReplyMessage
from shared.privacy.customer import Customer
from shared.privacy.erasure import CustomerData
from shared.privacy.lock import LockBusy
from shared.privacy.requests import PrivacyRequests
from shared.store import REDIS_ERRORS

log = logging.getLogger(__name__)

MAX_WAIT_S = 5.0
# The customer themself, on their channel (the audit log's actor of an erasure they asked for).
AUDIT_ACTOR = Actor("customer", "channel")
UNAVAILABLE: tuple[type[BaseException], ...] = (*REDIS_ERRORS, *BROKER_ERRORS, LockBusy)


@dataclass(frozen=True, slots=True)
class CustomerRequests:
    data: CustomerData
    # The worker's statistics flush (shared/recorder.py): what it holds (the customer among the users
    # seen) reaches Redis before an erasure, or a later flush would write them back.
    flush: Callable[[], Awaitable[bool]] | None = None

    async def settle(self, answered: Sequence[tuple[InboundMessage, ReplyMessage]]) -> None:
        """Act on the replies of one unit that are the policy's privacy replies (cheap otherwise)."""
        keep = [message.message_id for message, _ in answered]
        for message, reply in answered:
            if reply.merged_into or reply.silenced:
                continue
            if reply.reply.engine == privacy.ERASED:
                await self._until_done(functools.partial(self._erase, message, keep))
            elif reply.reply.engine == privacy.EXPORT:
                await self._until_done(functools.partial(self._record, message))

    async def _erase(self, message: InboundMessage, keep: Sequence[str]) -> None:
        if self.flush is not None:
            await self.flush()
        customer = Customer.of_message(message)
        erased = await self.data.erase(customer, keep)
        # Who, by pseudonym, and counts only: the customer asked to be forgotten.
        audit = AuditLog(self.data.redis, self.data.names)
        detail = " ".join(f"{k}={v}" for k, v in erased.items())
        await audit.record(AUDIT_ACTOR, "erase_customer", customer.pseudonym(self.data.names.namespace), detail=detail)

    async def _record(self, message: InboundMessage) -> None:
        requests = PrivacyRequests(self.data.redis, self.data.names)
        await requests.record(Customer.of_message(message), "export", message.conversation_id)

    @staticmethod
    async def _until_done(operation: Callable[[], Awaitable[None]]) -> None:
        """Held until Redis and RabbitMQ answer, like the commit: the customer was told it is done."""
        attempt = 0
        while True:
            try:
                return await operation()
            except UNAVAILABLE as exc:
                if attempt == 0:
                    log.warning("customer data request held until Redis and RabbitMQ answer: %r", exc)
                attempt += 1
                await asyncio.sleep(min(MAX_WAIT_S, 0.1 * 2**attempt))
