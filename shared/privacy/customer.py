"""One customer, as an operator names them (a channel and its id) and as the system files them.

- WhatsApp: the phone number (`from`, digits only); each business number the customer wrote to is a
  conversation of its own, `whatsapp:{phone_number_id}:{phone}`.
- Telegram: the chat id; its conversation is `telegram:{chat_id}`.
- Web: the caller's `user_id`; every conversation of theirs is `web:{scope}:{id}`, the scope a
  one-way digest of the user id (`user_scope`, shared with the gateway), so the ids of their
  messages carry it too.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass

from shared.messages import CHANNELS, Channel, InboundMessage, parse_channel

WEB_PREFIX = "web:"
SCOPE_BYTES = 12  # 96 bits: no one finds a user id sharing another one's scope
ID_MAX = 256
_PHONE = re.compile(r"^\d{6,20}$")
_CHAT = re.compile(r"^-?\d{1,20}$")


@functools.lru_cache(maxsize=4096)
def user_scope(user_id: str) -> str:
    """The space a web caller's ids live in (services/gateway/web_conversations.py); cached, as an
    erasure's scan asks it for every key and the gateway for every request."""
    return hashlib.blake2b(user_id.encode(), digest_size=SCOPE_BYTES, person=b"atd-web-user").hexdigest()


@dataclass(frozen=True, slots=True)
class Customer:
    channel: Channel
    id: str

    @classmethod
    def parse(cls, channel: object, customer_id: object) -> Customer:
        """From an operator's input; ValueError naming the field that is wrong."""
        try:
            parsed = parse_channel(channel)
        except ValueError:
            raise ValueError(f"channel: must be one of {', '.join(CHANNELS)}") from None
        raw = str(customer_id or "").strip()
        if parsed == "whatsapp":
            raw = re.sub(r"[\s()+.-]", "", raw)
            if not _PHONE.match(raw):
                raise ValueError("id: a WhatsApp customer is their phone number, with the country code")
        elif parsed == "telegram" and not _CHAT.match(raw):
            raise ValueError("id: a Telegram customer is their chat id (a number)")
        if not raw or len(raw) > ID_MAX:
            raise ValueError(f"id: required, at most {ID_MAX} characters")
        return cls(parsed, raw)

    @classmethod
    def of_message(cls, message: InboundMessage) -> Customer:
        if message.channel == "telegram":
            return cls("telegram", message.conversation_id.removeprefix("telegram:"))
        return cls(message.channel, message.user_id)

    @property
    def ref(self) -> str:
        return f"{self.channel}:{self.id}"

    def owns(self, conversation_id: str) -> bool:
        """Whether a conversation (or, on the web, a message) id is this customer's."""
        if self.channel == "telegram":
            return conversation_id == f"telegram:{self.id}"
        if self.channel == "whatsapp":
            parts = conversation_id.split(":")
            return len(parts) == 3 and parts[0] == "whatsapp" and parts[2] == self.id
        return conversation_id.startswith(f"{WEB_PREFIX}{user_scope(self.id)}:")

    def pseudonym(self, namespace: str) -> str:
        """Who was erased, for the audit log, without their id: anyone who knows the id can check it."""
        digest = hashlib.blake2b(f"{namespace}\x00{self.ref}".encode(), digest_size=10, person=b"atd-erased")
        return f"customer:{digest.hexdigest()}"
