"""Web conversations: the space the web API's ids live in, and the tokens that open them (SPEC 4).

- Every id a web caller sends lives in a space of its own, scoped by user: conversation `c` of
  user `u` is `web:{scope(u)}:{c}` inside the system, message `m` is `web:{scope(u)}:{m}`. So
  `telegram:42` sent by a web caller is just a web conversation of that name (never the Telegram
  chat 42, whose id is `telegram:42`), a web `message_id` never claims a Telegram update or a
  WhatsApp wamid, and another `user_id` posting into the same `conversation_id` gets a
  conversation of its own: it can neither read nor change this one. Answers show the caller its
  own ids; operators (admin area, logs) see the internal ones.
- Reading a conversation needs its `conversation_token`, `{scope}.{issued}.{mac}`: the scope names
  the user's space (the events path carries only the conversation id), `issued` when it was made
  (ms, base 36), the mac is an HMAC-SHA256 over the namespace, the internal conversation id, the
  issue time and the API key it was issued to (when keys are configured: another key posting as
  the same user gets a token of its own, and this one opens nothing with that key), with a secret
  every gateway replica shares. It is compared in constant time with the mac of every configured
  secret, so a rotation (a new secret first, the old one after it until clients have fresh
  tokens) logs nobody out.
- A token opens its conversation for CONVERSATION_TOKEN_TTL_SECONDS after it was issued; `/reset`
  in the conversation ends every token issued before it (the answer to the `/reset` brings a
  fresh one). Every answer carries a freshly issued token.
- The secret is CONVERSATION_TOKEN_SECRET; unset, the first gateway to need one generates it in
  Redis (SET NX) and every replica reads that one, so a fresh `make run` needs nothing.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from redis.asyncio import Redis

from shared.messages import ReplyMessage
from shared.names import Names
from shared.privacy.customer import SCOPE_BYTES, WEB_PREFIX
from shared.privacy.customer import user_scope as user_scope  # the web API and tests import it from here
from shared.web import Problem

MAC_BYTES = 16
SCOPE_RE = re.compile(rf"^[0-9a-f]{{{2 * SCOPE_BYTES}}}$")
ISSUED_RE = re.compile(r"^[0-9a-z]{1,12}$")
TOKEN_HEADER = "X-Conversation-Token"
TOKEN_QUERY = "token"


def scoped(scope: str, public_id: str) -> str:
    """The internal id of a web caller's conversation or message id."""
    return f"{WEB_PREFIX}{scope}:{public_id}"


def public_id(internal_id: str) -> str:
    """The id the web caller sent, from the internal one (other channels' ids are left alone)."""
    if internal_id.startswith(WEB_PREFIX):
        _, _, rest = internal_id[len(WEB_PREFIX) :].partition(":")
        return rest
    return internal_id


def scope_of(internal_id: str) -> str:
    return internal_id[len(WEB_PREFIX) :].partition(":")[0] if internal_id.startswith(WEB_PREFIX) else ""


def presented_token(request: web.Request) -> str | None:
    return request.headers.get(TOKEN_HEADER) or request.query.get(TOKEN_QUERY) or None


def forbidden() -> Problem:
    return Problem(
        403, f"{TOKEN_HEADER}: the conversation_token of this conversation is required (header or ?{TOKEN_QUERY}=)"
    )


def public_answer(reply: ReplyMessage, token: str) -> dict[str, Any]:
    """The 200 answer (and SSE `data`) of a web reply, with the caller's own ids."""
    body = reply.public_dict()
    body["message_id"] = public_id(reply.message_id)
    body["conversation_id"] = public_id(reply.conversation_id)
    if reply.merged_into:
        body["merged_into"] = public_id(reply.merged_into)
    body["conversation_token"] = token
    return body


@dataclass(slots=True)
class ConversationTokens:
    redis: Redis
    names: Names
    # CONVERSATION_TOKEN_SECRET: the first signs, all are accepted. Empty: one generated in Redis.
    configured: Sequence[str] = ()
    ttl_s: float = 30 * 86_400.0
    clock: Callable[[], float] = time.time
    _secrets: tuple[bytes, ...] = field(default=(), init=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)

    async def issue(self, conversation: str, key: str = "") -> str:
        """A token of an internal web conversation id for the caller with API key id `key` (""
        without keys); raises REDIS_ERRORS while the secret is unknown."""
        keys = await self._keys()
        issued = _base36(int(self.clock() * 1000))
        return f"{scope_of(conversation)}.{issued}.{self._mac(keys[0], conversation, issued, key)}"

    async def open(self, public_conversation: str, token: str | None, key: str = "") -> str | None:
        """The internal conversation that `token` opens under the caller's id, or None."""
        scope, _, _ = (token or "").partition(".")
        if not SCOPE_RE.match(scope):
            return None
        conversation = scoped(scope, public_conversation)
        return conversation if await self.verify(conversation, token or "", key) else None

    async def verify(self, conversation: str, token: str, key: str = "") -> bool:
        """Whether `token` opens `conversation` for API key id `key`: made by us for them, not
        expired, not ended by a `/reset`. Redis is asked only about a token that is ours."""
        scope, issued, presented = _parts(token)
        if scope != scope_of(conversation) or issued is None:
            return False
        matched = False
        for secret in await self._keys():  # every secret, so the timing does not tell which matched
            expected = self._mac(secret, conversation, _base36(issued), key)
            matched |= hmac.compare_digest(expected.encode(), presented.encode())
        if not matched or self.clock() * 1000 - issued > self.ttl_s * 1000:
            return False
        reset = await self.redis.get(self.names.conversation_token_reset_key(conversation))
        return reset is None or issued >= int(reset)

    async def end_all(self, conversation: str) -> None:
        """`/reset`: every token of the conversation issued until now opens it no more."""
        now_ms = int(self.clock() * 1000)
        await self.redis.set(self.names.conversation_token_reset_key(conversation), now_ms, px=int(self.ttl_s * 1000))

    def _mac(self, secret: bytes, conversation: str, issued: str, key: str) -> str:
        message = f"conversation-token\x00{self.names.namespace}\x00{conversation}\x00{issued}\x00{key}".encode()
        # The one-shot digest: no HMAC object per token (a token is issued with every answer).
        digest = hmac.digest(secret, message, "sha256")[:MAC_BYTES]
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    async def _keys(self) -> tuple[bytes, ...]:
        if not self._secrets:
            async with self._lock:
                if not self._secrets:
                    self._secrets = tuple(s.encode() for s in self.configured) or (await self._shared_secret(),)
        return self._secrets

    async def _shared_secret(self) -> bytes:
        key = self.names.conversation_token_secret_key
        await self.redis.set(key, secrets.token_urlsafe(32), nx=True)
        value = await self.redis.get(key)
        return str(value).encode()


def _parts(token: str) -> tuple[str, int | None, str]:
    """(scope, issue time in ms or None when malformed, mac) of a token."""
    scope, _, rest = token.partition(".")
    issued, _, mac = rest.partition(".")
    if not ISSUED_RE.match(issued) or not mac:
        return scope, None, mac
    return scope, int(issued, 36), mac


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, digit = divmod(number, 36)
        out = digits[digit] + out
        if not number:
            return out
