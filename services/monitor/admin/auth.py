"""Who may use the admin area: ADMIN_TOKEN, sessions, CSRF and lock-out.

- The token is compared in constant time (digests of equal length, so neither its length nor a
  matching prefix shows in the timing).
- A browser logs in once with a form; the session lives in Redis (keyed by a hash of its id) and
  its id travels in an HttpOnly, SameSite=Strict cookie scoped to /admin. Sessions remember the
  token they were opened with: rotating ADMIN_TOKEN ends them all.
- Every state-changing request made with the cookie carries the session's CSRF token and, when the
  browser says where it comes from (Origin, Sec-Fetch-Site), must come from this origin.
- Scripts use `Authorization: Bearer <ADMIN_TOKEN>` instead (nothing ambient, so no CSRF).
- After ADMIN_MAX_FAILURES wrong tokens from one client within ADMIN_LOCKOUT_SECONDS, that client is
  refused, right token or not, until ADMIN_LOCKOUT_SECONDS pass without another try.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson
from aiohttp import web
from redis.asyncio import Redis

from services.monitor.audit import Actor
from shared.names import Names

COOKIE = "atendimento_admin"
COOKIE_PATH = "/admin"
OPERATOR_MAX = 64


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    operator: str
    client: str
    csrf: str
    created_at: float

    @property
    def actor(self) -> Actor:
        return Actor(self.operator, self.client, self.id[:8])


class LockedOut(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"locked out for {retry_after} s")
        self.retry_after = retry_after


class AdminAuth:
    def __init__(
        self, redis: Redis, names: Names, token: str, *, session_s: int, max_failures: int, lockout_s: int
    ) -> None:
        self._redis = redis
        self._names = names
        self._token_digest = _digest(token) if token else b""
        self._session_s = session_s
        self._max_failures = max_failures
        self._lockout_s = lockout_s

    @property
    def enabled(self) -> bool:
        return bool(self._token_digest)

    @property
    def session_s(self) -> int:
        return self._session_s

    @property
    def _token_mark(self) -> str:
        return hashlib.sha256(b"session:" + self._token_digest).hexdigest()[:16]

    async def check_token(self, client: str, candidate: str) -> bool:
        """True for the right token; counts a wrong one. Raises LockedOut while the client is locked."""
        key = self._names.admin_failures_key(client)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.ttl(key)
            failures, ttl = await pipe.execute()
        if failures is not None and int(failures) >= self._max_failures:
            raise LockedOut(max(int(ttl), 1))
        if self.enabled and hmac.compare_digest(_digest(candidate), self._token_digest):
            await self._redis.delete(key)
            return True
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, self._lockout_s)
            await pipe.execute()
        return False

    async def open_session(self, operator: str, client: str) -> Session:
        session = Session(secrets.token_urlsafe(32), operator, client, secrets.token_urlsafe(32), time.time())
        record = {
            "operator": operator,
            "client": client,
            "csrf": session.csrf,
            "created_at": session.created_at,
            "token": self._token_mark,
        }
        await self._redis.set(self._session_key(session.id), orjson.dumps(record), ex=self._session_s)
        return session

    async def session(self, session_id: str) -> Session | None:
        if not self.enabled or not session_id:
            return None
        raw = await self._redis.get(self._session_key(session_id))
        if not raw:
            return None
        record = orjson.loads(raw)
        if record.get("token") != self._token_mark:
            return None
        return Session(session_id, record["operator"], record["client"], record["csrf"], record["created_at"])

    async def close_session(self, session_id: str) -> None:
        await self._redis.delete(self._session_key(session_id))

    def _session_key(self, session_id: str) -> str:
        # Only a hash of the id is stored: reading Redis does not hand out live sessions.
        return self._names.admin_session_key(hashlib.sha256(session_id.encode()).hexdigest())


def client_of(request: web.Request) -> str:
    return request.remote or "unknown"


def bearer_of(request: web.Request) -> str | None:
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" and credentials.strip() else None


def same_origin(request: web.Request) -> bool:
    """What the browser says about where a request comes from, when it says anything."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site in ("same-origin", "none")
    # Browsers without Fetch Metadata: the Origin header. The pages' Referrer-Policy (no-referrer)
    # makes a form post say "Origin: null", which proves nothing either way, so it is refused here.
    origin = request.headers.get("Origin")
    return origin is None or urlsplit(origin).netloc == request.host


def csrf_ok(session: Session, supplied: str | None) -> bool:
    return supplied is not None and hmac.compare_digest(supplied.encode(), session.csrf.encode())


def set_session_cookie(request: web.Request, response: web.StreamResponse, session: Session, max_age: int) -> None:
    response.set_cookie(
        COOKIE,
        session.id,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        samesite="Strict",
        # Behind a TLS-terminating proxy the request itself is plain HTTP.
        secure=request.secure or request.headers.get("X-Forwarded-Proto") == "https",
    )


def clear_session_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE, path=COOKIE_PATH)
