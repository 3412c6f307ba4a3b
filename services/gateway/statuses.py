"""WhatsApp's `statuses` notifications (SPEC 4): what became of each message we sent.

Each status names the `wamid` the Graph API returned for one of our sends; the delivery recorded
which message that was (shared/receipts.py), so the status lands on our message: sent, delivered,
read, or failed with the Graph API's error code and title (e.g. 131047 when the 24-hour window had
closed). Failures are counted by code in `atendimento_delivery_failures_total`. A status of a
wamid not recorded yet waits a little for the send that returned it (the notification may beat
the send's answer); one of a wamid never recorded (older than the receipts, or sent by another
system on the same number) is acknowledged and forgotten. A status that cannot be read is
skipped, never refused: Meta would retry the whole notification for days.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from services.gateway.intake import unavailable
from services.gateway.keys import METRICS, RECEIPTS
from shared.receipts import RANKS, Failure, StatusUpdate, count_status
from shared.store import REDIS_ERRORS

log = logging.getLogger(__name__)


async def record_statuses(app: web.Application, payload: dict[str, Any]) -> None:
    """Record every readable status of a notification (503 when Redis is down: Meta retries)."""
    receipts, metrics = app[RECEIPTS], app[METRICS].delivery
    try:
        for wamid, update in parse_statuses(payload):
            message_id = await receipts.message_or_wait(wamid, update)
            if message_id is None:
                continue  # counted when its send is recorded (count_status)
            await receipts.record(message_id, update)
            count_status(metrics, message_id, update)
    except REDIS_ERRORS:
        raise unavailable("Redis") from None


def parse_statuses(payload: dict[str, Any]) -> Iterator[tuple[str, StatusUpdate]]:
    """(wamid, status) of every status of the notification that reads as the Graph API documents it."""
    for entry in _list(payload.get("entry")):
        for change in _list(entry.get("changes")):
            value = change.get("value")
            if change.get("field") != "messages" or not isinstance(value, dict):
                continue
            for status in _list(value.get("statuses")):
                parsed = _status(status)
                if parsed is not None:
                    yield parsed


def _status(status: dict[str, Any]) -> tuple[str, StatusUpdate] | None:
    wamid, name, timestamp = status.get("id"), status.get("status"), status.get("timestamp")
    if not isinstance(wamid, str) or not wamid or name not in RANKS or name == "accepted":
        log.debug("WhatsApp status skipped: %r", status)
        return None
    try:
        at_s = float(str(timestamp))
    except (TypeError, ValueError):
        at_s = time.time()  # Meta always sends one; without it, when we heard of it
    failure = _failure(_list(status.get("errors"))) if name == "failed" else None
    return wamid, StatusUpdate(str(name), at_s, failure)


def _failure(errors: list[dict[str, Any]]) -> Failure:
    """The first error's code and title (its `error_data.details` as the detail)."""
    if not errors:
        return Failure(0, "failed without an error")
    error = errors[0]
    code = error.get("code")
    data = error.get("error_data")
    details = data.get("details") if isinstance(data, dict) else None
    return Failure(
        code if isinstance(code, int) and not isinstance(code, bool) else 0,
        str(error.get("title") or error.get("message") or ""),
        str(details or error.get("message") or ""),
    )


def _list(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []
