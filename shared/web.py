"""aiohttp pieces every service shares: problem+json errors, security headers, JSON responses,
the probe routes (`/monitoring/live`, `/monitoring/health`) and `/metrics`."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http import HttpProcessingError
from opentelemetry import trace
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

log = logging.getLogger(__name__)

PROBLEM_TYPE = "about:blank"
# The probe routes (`Probes.install`): they carry no work, so their 503s (at start, while
# draining) are no errors.
PROBE_PATHS = frozenset({"/monitoring/live", "/monitoring/health", "/metrics"})
HealthCheck = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors {ancestors}; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS: Mapping[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY.format(ancestors="'none'"),
}


def framable_by(origins: tuple[str, ...]) -> dict[str, str]:
    """Headers for a page that the listed sites may show in a frame (none listed: nobody may).
    X-Frame-Options has no way to list sites, so it is left out when some are: frame-ancestors
    is what browsers obey."""
    if not origins:
        return {}
    return {"Content-Security-Policy": CONTENT_SECURITY_POLICY.format(ancestors=" ".join(origins))}


class Problem(Exception):
    """An error the client should see as application/problem+json."""

    def __init__(
        self, status: int, detail: str, *, title: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title or _reason(status)
        self.headers = dict(headers or {})


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def client_address(request: web.Request, trusted: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str:
    """The client's address: the peer, or, when the peer is a trusted proxy, the last address in
    `X-Forwarded-For` that is not one of ours. Anything left of an untrusted hop could be forged."""
    peer = request.remote or ""
    hops = [hop.strip() for hop in ",".join(request.headers.getall("X-Forwarded-For", [])).split(",") if hop.strip()]
    address = peer
    while hops and _is_trusted(address, trusted):
        address = hops.pop()
    return address


def _is_trusted(address: str, trusted: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def json_response(data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


def problem_response(problem: Problem) -> web.Response:
    body = {"type": PROBLEM_TYPE, "title": problem.title, "status": problem.status, "detail": problem.detail}
    return web.Response(
        body=orjson.dumps(body),
        status=problem.status,
        headers={**problem.headers, "Content-Type": "application/problem+json"},
    )


# nginx's code for "client closed request": what the metrics and the span record when nobody was
# left to answer. It never reaches a client.
CLIENT_CLOSED_REQUEST = 499


def client_gone(request: web.BaseRequest) -> bool:
    return request.transport is None or request.transport.is_closing()


_HTTP_DETAILS = {
    404: "no resource at this path",
    405: "method not allowed on this path",
    413: "body: larger than the limit for this endpoint",
}


@web.middleware
async def problem_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every error leaves as problem+json, whoever raised it (our code or aiohttp)."""
    try:
        return await handler(request)
    except Problem as problem:
        return problem_response(problem)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        detail = _HTTP_DETAILS.get(exc.status) or exc.text or exc.reason
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After", "WWW-Authenticate")}
        return problem_response(Problem(exc.status, detail, headers=headers))
    except (ConnectionError, HttpProcessingError) as exc:
        if client_gone(request):
            # The client went away (a closed tab, an upload aborted mid-body): nothing to answer
            # and nothing went wrong here, so no 5xx and no error count (SPEC section 5).
            log.debug("client went away during %s %s: %r", request.method, request.path, exc)
            return web.Response(status=CLIENT_CLOSED_REQUEST)
        if isinstance(exc, HttpProcessingError):  # a body that breaks its own framing
            return problem_response(Problem(400, f"body: malformed ({exc.message})"))
        return _unhandled(request, exc)
    except Exception as exc:
        return _unhandled(request, exc)


def _unhandled(request: web.Request, exc: BaseException) -> web.Response:
    """A bug: logged with its stack, and recorded on the request's span (shared/telemetry.py's
    server span, which sees only the 500 made of it); without tracing that span is a no-op."""
    log.exception("unhandled error on %s %s", request.method, request.path)
    trace.get_current_span().record_exception(exc)
    return problem_response(Problem(500, "internal error; it was logged"))


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    framable = "frame-ancestors 'none'" not in response.headers.get("Content-Security-Policy", "frame-ancestors 'none'")
    for name, value in SECURITY_HEADERS.items():
        if name == "X-Frame-Options" and framable:
            continue  # the handler named who may frame it (framable_by)
        response.headers.setdefault(name, value)


def install_security_headers(app: web.Application) -> None:
    """Security headers on every response of `app`, set just before its headers are sent:
    problem+json errors, static files and event streams included."""
    app.on_response_prepare.append(add_security_headers)


def new_metrics_registry() -> CollectorRegistry:
    """A registry per application (no process-wide global), with the standard process_* metrics."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


@dataclass(slots=True)
class Probes:
    """Liveness answers while the loop runs; readiness asks the service's own health check
    (`health` None: the service serves its own /monitoring/health, as the monitor does)."""

    health: HealthCheck | None
    registry: CollectorRegistry
    draining: bool = field(default=False)

    async def live(self, request: web.Request) -> web.Response:
        return json_response({"status": "alive"})

    async def ready(self, request: web.Request) -> web.Response:
        if self.draining:
            return json_response({"status": "draining", "checks": {}}, status=503)
        assert self.health is not None  # routed only when there is a check
        ok, checks = await self.health()
        return json_response({"status": "up" if ok else "down", "checks": checks}, status=200 if ok else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def install(self, app: web.Application) -> None:
        """Route the probes, and keep them under one key in every service: the server runner turns
        readiness off through it on SIGTERM."""
        app[PROBES] = self
        app.router.add_get("/monitoring/live", self.live)
        if self.health is not None:
            app.router.add_get("/monitoring/health", self.ready)
        app.router.add_get("/metrics", self.metrics)


PROBES = web.AppKey("probes", Probes)
