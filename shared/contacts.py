"""What the system knows of each channel customer for proactive messages (SPEC 4 `POST /v1/outbound`):
when they last wrote (WhatsApp's 24-hour customer-service window) and whether they opted out.

One Redis hash per channel and address (the WhatsApp number, the Telegram chat id), written by
the gateway as it accepts each message and read by whoever sends a proactive message (the
gateway's API, the admin form). Times are kept as maxima, so webhook calls that race each other
record the same state whatever order they land in: the customer is opted out while their latest
opt-out command is newer than their latest other message ("any later message opts back in").
"""

from __future__ import annotations

import re
import time
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from shared.messages import OPT_OUT_OPTION, Channel, InboundMessage, ReplyMessage
from shared.names import Names

# Whole-message commands (folded: case and accents ignored, punctuation around them too).
OPT_OUT_WORDS = frozenset({"parar", "sair", "stop", "unsubscribe"})
# WhatsApp's customer-service window: free text within 24 hours of the customer's last message.
WINDOW_S = 24 * 3600
# A customer silent for longer is forgotten (a template still reaches them; an opt-out is kept as long).
CONTACT_TTL_S = 400 * 24 * 3600
_EDGES = re.compile(r"^[\W_]+|[\W_]+$")

# KEYS[1] the contact; ARGV: at (ms), opt-out (1/0), TTL (s), then field/value pairs of the address.
_SEEN = """
local field = ARGV[2] == '1' and 'opt_out_ms' or 'opt_in_ms'
for _, name in ipairs({'last_in_ms', field}) do
  local old = tonumber(redis.call('HGET', KEYS[1], name) or '0')
  if tonumber(ARGV[1]) > old then redis.call('HSET', KEYS[1], name, ARGV[1]) end
end
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


def is_opt_out(text: str, option: str = "") -> bool:
    """A tap on an opt-out button, or a message that is nothing but an opt-out word."""
    if option == OPT_OUT_OPTION:
        return True
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    folded = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _EDGES.sub("", folded.strip()) in OPT_OUT_WORDS


def address_of(message: InboundMessage | ReplyMessage) -> str | None:
    """Where a proactive message to this customer goes (the `to` of the API), None for the web."""
    if message.channel == "whatsapp":
        return str(message.metadata.get("to") or "") or None
    if message.channel == "telegram":
        return str(message.metadata.get("chat_id") or "") or None
    return None


@dataclass(slots=True)
class Clock:
    """The wall clock of the 24-hour window; tests move it (`offset_s`) instead of waiting a day."""

    offset_s: float = 0.0

    def now(self) -> float:
        return time.time() + self.offset_s


@dataclass(frozen=True, slots=True)
class Contact:
    last_in_ms: float = 0.0
    opted_out: bool = False
    # The business number they last wrote to (WhatsApp), so an answer goes out from it.
    phone_number_id: str = ""

    def within_window(self, now_s: float) -> bool:
        return self.last_in_ms > 0 and now_s * 1000 - self.last_in_ms < WINDOW_S * 1000


@dataclass(frozen=True, slots=True)
class ContactBook:
    redis: Redis
    names: Names
    clock: Clock = field(default_factory=Clock)

    async def seen_all(self, messages: list[InboundMessage | ReplyMessage]) -> None:
        """Record customers' messages as accepted now (raises REDIS_ERRORS). A ReplyMessage is the
        gateway's own answer to one it cannot read (a sticker): the customer wrote all the same."""
        for message in messages:
            await self.seen(message, self.clock.now())

    async def seen(self, message: InboundMessage | ReplyMessage, at_s: float) -> None:
        """Record a customer's message, accepted at `at_s` (raises REDIS_ERRORS)."""
        address = address_of(message)
        if address is None:
            return
        extra: list[Any] = []
        if message.channel == "whatsapp" and message.metadata.get("phone_number_id"):
            extra = ["phone_number_id", str(message.metadata["phone_number_id"])]
        opt_out = "1" if isinstance(message, InboundMessage) and is_opt_out(message.text, message.option) else "0"
        key = self.names.contact_key(message.channel, address)
        await self.redis.eval(_SEEN, 1, key, int(at_s * 1000), opt_out, CONTACT_TTL_S, *extra)

    async def get(self, channel: Channel, address: str) -> Contact:
        """What is known of `address` on `channel` (raises REDIS_ERRORS)."""
        raw = await self.redis.hgetall(self.names.contact_key(channel, address))
        opt_out, opt_in = float(raw.get("opt_out_ms", 0)), float(raw.get("opt_in_ms", 0))
        return Contact(
            last_in_ms=float(raw.get("last_in_ms", 0)),
            opted_out=opt_out > opt_in,
            phone_number_id=str(raw.get("phone_number_id", "")),
        )
