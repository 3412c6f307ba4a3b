"""An erasure reaches the records named after the platform's ids of the customer's messages, not only
those named after ours (shared/privacy/holdings.py, shared/receipts.py)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import orjson
import pytest
from redis.asyncio import Redis

from shared.audit import Actor, AuditLog
from shared.messages import ReplyContent, ReplyMessage
from shared.names import Names
from shared.privacy.customer import Customer
from shared.privacy.erasure import CustomerData
from shared.receipts import Receipts
from tests.support import TEST_SHARDS, new_namespace, purge_namespace

PHONE = "5511987654321"
# A real wamid carries the customer's number (base64 of it); these stand for such ids.
SENT_WAMID = f"wamid.sent-{PHONE}"
OTHER_WAMID = "wamid.sent-5521900000000"
CONVERSATION = f"whatsapp:100200300:{PHONE}"


@pytest.fixture
async def names() -> AsyncIterator[Names]:
    """A fresh namespace's names, purged afterwards."""
    namespace = new_namespace()
    try:
        yield Names(namespace, TEST_SHARDS)
    finally:
        await purge_namespace(namespace)


async def log_their_message(redis: Redis, names: Names, message_id: str, text: str) -> None:
    """A message of the customer's in their conversation's log, listed in the index."""
    logged = {"message_id": message_id, "user_id": PHONE, "text": text, "replied_at": time.time()}
    await redis.rpush(names.conversation_log_key(CONVERSATION), orjson.dumps(logged))
    await redis.zadd(names.conversations_key, {CONVERSATION: time.time()})


async def erase(redis: Redis, names: Names) -> list[str]:
    """Erase the customer; the keys of the namespace left naming their number."""
    await CustomerData(redis, names, None).erase(Customer("whatsapp", PHONE))
    return [str(key) async for key in redis.scan_iter(match=f"{names.namespace}:*", count=1000) if PHONE in str(key)]


async def test_erasure_removes_the_wamid_pointers_of_the_customers_replies(redis: Redis, names: Names) -> None:
    inbound = f"wamid.in-{PHONE}"
    await log_their_message(redis, names, inbound, "qual o prazo?")
    receipts = Receipts(redis, names, 90 * 86400)
    # The reply to their message went out; WhatsApp returned its own id for it.
    await receipts.accepted(inbound, time.time(), SENT_WAMID)
    await receipts.accepted("someone-else", time.time(), OTHER_WAMID)

    left = await erase(redis, names)

    assert not left, left
    # A status WhatsApp sends late for the erased reply finds no message to bring a record back for.
    assert await redis.get(names.wamid_key(SENT_WAMID)) is None
    assert await redis.get(names.wamid_key(OTHER_WAMID)) == "someone-else"  # another customer's stays


async def test_erasure_removes_a_proactive_messages_receipt_its_log_no_longer_shows(redis: Redis, names: Names) -> None:
    """A late status renews a receipt for 7 days, so it can outlive the conversation log that named
    the message: the receipt still says where the message went."""
    receipts = Receipts(redis, names, 90 * 86400)
    for message_id, to in (("out-1", PHONE), ("out-2", "5521900000000")):
        content = ReplyContent("Seu pedido saiu", "outbound", 1.0)
        reply = ReplyMessage(message_id, f"whatsapp:100200300:{to}", to, "whatsapp", content, 0.0)
        await receipts.addressed(reply)
        await receipts.accepted(message_id, time.time(), f"wamid.{message_id}-{to}")

    await erase(redis, names)

    assert await receipts.proactive("out-1") is None
    assert await redis.get(names.wamid_key(f"wamid.out-1-{PHONE}")) is None
    assert await receipts.proactive("out-2") is not None  # another customer's stays


async def test_erasure_pseudonymises_audit_entries_naming_their_messages_or_number(redis: Redis, names: Names) -> None:
    """Not only actions on their conversations name them in the audit log: a dead letter of theirs
    replayed (its message id) and a proactive message to them refused (the number as typed)."""
    inbound = f"wamid.in-{PHONE}"
    await log_their_message(redis, names, inbound, "oi")
    audit = AuditLog(redis, names)
    actor = Actor("Ana", "127.0.0.1", "s1")
    await audit.record(actor, "replay_dead_letter", inbound, "ok", "inbound from q (died)")
    await audit.record(actor, "send_outbound", "whatsapp:+55 11 98765-4321", "refused", "opted out")
    await audit.record(actor, "view_conversation", CONVERSATION)
    await audit.record(actor, "send_outbound", "whatsapp:5521900000000", "refused", "opted out")

    await erase(redis, names)

    targets = [entry["target"] for entry in reversed(await audit.recent())]
    pseudonym = Customer("whatsapp", PHONE).pseudonym(names.namespace)
    assert targets == [pseudonym, pseudonym, pseudonym, "whatsapp:5521900000000"]


async def test_erasure_removes_the_agent_assigned_to_their_handoff(redis: Redis, names: Names) -> None:
    """An agent's "assign to me" on a handed-off conversation names it in a key of its own (the inbox)."""
    handoff = {"user_id": PHONE, "channel": "whatsapp", "reason": "quero um atendente"}
    await redis.set(names.handoff_key(CONVERSATION), orjson.dumps(handoff), ex=3600)
    await redis.zadd(names.handoffs_key, {CONVERSATION: time.time()})
    await redis.set(names.handoff_assignee_key(CONVERSATION), "Ana", ex=3600)

    left = await erase(redis, names)

    assert not left, left
