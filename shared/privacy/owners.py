"""Each owner of a customer's data exports and erases its own part (shared/privacy/erasure.py runs
them all). A feature that stores something about a customer adds its owner to `owners()`; the test
of erasure (tests/test_privacy.py) then proves a scan of the namespace finds nothing of them.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import orjson
from redis.asyncio import Redis

from shared import recorder, unanswered
from shared.conversations import Keys as ConversationKeys
from shared.names import Names
from shared.privacy.customer import Customer
from shared.privacy.holdings import Holdings, message_keys
from shared.privacy.requests import PrivacyRequests

HOUR_S = 3600


class Owner(Protocol):
    """One kind of record about customers: `name` is its part of the export."""

    name: str

    async def collect(self, found: Holdings) -> Any: ...

    async def erase(self, found: Holdings) -> int:
        """Remove the customer's records; how many keys or entries went."""
        ...


def _loads(raw: Any) -> Any:
    return orjson.loads(raw) if raw else None


class ConversationLogs:
    """The operators' conversation log (worker commit, agent replies) and its index."""

    name = "conversations"

    def __init__(self, redis: Redis, names: Names) -> None:
        self.redis, self.names = redis, names

    async def collect(self, found: Holdings) -> dict[str, list[Any]]:
        conversations = sorted(found.conversations)
        async with self.redis.pipeline(transaction=False) as pipe:
            for conversation in conversations:
                pipe.lrange(self.names.conversation_log_key(conversation), 0, -1)
            logs = await pipe.execute()
        return {c: [orjson.loads(e) for e in log] for c, log in zip(conversations, logs, strict=True)}

    async def erase(self, found: Holdings) -> int:
        if not found.conversations:
            return 0
        conversations = list(found.conversations)
        logs = [self.names.conversation_log_key(c) for c in conversations]
        _, deleted = await recorder.forget(
            self.redis, self.names, self.names.conversations_key, conversations, delete=logs
        )
        return deleted


class Memory:
    """What the bot remembers of a conversation, the options it offered, its fallback streak."""

    name = "memory"

    def __init__(self, redis: Redis, names: Names) -> None:
        self.redis, self.names = redis, names

    def _keys(self, conversation: str) -> tuple[str, str, str]:
        names = self.names
        return names.memory_key(conversation), names.offered_key(conversation), names.fallback_streak_key(conversation)

    async def collect(self, found: Holdings) -> dict[str, Any]:
        conversations = sorted(found.conversations)
        async with self.redis.pipeline(transaction=False) as pipe:
            for conversation in conversations:
                memory, offered, streak = self._keys(conversation)
                pipe.lrange(memory, 0, -1)
                pipe.get(offered)
                pipe.get(streak)
            raw = await pipe.execute()
        held = {}
        for i, conversation in enumerate(conversations):
            turns, offered, streak = raw[3 * i : 3 * i + 3]
            if turns or offered or streak:
                held[conversation] = {
                    "turns": [orjson.loads(t) for t in turns],
                    "offered": _loads(offered),
                    "fallback_streak": int(streak or 0),
                }
        return held

    async def erase(self, found: Holdings) -> int:
        keys = [key for c in found.conversations for key in self._keys(c)]
        return int(await self.redis.delete(*keys)) if keys else 0


class Handoffs:
    """Conversations handed to a person (shared/handoff.py), their index and the agent who took each."""

    name = "handoffs"

    def __init__(self, redis: Redis, names: Names) -> None:
        self.redis, self.names = redis, names

    async def collect(self, found: Holdings) -> dict[str, Any]:
        conversations = sorted(found.conversations)
        if not conversations:
            return {}
        raws = await self.redis.mget([self.names.handoff_key(c) for c in conversations])
        return {c: orjson.loads(raw) for c, raw in zip(conversations, raws, strict=True) if raw}

    async def erase(self, found: Holdings) -> int:
        if not found.conversations:
            return 0
        conversations, names = list(found.conversations), self.names
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(*(key(c) for c in conversations for key in (names.handoff_key, names.handoff_assignee_key)))
            pipe.zrem(names.handoffs_key, *conversations)
            deleted, _ = await pipe.execute()
        return int(deleted)


class Messages:
    """Per-message records: claims, stored replies, attempts, delivery ledgers, commit markers, delivery
    receipts and the wamids pointing to them, and each conversation's queue of replies to send."""

    name = "messages"

    def __init__(self, redis: Redis, names: Names) -> None:
        self.redis, self.names = redis, names

    async def collect(self, found: Holdings) -> dict[str, Any]:
        ids = sorted(found.message_ids)
        replies = await self.redis.mget([self.names.reply_key(m) for m in ids]) if ids else []
        return {m: {"stored_reply": _loads(reply)} for m, reply in zip(ids, replies, strict=True)}

    async def erase(self, found: Holdings) -> int:
        keys = [key(m) for m in found.message_ids for key in message_keys(self.names)]
        keys += [self.names.outbound_order_key(c) for c in found.conversations]
        keys += sorted(key for key, message in found.pointers.items() if message in found.message_ids)
        deleted = 0
        for start in range(0, len(keys), 1000):
            deleted += int(await self.redis.delete(*keys[start : start + 1000]))
        return deleted


class Users:
    """The users seen (the monitor counts them per day)."""

    name = "users_seen"

    def __init__(self, redis: Redis, names: Names) -> None:
        self.redis, self.names = redis, names

    def _members(self, found: Holdings) -> list[str]:
        return [f"{found.customer.channel}:{user}" for user in sorted(found.user_ids)]

    async def collect(self, found: Holdings) -> dict[str, float]:
        members = self._members(found)
        scores = await self.redis.zmscore(self.names.users_key, members)
        return {m: float(s) for m, s in zip(members, scores, strict=True) if s is not None}

    async def erase(self, found: Holdings) -> int:
        removed, _ = await recorder.forget(self.redis, self.names, self.names.users_key, self._members(found))
        return removed


class Unanswered:
    """Questions the bot could not answer (shared/unanswered.py): kept by their normalised words, so
    the customer's are those matching what they wrote; also suggestions and operators' marks."""

    name = "unanswered_questions"

    def __init__(self, redis: Redis, names: Names) -> None:
        self.redis, self.names = redis, names

    def _hours(self) -> list[int]:
        current = int(time.time() // HOUR_S)
        return [current - back for back in range(unanswered.TTL_S // HOUR_S + 1)]

    async def _found(self, found: Holdings) -> tuple[list[tuple[int, str, str, int]], list[str], list[str]]:
        """(hour, field, example, count) rows, suggestion fields and handled marks that are theirs."""
        questions = {unanswered.normalise(text) for text in found.texts} - {""}
        if not questions:
            return [], [], []
        hours = self._hours()
        names = self.names
        async with self.redis.pipeline(transaction=False) as pipe:
            for hour in hours:
                pipe.hgetall(unanswered.counts_key(names, hour))
                pipe.hgetall(unanswered.examples_key(names, hour))
            pipe.zrange(names.kb_suggestions_key, 0, -1)
            pipe.zrange(names.unanswered_handled_key, 0, -1)
            *hourly, suggested, handled = await pipe.execute()
        rows = []
        for i, hour in enumerate(hours):
            counts, examples = hourly[2 * i], hourly[2 * i + 1]
            for field, count in counts.items():
                if str(field).partition(unanswered.SEPARATOR)[0] in questions:
                    rows.append((hour, str(field), str(examples.get(field, "")), int(count)))
        theirs = [str(s) for s in suggested if str(s).rpartition(unanswered.SEPARATOR)[2] in questions]
        marks = [str(m) for m in handled if str(m).rpartition(unanswered.SEPARATOR)[2] in questions]
        return rows, theirs, marks

    async def collect(self, found: Holdings) -> list[dict[str, Any]]:
        rows, suggested, _ = await self._found(found)
        listed: list[dict[str, Any]] = []
        for hour, field, example, count in rows:
            question, _, kind = field.partition(unanswered.SEPARATOR)
            row = {"hour": hour * HOUR_S, "question": question, "kind": kind, "example": example, "count": count}
            listed.append(row)
        for suggestion in suggested:
            entry_id, _, question = suggestion.rpartition(unanswered.SEPARATOR)
            listed.append({"suggested_for": entry_id, "question": question})
        return listed

    async def erase(self, found: Holdings) -> int:
        rows, suggested, marks = await self._found(found)
        names = self.names
        async with self.redis.pipeline(transaction=True) as pipe:
            for hour, field, _, _ in rows:
                pipe.hdel(unanswered.counts_key(names, hour), field)
                pipe.hdel(unanswered.examples_key(names, hour), field)
            if suggested:
                pipe.zrem(names.kb_suggestions_key, *suggested)
                pipe.hdel(names.kb_suggestion_examples_key, *suggested)
                pipe.hdel(names.kb_suggestion_counts_key, *suggested)
            if marks:
                pipe.zrem(names.unanswered_handled_key, *marks)
            await pipe.execute()
        return len(rows) + len(suggested) + len(marks)


class Requests:
    """The customer's own requests about their data (shared/privacy/requests.py)."""

    name = "privacy_requests"

    def __init__(self, requests: PrivacyRequests) -> None:
        self.requests = requests

    async def collect(self, found: Holdings) -> list[dict[str, Any]]:
        return [r.to_dict() for r in await self.requests.pending() if r.customer == found.customer.ref]

    async def erase(self, found: Holdings) -> int:
        return int(await self.requests.forget(found.customer))


# The audit log's entries keep who acted on what; an erased customer's conversation ids, message ids
# and address are replaced there by their pseudonym (the entries themselves, who did what when, stay).
# KEYS: the audit list. ARGV: the pseudonym, then the targets that are theirs.
_PSEUDONYMISE = """
local ids = {}
for i = 2, #ARGV do ids[ARGV[i]] = true end
local entries = redis.call('LRANGE', KEYS[1], 0, -1)
local changed = 0
for i, raw in ipairs(entries) do
  local ok, entry = pcall(cjson.decode, raw)
  if ok and type(entry) == 'table' and ids[entry.target] then
    entry.target = ARGV[1]
    redis.call('LSET', KEYS[1], i - 1, cjson.encode(entry))
    changed = changed + 1
  end
end
return changed
"""


class AuditTargets:
    """Admin actions on the customer's conversations, messages or number (services/monitor/audit.py)."""

    name = "admin_actions"

    def __init__(self, redis: Redis, names: Names) -> None:
        self.redis, self.names = redis, names

    async def collect(self, found: Holdings) -> list[dict[str, Any]]:
        """Entries whose target is one of their conversations, one of their messages (a dead letter
        replayed or discarded) or them (a proactive message refused: the channel and number as typed)."""
        entries = [orjson.loads(raw) for raw in await self.redis.lrange(self.names.audit_key, 0, -1)]
        named = found.conversations | found.message_ids
        return [e for e in entries if isinstance(e, dict) and (e.get("target") in named or _names(e, found))]

    async def erase(self, found: Holdings) -> int:
        targets = {str(entry["target"]) for entry in await self.collect(found)}
        if not targets:
            return 0
        pseudonym = found.customer.pseudonym(self.names.namespace)
        args = [pseudonym, *sorted(targets)]
        return int(await self.redis.eval(_PSEUDONYMISE, 1, self.names.audit_key, *args))


def _names(entry: dict[str, Any], found: Holdings) -> bool:
    """Whether an entry's target is the customer as `channel:id` (services/monitor/admin/outbound.py)."""
    channel, _, customer_id = str(entry.get("target") or "").partition(":")
    try:
        return Customer.parse(channel, customer_id) == found.customer
    except ValueError:
        return False


class Contacts:
    """A channel customer's last message time and opt-out of proactive messages (shared/contacts.py)."""

    name = "contact"

    def __init__(self, redis: Redis, names: Names) -> None:
        self.redis, self.names = redis, names

    def _key(self, found: Holdings) -> str:
        return self.names.contact_key(found.customer.channel, found.customer.id)

    async def collect(self, found: Holdings) -> dict[str, Any]:
        raw = await self.redis.hgetall(self._key(found))
        return {str(field): str(value) for field, value in raw.items()}

    async def erase(self, found: Holdings) -> int:
        return int(await self.redis.delete(self._key(found)))


class ConversationStates:
    """Each open conversation's state and quiet timer, the ratings asked and given, and the ratings'
    comments (shared/conversations.py); the per-day outcome counts hold no one's data and stay."""

    name = "conversation_states"

    def __init__(self, redis: Redis, names: Names) -> None:
        self.keys = ConversationKeys(names)
        self.redis = redis

    async def collect(self, found: Holdings) -> dict[str, Any]:
        ids = sorted(found.conversations)
        states = await self.redis.hmget(self.keys.open, ids) if ids else []
        return {
            "open": {c: _loads(state) for c, state in zip(ids, states, strict=True) if state is not None},
            "comments": [
                c for c in map(_loads, await self._comments()) if c.get("conversation") in found.conversations
            ],
        }

    async def _comments(self) -> list[str]:
        return [str(raw) for raw in await self.redis.lrange(self.keys.comments, 0, -1)]

    async def erase(self, found: Holdings) -> int:
        ids = sorted(found.conversations)
        if not ids:
            return 0
        erased = int(await self.redis.hdel(self.keys.open, *ids)) + int(await self.redis.zrem(self.keys.due, *ids))
        per_conversation = [prefix + c for c in ids for prefix in (self.keys.asked_prefix, self.keys.rating_prefix)]
        erased += int(await self.redis.delete(*per_conversation))
        for raw in await self._comments():
            if _loads(raw).get("conversation") in found.conversations:
                erased += int(await self.redis.lrem(self.keys.comments, 0, raw))
        return erased


def owners(redis: Redis, names: Names) -> tuple[Owner, ...]:
    """Every owner of customer data in Redis, in the order an export lists them."""
    return (
        ConversationLogs(redis, names),
        Memory(redis, names),
        Handoffs(redis, names),
        Unanswered(redis, names),
        Messages(redis, names),
        Users(redis, names),
        Contacts(redis, names),
        ConversationStates(redis, names),
        Requests(PrivacyRequests(redis, names)),
        AuditTargets(redis, names),
    )
