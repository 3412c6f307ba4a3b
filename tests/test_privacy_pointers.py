"""An erasure reaches the records named after the platform's ids of the customer's messages, not only
those named after ours (shared/privacy/holdings.py, shared/receipts.py)."""

from __future__ import annotations

import time

import orjson
from redis.asyncio import Redis

from shared.names import Names
from shared.privacy.customer import Customer
from shared.privacy.erasure import CustomerData
from shared.receipts import Receipts
from tests.support import TEST_SHARDS, new_namespace, purge_namespace

PHONE = "5511987654321"
# A real wamid carries the customer's number (base64 of it); these stand for such ids.
SENT_WAMID = f"wamid.sent-{PHONE}"
OTHER_WAMID = "wamid.sent-5521900000000"


async def test_erasure_removes_the_wamid_pointers_of_the_customers_replies(redis: Redis) -> None:
    namespace = new_namespace()
    names = Names(namespace, TEST_SHARDS)
    try:
        conversation = f"whatsapp:100200300:{PHONE}"
        inbound = f"wamid.in-{PHONE}"
        logged = {"message_id": inbound, "user_id": PHONE, "text": "qual o prazo?", "replied_at": time.time()}
        await redis.rpush(names.conversation_log_key(conversation), orjson.dumps(logged))
        await redis.zadd(names.conversations_key, {conversation: time.time()})
        receipts = Receipts(redis, names, 90 * 86400)
        # The reply to their message went out; WhatsApp returned its own id for it.
        await receipts.accepted(inbound, time.time(), SENT_WAMID)
        await receipts.accepted("someone-else", time.time(), OTHER_WAMID)

        await CustomerData(redis, names, None).erase(Customer("whatsapp", PHONE))

        left = [str(key) async for key in redis.scan_iter(match=f"{namespace}:*", count=1000)]
        assert not [key for key in left if PHONE in key], left
        # A status WhatsApp sends late for the erased reply finds no message to bring a record back for.
        assert await receipts.message_of(SENT_WAMID) is None
        assert await receipts.message_of(OTHER_WAMID) == "someone-else"  # another customer's stays
    finally:
        await purge_namespace(namespace)
