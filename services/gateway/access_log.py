"""One log line per request answered by the gateway (method, route, status, time), written inside
the request's span so it carries its `trace_id`: a slow or failed request leads to its trace.
Probes are left out (they would drown the rest). With LOG_LEVEL above INFO it costs one level check."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from shared.logs import log_info
from shared.metrics import UNMATCHED_ROUTE
from shared.web import PROBE_PATHS

log = logging.getLogger("atendimento.access")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def access_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Put it just inside the span middleware: the line is written in the span, with the status
    problem_middleware made of any error."""
    if not log.isEnabledFor(logging.INFO) or request.path in PROBE_PATHS:
        return await handler(request)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else UNMATCHED_ROUTE
        elapsed_ms = round(1000 * (time.perf_counter() - started), 1)
        # No number in the text beside the status: a run of digits sends a line through the full
        # personal-data masking (shared/logs.py), several times the cost of the line itself.
        log_info(
            log,
            f"{request.method} {route} {status}",
            {"route": route, "status": status, "duration_ms": elapsed_ms},
        )
