"""The monitor's 503 answers, one shape each: what is down, what could not be done, and when to
try again (the dependencies come back within seconds when they come back at all)."""

from __future__ import annotations

from shared.web import Problem

RETRY_AFTER_S = 5


def unreachable(dependency: str, consequence: str) -> Problem:
    """503 for a dependency that did not answer, e.g. ("Redis", "sessions cannot be checked")."""
    return Problem(503, f"{dependency} is unreachable; {consequence}", headers={"Retry-After": str(RETRY_AFTER_S)})


def admin_disabled() -> Problem:
    """503 while ADMIN_TOKEN is not set: no retry helps until someone sets it."""
    return Problem(503, "ADMIN_TOKEN is not set: the admin area is disabled")
