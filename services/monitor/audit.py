"""The admin area's audit log: kept in shared/audit.py, which the worker writes too (a customer's own
erasure is audited like an operator's)."""

from __future__ import annotations

from shared.audit import AUDIT_LOGGER, KEEP_ENTRIES, Actor, AuditLog

__all__ = ["AUDIT_LOGGER", "KEEP_ENTRIES", "Actor", "AuditLog"]
