"""Who may use the admin area: ADMIN_TOKEN, sessions, CSRF and lock-out.

- The token is compared in constant time (digests of equal length, so neither its length nor a
  matching prefix shows in the timing).
- A browser logs in once with a form; the session lives in Redis (keyed by a hash of its id) and
  its id travels in an HttpOnly, SameSite=Strict cookie scoped to /admin. Sessions remember the
  token they were opened with: rotating ADMIN_TOKEN ends them all.
- Every state-changing request made with the cookie carries the session's CSRF token and, when the
  browser says where it comes from (Origin, Sec-Fetch-Site), must come from this origin.
- Scripts use `Authorization: Bearer <ADMIN_TOKEN>` instead (nothing ambient, so no CSRF).
- Lock-out: every token check of a client first counts the attempt (one atomic INCR), and only
  the first ADMIN_MAX_FAILURES attempts of a window of ADMIN_LOCKOUT_SECONDS (from its first
  attempt) reach the compare; the rest are refused unseen, so however many guesses arrive at once,
  at most that many are compared. A right token clears the count. The client is the real one
  behind TRUSTED_PROXIES (the right-most X-Forwarded-For hop that is not a trusted proxy), so an
  attacker locks out only itself, never an operator coming through the same nginx or ingress.
- Failed logins are audited at most ADMIN_MAX_FAILURES times (and the first lock-out) per client
  per window, and at most FAILED_AUDIT_PER_MINUTE times a minute in all: the audit log cannot be
  flooded anonymously. `atendimento_admin_token_checks_total` counts every check by outcome.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter
from redis.asyncio import Redis

from services.monitor.audit import Actor
from shared.names import Names
from shared.web import client_address

COOKIE = "atendimento_admin"
COOKIE_PATH = "/admin"
OPERATOR_MAX = 64
FAILED_AUDIT_PER_MINUTE = 60


def token_checks_counter(registry: CollectorRegistry) -> Counter:
    return Counter(
        "atendimento_admin_token_checks",
        "ADMIN_TOKEN checks by outcome: accepted and wrong were compared, locked_out refused unseen",
        ["outcome"],
        registry=registry,
    )


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
    def __init__(self, retry_after: int, *, audit: bool) -> None:
        super().__init__(f"locked out for {retry_after} s")
        self.retry_after = retry_after
        # Only the first refusal of a lock-out goes to the audit log.
        self.audit = audit


class AdminAuth:
    def __init__(
        self,
        redis: Redis,
        names: Names,
        token: str,
        *,
        session_s: int,
        max_failures: int,
        lockout_s: int,
        checks: Counter | None = None,
    ) -> None:
        self._redis = redis
        self._names = names
        self._token_digest = _digest(token) if token else b""
        self._session_s = session_s
        self._max_failures = max_failures
        self._lockout_s = lockout_s
        self._checks = checks

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
        """True for the right token, False for a wrong one; raises LockedOut, without comparing,
        once the client has used up its attempts (the count comes first, so racing guesses cannot
        all get through before it)."""
        key = self._names.admin_failures_key(client)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            # The window starts with its first attempt: refused attempts do not prolong it.
            pipe.expire(key, self._lockout_s, nx=True)
            pipe.ttl(key)
            attempts, _, ttl = await pipe.execute()
        if int(attempts) > self._max_failures:
            self._count("locked_out")
            raise LockedOut(max(int(ttl), 1), audit=int(attempts) == self._max_failures + 1)
        if self.enabled and hmac.compare_digest(_digest(candidate), self._token_digest):
            self._count("accepted")
            await self._redis.delete(key)
            return True
        self._count("wrong")
        return False

    async def audit_failure_allowed(self) -> bool:
        """Whether one more failed login may go to the audit log this minute (all clients together)."""
        key = self._names.admin_failed_audit_key(int(time.time() // 60))
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.expire(key, 120)
            count, _ = await pipe.execute()
        return int(count) <= FAILED_AUDIT_PER_MINUTE

    def _count(self, outcome: str) -> None:
        if self._checks is not None:
            self._checks.labels(outcome=outcome).inc()

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


def client_of(request: web.Request, trusted_proxies: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str:
    """The real client, behind the proxies of TRUSTED_PROXIES."""
    return client_address(request, trusted_proxies) or "unknown"


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
