"""Every RabbitMQ and Redis name this deployment owns, all under `ATENDIMENTO_NAMESPACE`.

Two namespaces on one broker and one Redis never share a queue, an exchange or a key, because
nothing is named anywhere else.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field

from shared.messages import Channel, ReplyMessage


@functools.lru_cache(maxsize=4096)
def route_token(value: str) -> str:
    """A short, dot-free stand-in for a free-form id inside an AMQP topic routing key. Kept for
    the ids seen lately: a reply needs its gateway's and its conversation's twice each."""
    return hashlib.blake2b(value.encode(), digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class Names:
    namespace: str
    shards: int
    # `{namespace}:{{namespace}}`: every key starts with the namespace and carries it as a Redis
    # Cluster hash tag, so all keys of a deployment share one hash slot and every Lua script and
    # multi-key command stays valid on a cluster (tests/test_key_slots.py checks each of them).
    # Made once: a message's keys read it some twenty times.
    key_prefix: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_prefix", f"{self.namespace}:{{{self.namespace}}}")

    # RabbitMQ -----------------------------------------------------------------------------
    @property
    def inbound_exchange(self) -> str:
        return f"{self.namespace}.inbound"

    def shard_queue(self, shard: int) -> str:
        return f"{self.namespace}.inbound.{shard}"

    @property
    def shard_queues(self) -> list[str]:
        return [self.shard_queue(i) for i in range(self.shards)]

    def shard_of(self, conversation_id: str) -> int:
        """Stable across processes and restarts (unlike `hash()`), so a conversation keeps its shard."""
        digest = hashlib.blake2b(conversation_id.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.shards

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.namespace}.dead"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.namespace}.dead-letters"

    @property
    def replies_exchange(self) -> str:
        return f"{self.namespace}.replies"

    def gateway_reply_queue(self, instance_id: str) -> str:
        return f"{self.namespace}.replies.gateway.{route_token(instance_id)}"

    def delivery_queue(self, channel: Channel) -> str:
        return f"{self.namespace}.delivery.{channel}"

    @staticmethod
    def reply_routing_key(channel: Channel, gateway_id: str, conversation_id: str) -> str:
        """`{channel}.{gateway}.{conversation}`: the accepting gateway binds its own token for its
        waiters, any gateway binds a conversation token while it streams that conversation."""
        return f"{channel}.{route_token(gateway_id)}.{route_token(conversation_id)}"

    @staticmethod
    def waiters_routing_key(gateway_id: str) -> str:
        """For what only the requests waiting at the accepting gateway need to hear (a web message
        merged into another one's reply, or one the bot stays silent on): the gateway's binding
        matches it, no conversation binding does (a token is hex, never "waiters")."""
        return f"web.{route_token(gateway_id)}.waiters"

    def route_of(self, reply: ReplyMessage) -> str:
        """Where a reply goes: merged and silenced ones only to the accepting gateway's waiters,
        all others to that gateway, to whoever streams the conversation, or to the delivery queue."""
        if reply.merged_into or reply.silenced:
            return self.waiters_routing_key(reply.gateway_id)
        return self.reply_routing_key(reply.channel, reply.gateway_id, reply.conversation_id)

    @staticmethod
    def gateway_binding(gateway_id: str) -> str:
        return f"web.{route_token(gateway_id)}.*"

    @staticmethod
    def conversation_binding(conversation_id: str) -> str:
        return f"web.*.{route_token(conversation_id)}"

    # Redis ---------------------------------------------------------------------------------
    def gateway_push_channel(self, gateway_id: str) -> str:
        """The Redis pub/sub channel of the web replies to the messages a gateway accepted (its
        waiting requests hear them there; services/worker/push.py)."""
        return f"{self.namespace}:push:gateway:{route_token(gateway_id)}"

    def conversation_push_channel(self, conversation_id: str) -> str:
        """The Redis pub/sub channel of a web conversation's replies, for the gateways streaming it."""
        return f"{self.namespace}:push:conversation:{route_token(conversation_id)}"

    def push_channels(self, reply: ReplyMessage) -> tuple[str, ...]:
        """Where a web reply is pushed, as `route_of` routes one: merged and silenced ones only to
        the accepting gateway's waiters, all others to whoever streams the conversation too."""
        gateway = self.gateway_push_channel(reply.gateway_id)
        if reply.merged_into or reply.silenced:
            return (gateway,)
        return gateway, self.conversation_push_channel(reply.conversation_id)

    def claim_key(self, message_id: str) -> str:
        return f"{self.key_prefix}:msg:{message_id}"

    def reply_key(self, message_id: str) -> str:
        return f"{self.key_prefix}:reply:{message_id}"

    @property
    def conversation_token_secret_key(self) -> str:
        """The web conversation tokens' secret when CONVERSATION_TOKEN_SECRET is unset."""
        return f"{self.key_prefix}:conversation-token-secret"

    def conversation_token_reset_key(self, conversation_id: str) -> str:
        """When `/reset` last ended a web conversation's tokens (ms since the epoch)."""
        return f"{self.key_prefix}:conversation-token-reset:{conversation_id}"

    def attempts_key(self, message_id: str) -> str:
        return f"{self.key_prefix}:attempts:{message_id}"

    def delivered_key(self, message_id: str) -> str:
        return f"{self.key_prefix}:delivered:{message_id}"

    def outbound_order_key(self, conversation_id: str) -> str:
        """The conversation's channel replies not yet delivered, oldest first (the worker appends
        as it commits; gateways send only the head, so several of them keep the order)."""
        return f"{self.key_prefix}:outbound:{conversation_id}"

    def memory_key(self, conversation_id: str) -> str:
        return f"{self.key_prefix}:memory:{conversation_id}"

    def fallback_streak_key(self, conversation_id: str) -> str:
        """How many fallback replies in a row the conversation has had (handoff after a few)."""
        return f"{self.key_prefix}:fallback-streak:{conversation_id}"

    def offered_key(self, conversation_id: str) -> str:
        """The options the conversation's last reply offered (services/worker/state.py `Offered`), while they
        may still be chosen."""
        return f"{self.key_prefix}:offered:{conversation_id}"

    def conversation_log_key(self, conversation_id: str) -> str:
        return f"{self.key_prefix}:conversation-log:{conversation_id}"

    def contact_key(self, channel: str, address: str) -> str:
        """A channel customer's last message and opt-out (shared/contacts.py)."""
        return f"{self.key_prefix}:contact:{channel}:{address}"

    def receipt_key(self, message_id: str) -> str:
        """What became of a message sent on a channel (a reply or a proactive message): the
        platform's delivery statuses, and for a proactive one where it went (shared/receipts.py)."""
        return f"{self.key_prefix}:receipt:{message_id}"

    def wamid_key(self, wamid: str) -> str:
        """The message a WhatsApp message id (`wamid`) the Graph API returned belongs to."""
        return f"{self.key_prefix}:wamid:{wamid}"

    def early_statuses_key(self, wamid: str) -> str:
        """Statuses of a wamid that came before the send that returned it was recorded."""
        return f"{self.key_prefix}:early-statuses:{wamid}"

    @property
    def conversations_key(self) -> str:
        """Sorted set of conversation ids by last activity, for the operators' views."""
        return f"{self.key_prefix}:conversations"

    @property
    def rate_limit_prefix(self) -> str:
        return f"{self.key_prefix}:ratelimit"

    def pacing_prefix(self, channel: str) -> str:
        """Outbound pacing buckets of one channel, shared by every gateway's delivery consumer."""
        return f"{self.key_prefix}:pace:{channel}"

    def stats_fine_key(self, bucket_start: int) -> str:
        return f"{self.key_prefix}:stats:10s:{bucket_start}"

    def stats_hour_key(self, bucket_start: int) -> str:
        return f"{self.key_prefix}:stats:1h:{bucket_start}"

    def stats_flush_key(self, token: str) -> str:
        """A statistics flush applied (shared/recorder.py): a resent flush is not counted twice."""
        return f"{self.key_prefix}:stats:flush:{token}"

    @property
    def stats_total_key(self) -> str:
        return f"{self.key_prefix}:stats:total"

    @property
    def users_key(self) -> str:
        return f"{self.key_prefix}:users:last-seen"

    @property
    def forgotten_key(self) -> str:
        """Members of the last-seen sets (users, conversations) erased lately, by the SHA-1 of the
        member and when: a statistics flush drops them (shared/recorder.py)."""
        return f"{self.key_prefix}:forgotten"

    @property
    def instances_key(self) -> str:
        return f"{self.key_prefix}:instances"

    def heartbeat_key(self, service: str, instance_id: str) -> str:
        return f"{self.key_prefix}:heartbeat:{service}:{instance_id}"

    @property
    def shard_moves_key(self) -> str:
        """Shards lent by their owner to a less loaded worker while they have a backlog (hash)."""
        return f"{self.key_prefix}:shard-moves"

    def worker_load_key(self, instance_id: str) -> str:
        """A worker's backlog, as the others weigh it before lending it a shard (short-lived)."""
        return f"{self.key_prefix}:worker-load:{instance_id}"

    # Operators (monitor and admin) ------------------------------------------------------------
    def handoff_assignee_key(self, conversation_id: str) -> str:
        """The agent who took the handed-off conversation ("assign to me" in the admin inbox)."""
        return f"{self.key_prefix}:handoff-assignee:{conversation_id}"

    def handoff_key(self, conversation_id: str) -> str:
        """A conversation handed to a human: the bot stays silent while this key lives."""
        return f"{self.key_prefix}:handoff:{conversation_id}"

    @property
    def handoffs_key(self) -> str:
        """Sorted set of handed-off conversation ids by start time, to list them."""
        return f"{self.key_prefix}:handoffs"

    def admin_session_key(self, session_id: str) -> str:
        return f"{self.key_prefix}:admin:session:{session_id}"

    def admin_failures_key(self, client: str) -> str:
        return f"{self.key_prefix}:admin:login-failures:{client}"

    def admin_failed_audit_key(self, minute: int) -> str:
        """Failed logins audited in one minute, all clients together (the audit log's flood guard)."""
        return f"{self.key_prefix}:admin:failed-audit:{minute}"

    @property
    def audit_key(self) -> str:
        """The admin audit log, newest first; kept apart from the application logs."""
        return f"{self.key_prefix}:audit"

    # What operators teach the knowledge base (shared/phrasings.py, shared/unanswered.py) -------
    @property
    def kb_phrasings_key(self) -> str:
        """The overlay of taught phrasings: entry id -> JSON list of extra questions."""
        return f"{self.key_prefix}:kb:phrasings"

    @property
    def kb_phrasings_version_key(self) -> str:
        """Raised with every change of the overlay; each worker rebuilds its engine when it moves."""
        return f"{self.key_prefix}:kb:phrasings-version"

    @property
    def kb_suggestions_key(self) -> str:
        """Sorted set of suggested phrasings (`entry id, question`) by when a customer last made one."""
        return f"{self.key_prefix}:kb:suggestions"

    @property
    def kb_suggestion_examples_key(self) -> str:
        return f"{self.key_prefix}:kb:suggestions:examples"

    @property
    def kb_suggestion_counts_key(self) -> str:
        return f"{self.key_prefix}:kb:suggestions:counts"

    @property
    def unanswered_handled_key(self) -> str:
        """Sorted set of the questions and suggestions an operator acted on, by when: not listed again."""
        return f"{self.key_prefix}:unanswered:handled"

    # Customers' data (shared/privacy/) --------------------------------------------------------------
    @property
    def privacy_requests_key(self) -> str:
        """Hash of the customers' pending requests about their data (an export), by customer."""
        return f"{self.key_prefix}:privacy:requests"

    @property
    def retention_lock_key(self) -> str:
        """Held by the one monitor sweeping what is older than RETENTION_DAYS."""
        return f"{self.key_prefix}:privacy:retention-lock"

    @property
    def dead_letters_lock_key(self) -> str:
        """Held by the one pass over the dead-letter queue that takes letters out (shared/privacy)."""
        return f"{self.key_prefix}:privacy:dead-letters-lock"
