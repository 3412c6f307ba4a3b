"""API keys (`GATEWAY_API_KEYS`): `Authorization: Bearer <key>` on every `/v1/*` request.

Webhooks carry their platform's own proof (signature, secret token) and the page, the OpenAPI
document and the probes are public, so only the API prefix is guarded. CORS preflights carry no
credentials by design and pass through to the CORS handling.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from aiohttp.typedefs import Middleware

from shared.web import Problem

API_PREFIX = "/v1/"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Which configured key the caller presented, as a short digest (never the key itself): conversation
# tokens are issued to, and open conversations for, that key only. Unset without keys.
API_KEY_ID = web.RequestKey("api_key_id", str)


def key_id(key: str) -> str:
    return hashlib.blake2b(key.encode(), digest_size=12, person=b"atd-api-key").hexdigest()


def caller_key(request: web.Request) -> str:
    """The presented key's id ("" when no keys are configured)."""
    key: str = request.get(API_KEY_ID, "")
    return key


def key_matches(presented: str, keys: Sequence[bytes]) -> bool:
    """Constant time per key, and every key is compared, so timing tells neither which key nor
    how much of one matched."""
    candidate = presented.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(candidate, key)
    return matched


def unauthorized(detail: str) -> Problem:
    return Problem(401, detail, headers={"WWW-Authenticate": 'Bearer realm="atendimento"'})


def api_key_middleware(keys: Sequence[str]) -> Middleware:
    encoded = [key.encode() for key in keys]

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if encoded and request.path.startswith(API_PREFIX) and request.method != "OPTIONS":
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise unauthorized("Authorization: a Bearer API key is required")
            if not key_matches(token.strip(), encoded):
                raise unauthorized("Authorization: the API key is not valid")
            request[API_KEY_ID] = key_id(token.strip())
        return await handler(request)

    return middleware
