"""Finding what the system holds about one customer: their conversations, their messages' ids, their
words, before any owner exports or erases its part (shared/privacy/owners.py).

One SCAN of the namespace finds every per-conversation key of theirs (whatever still lives, indexed
or not) and the message-keyed entries that name one of their conversations (claims and stored
replies); their conversations' logs and dead letters add the ids and words of their messages. The
cost grows with the namespace, not with the customer: an operator's action, or a customer's rare
request, never the path of a message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import orjson
from redis.asyncio import Redis

from shared.names import Names
from shared.privacy.customer import Customer
from shared.privacy.deadletters import Letter

SCAN_COUNT = 1000
BATCH = 500


def conversation_keys(names: Names) -> tuple[Callable[[str], str], ...]:
    """Every key named after one conversation (what an erasure deletes for each of theirs)."""
    return (
        names.conversation_log_key,
        names.memory_key,
        names.offered_key,
        names.fallback_streak_key,
        names.handoff_key,
        names.outbound_order_key,
        names.handoff_assignee_key,
    )


def message_keys(names: Names) -> tuple[Callable[[str], str], ...]:
    """Every key named after one message."""
    return (
        names.claim_key,
        names.reply_key,
        names.attempts_key,
        names.delivered_key,
        names.receipt_key,
    )


@dataclass(slots=True)
class Holdings:
    customer: Customer
    conversations: set[str] = field(default_factory=set)
    message_ids: set[str] = field(default_factory=set)
    # What they wrote (to find their unanswered questions, which are kept by their words).
    texts: set[str] = field(default_factory=set)
    user_ids: set[str] = field(default_factory=set)
    # Their letters in the dead-letter queue, as last looked at.
    letters: list[Letter] = field(default_factory=list)
    # Keys named after the platform's id of one of their messages (a WhatsApp `wamid`, which carries
    # their number), with our id of it they point to (shared/receipts.py).
    pointers: dict[str, str] = field(default_factory=dict)


async def discover(redis: Redis, names: Names, customer: Customer, letters: Iterable[Letter]) -> Holdings:
    found = Holdings(customer, user_ids={customer.id})
    found.letters = [letter for letter in letters if customer.owns(letter.conversation_id)]
    prefixes = [key("") for key in conversation_keys(names)]
    valued = (names.claim_key(""), names.reply_key(""))
    candidates: list[str] = []
    wamids: list[str] = []
    receipts: list[str] = []
    async for raw in redis.scan_iter(match=f"{names.key_prefix}:*", count=SCAN_COUNT):
        key = str(raw)
        for prefix in prefixes:
            if key.startswith(prefix) and customer.owns(key[len(prefix) :]):
                found.conversations.add(key[len(prefix) :])
        if key.startswith(valued):
            candidates.append(key)
        elif key.startswith(names.wamid_key("")):
            wamids.append(key)
        elif key.startswith(names.receipt_key("")):
            receipts.append(key)
    for index in (names.conversations_key, names.handoffs_key):
        async for member, _ in redis.zscan_iter(index, count=SCAN_COUNT):
            if customer.owns(str(member)):
                found.conversations.add(str(member))
    await _their_messages(redis, names, customer, candidates, found)
    await _addressed_to_them(redis, names, customer, receipts, found)
    await _from_logs(redis, names, found)
    for letter in found.letters:
        found.message_ids.add(letter.message_id)
        found.texts.add(letter.text)
    await _pointers(redis, wamids, found)
    return found


async def _addressed_to_them(redis: Redis, names: Names, customer: Customer, keys: list[str], found: Holdings) -> None:
    """Proactive messages' receipts naming one of their conversations: a late status renews a receipt,
    so it may outlive the conversation log that lists the message."""
    receipt = names.receipt_key("")
    for start in range(0, len(keys), BATCH):
        batch = keys[start : start + BATCH]
        async with redis.pipeline(transaction=False) as pipe:
            for key in batch:
                pipe.hget(key, "conversation_id")
            conversations = await pipe.execute()
        for key, conversation in zip(batch, conversations, strict=True):
            if conversation is not None and customer.owns(str(conversation)):
                found.message_ids.add(key[len(receipt) :])


async def _pointers(redis: Redis, keys: list[str], found: Holdings) -> None:
    """The wamid keys that point to one of their messages (known once logs and letters are read)."""
    for start in range(0, len(keys), BATCH):
        batch = keys[start : start + BATCH]
        for key, value in zip(batch, await redis.mget(batch), strict=True):
            if value is not None and str(value) in found.message_ids:
                found.pointers[key] = str(value)


async def _their_messages(redis: Redis, names: Names, customer: Customer, keys: list[str], found: Holdings) -> None:
    """Claims (`a:{conversation}`) and stored replies (JSON with `conversation_id`) naming theirs."""
    claim = names.claim_key("")
    for start in range(0, len(keys), BATCH):
        batch = keys[start : start + BATCH]
        for key, value in zip(batch, await redis.mget(batch), strict=True):
            if value is None:
                continue
            prefix = claim if key.startswith(claim) else names.reply_key("")
            if customer.owns(_conversation_in(str(value), claimed=prefix == claim)):
                found.message_ids.add(key[len(prefix) :])


def _conversation_in(value: str, *, claimed: bool) -> str:
    if claimed:  # services/gateway/claims.py `claimed_conversation`
        if value.startswith("a:"):
            return value[2:]
        return value.split(":", 3)[3] if value.startswith("p:") and value.count(":") >= 3 else value
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return ""
    return str(data.get("conversation_id", "")) if isinstance(data, dict) else ""


async def _from_logs(redis: Redis, names: Names, found: Holdings) -> None:
    conversations = sorted(found.conversations)
    async with redis.pipeline(transaction=False) as pipe:
        for conversation in conversations:
            pipe.lrange(names.conversation_log_key(conversation), 0, -1)
            pipe.lrange(names.outbound_order_key(conversation), 0, -1)
            pipe.lrange(names.memory_key(conversation), 0, -1)
        results = await pipe.execute()
    for log, outbound, memory in zip(results[0::3], results[1::3], results[2::3], strict=True):
        found.message_ids.update(str(m) for m in outbound)
        for raw in log:
            entry = orjson.loads(raw)
            found.message_ids.update(str(entry[k]) for k in ("message_id", "merged_into") if entry.get(k))
            found.texts.add(str(entry.get("text", "")))
            if entry.get("user_id"):
                found.user_ids.add(str(entry["user_id"]))
        for raw in memory:
            turn = orjson.loads(raw)
            if turn.get("role") == "user":
                found.texts.add(str(turn.get("text", "")))
    found.texts.discard("")
