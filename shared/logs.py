"""Structured JSON logs: one orjson object per line on stdout, and optionally in rotated files.

Every line carries `ts`, `level`, `service` and `logger`; a line written inside a span carries its
`trace_id` and `span_id` (the ids Jaeger shows, so a log line leads to its trace); a line written
while a message is handled carries its `message_id` and `conversation_id` (see `log_context`).
Phone numbers, e-mail addresses, CPF numbers and secrets are masked in every string of every line
by `mask_pii`, whoever logged them. The lines logged in the event loop reach stdout together, at
most one write every few milliseconds (`BatchedStreamHandler`). The lines written once per message
go through `log_info`: the same line, made without a LogRecord where stdout alone takes it.

With `LOG_DIR` set, the same lines also go to `combined.log` (everything), `error.log` (ERROR and
above) and `audit.log` (the `atendimento.audit` logger: admin actions), each rotated by size.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import re
import sys
import time
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from itertools import islice
from logging.handlers import RotatingFileHandler
from pathlib import Path
from types import MappingProxyType
from typing import Any, TextIO

import orjson
from opentelemetry import trace

AUDIT_LOGGER = "atendimento.audit"

# Attributes every LogRecord has; anything else passed with `extra=` becomes a JSON field.
_RECORD_ATTRIBUTES = tuple(vars(logging.LogRecord("", 0, "", 0, "", None, None)))
_RESERVED = frozenset(_RECORD_ATTRIBUTES) | {"message", "asctime"}
# Fields the formatter itself writes: never PII, and masking would only cost time.
_TRUSTED = frozenset({"ts", "level", "service", "logger", "trace_id", "span_id"})

# Fields of the message being handled, added to every line logged meanwhile (a ContextVar follows
# the asyncio task, so concurrent messages never see each other's ids).
_context: ContextVar[Mapping[str, str]] = ContextVar("atendimento_log_context", default=MappingProxyType({}))


class LogContext:
    """`log_context`'s block: a class, not a generator, as it is entered a few times a message."""

    __slots__ = ("_fields", "_token")

    def __init__(self, fields: Mapping[str, str | None]) -> None:
        self._fields = fields

    def __enter__(self) -> None:
        self._token = _context.set({**_context.get(), **{k: v for k, v in self._fields.items() if v}})

    def __exit__(self, *exc: object) -> None:
        _context.reset(self._token)


def log_context(**fields: str | None) -> LogContext:
    """Add these fields (e.g. message_id, conversation_id) to every line logged inside the block."""
    return LogContext(fields)


# PII masking -------------------------------------------------------------------------------------
_SECRET = (
    r"(?:authorization|api[_-]?key|access[_-]?token|refresh[_-]?token|token|secret|password|passwd|senha|signature)"
)
# `key=value`, `key: value`, `"key": "value"` where the key names a secret.
_SECRET_ASSIGNMENT = re.compile(
    rf"(?i)\b([\w.-]*?{_SECRET}[\w-]*[\"']?\s*[:=]\s*[\"']?)(?!(?:bearer|basic) \*)([^\s\"',;&]+)"
)
# In a sentence: "minha senha é hunter2", "my password is hunter2".
_SECRET_SAID = re.compile(r"(?i)\b((?:senha|password|passwd|token)\s+(?:é|e|eh|is|was|era)\s+)(\S+)")
# Just followed by it: "senha 123456", "token abc123XYZ"; a value has a digit or a symbol, so words
# ("senha forte", "token de acesso") stay.
_SECRET_FOLLOWED = re.compile(r"(?i)\b((?:senha|password|passwd|token)\s+)(?=\S*[\d_!#$%&*])(\S{4,})")
_SECRET_PATTERNS = (
    re.compile(r"(?i)\b(bearer|basic)\s+[\w.~+/=-]+"),  # HTTP authorization schemes
    # Telegram bot token, alone or inside /bot<token>/ URLs; never the digits ending an id's part
    # ("web:<scope>:<id>", whose scope is hex).
    re.compile(r"(?:(?<=/bot)|(?<![\w:]))\d{6,12}:[\w-]{30,}"),
    re.compile(r"\bsk-[\w-]{16,}"),  # OpenAI-style API keys
    re.compile(r"\beyJ[\w-]+\.[\w-]+\.[\w-]+"),  # JWTs
    re.compile(r"(?i)\bsha256=[0-9a-f]{16,}"),  # webhook signatures
)
_SECRET_KEY = re.compile(rf"(?i){_SECRET}")
_EMAIL = re.compile(r"\b([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)")
# CPF written with its punctuation (000.000.000-00); an unpunctuated 11-digit CPF is caught by the
# phone pattern below, and then masked whole once its check digits show it is a CPF.
_CPF = re.compile(r"(?<![\w.])\d{3}\.\d{3}\.\d{3}-?\d{2}(?![\w])")
# CNPJ (00.000.000/0000-00), punctuated or not: masked whole (a bare one once its check digits agree).
_CNPJ = re.compile(r"(?<![\w./-])\d{2}\.?\d{3}\.?\d{3}/?\d{4}-?\d{2}(?![\w/])")
# A card number: 13-19 digits, maybe in groups split by spaces or dashes; masked but the last 4
# when its Luhn check digit agrees.
_CARD = re.compile(r"(?<![\w./-])\d(?:[ -]?\d){12,18}(?![\w/]|[.-]\d)")
# Phone-like: optional +country, up to three groups (area code possibly in parentheses), then the
# subscriber number 4-5 + 4 digits, split by spaces, dashes or dots ("11.98765.4321"). The
# look-arounds keep it off dates, versions, uuids and hex ids. The subscriber number may be dotted
# too, the mobile's leading 9 apart: "+55 (11) 9.8888.7777".
_PHONE = re.compile(r"(?<![\w@./-])\+?(?:\(?\d{1,4}\)?[ .-]?){0,3}(?:\d{4,5}|\d[ .]\d{4})[ .-]?\d{4}(?![\w@/]|[.-]\d)")
_DIGIT = re.compile(r"\d")
# What every form above needs somewhere: a run of 6+ digits (with separators) that no letter or
# digit comes before or after (each number pattern's look-arounds refuse one; so the digits inside
# a hex id such as a message id's never send it through the full masking, even right after its
# colon), an "@", or one of the secret markers (a superset of _SECRET's words and the secret
# patterns' prefixes, lower-cased; "/bot" for a Telegram token inside its URL, where a letter comes
# before its digits). Most logged values (ids, names, short texts) have none and skip the full
# masking; substring tests are several times cheaper than one case-insensitive alternation tried at
# every position.
_DIGIT_RUN = r"\d[\d .()-]{4,}\d\b"
# The run is searched from the character before it, in an ASCII set the regex engine skips to, then
# checked to be no letter of another alphabet either (a pattern opening with \b is tried at every
# position: 1.0 against 0.7 us on a message id); and it is matched at the text's start.
_RUN_AFTER = re.compile(rf"[^0-9A-Za-z_](?<!\w){_DIGIT_RUN}")
_RUN_AT_START = re.compile(_DIGIT_RUN)
_SECRET_MARKERS = (
    "bearer", "basic", "sk-", "eyj", "sha256=", "authorization", "api", "token", "secret", "passw", "senha",
    "signature", "/bot",
)  # fmt: skip


# The markers as one case-sensitive alternation, searched in the lower-cased text: one pass in C
# instead of a generator testing each marker in turn (a few microseconds on every logged string).
_SECRET_MARKER = re.compile("|".join(re.escape(marker) for marker in _SECRET_MARKERS))
# Every marker has one of these characters, which hex ids lack: a scan for them, in the text itself
# (no other character lower-cases to one of them), spares most ids the markers' (0.3 against 0.6 us).
_MARKER_CHARS = re.compile("[rstpyRSTPY/]")


def _may_hold_pii(text: str) -> bool:
    if "@" in text or _RUN_AFTER.search(text) or _RUN_AT_START.match(text):
        return True
    return _MARKER_CHARS.search(text) is not None and _SECRET_MARKER.search(text.lower()) is not None


@functools.lru_cache(maxsize=1024)
def _secret_key(key: str) -> bool:
    """Whether a field's name names a secret (the same few names come back on every line)."""
    return _SECRET_KEY.search(key) is not None


def mask_pii(text: str) -> str:
    """Mask phone and card numbers (all but the last 4 digits), e-mail addresses (all but the first
    letter and the domain), CPF and CNPJ numbers (whole) and tokens/secrets (whole) in free text."""
    if len(text) <= _REMEMBERED_CHARS:
        return _mask_short(text)
    return _mask(text)


# Most logged strings are short and come back line after line (a conversation's id, an engine's
# name, a route, a message's template): their masked form is remembered, not searched for again.
_REMEMBERED_CHARS = 96


@functools.lru_cache(maxsize=4096)
def _mask_short(text: str) -> str:
    return _mask(text)


def _mask(text: str) -> str:
    if not text or not _may_hold_pii(text):
        return text
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(_mask_secret, text)
    text = _SECRET_ASSIGNMENT.sub(lambda m: m.group(1) + "***", text)
    text = _SECRET_SAID.sub(lambda m: m.group(1) + "***", text)
    text = _SECRET_FOLLOWED.sub(lambda m: m.group(1) + "***", text)
    if "@" in text:
        text = _EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)
    text = _CPF.sub("***.***.***-**", text)
    text = _CNPJ.sub(_mask_cnpj, text)
    text = _CARD.sub(_mask_card, text)
    return _PHONE.sub(_mask_phone, text)


def _mask_secret(match: re.Match[str]) -> str:
    scheme = match.group(1) if match.re.groups else None
    return f"{scheme} ***" if scheme else "***"


def _mask_phone(match: re.Match[str]) -> str:
    found = match.group(0)
    digits = _DIGIT.findall(found)
    if len(digits) < 8:
        return found
    if len(digits) == 11 and _is_cpf("".join(digits)):
        return "*" * len(found)
    return _all_but_last_four(found, len(digits))


def _all_but_last_four(found: str, digits: int) -> str:
    """`found` with every digit but its last four starred, the punctuation kept."""
    keep = digits - 4
    masked: list[str] = []
    for char in found:
        if char.isdigit() and keep > 0:
            masked.append("*")
            keep -= 1
        else:
            masked.append(char)
    return "".join(masked)


def _mask_cnpj(match: re.Match[str]) -> str:
    found = match.group(0)
    if found.isdigit() and not _is_cnpj(found):
        return found  # 14 bare digits that are no CNPJ: the phone or card rules decide
    return _DIGIT.sub("*", found)


def _mask_card(match: re.Match[str]) -> str:
    found = match.group(0)
    digits = _DIGIT.findall(found)
    if not _luhn("".join(digits)):
        return found
    return _all_but_last_four(found, len(digits))


def _luhn(digits: str) -> bool:
    total = 0
    for position, digit in enumerate(reversed(digits)):
        n = int(digit) * (2 if position % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def _is_cnpj(digits: str) -> bool:
    """The two check digits of a CNPJ (mod 11 over weights 5..2,9..2, then 6..2,9..2)."""
    if len(set(digits)) == 1:
        return False
    numbers = [int(d) for d in digits]
    for size in (12, 13):
        weights = [*range(size - 7, 1, -1), *range(9, 1, -1)]
        remainder = sum(n * w for n, w in zip(numbers[:size], weights, strict=True)) % 11
        if (0 if remainder < 2 else 11 - remainder) != numbers[size]:
            return False
    return True


def _is_cpf(digits: str) -> bool:
    """The two check digits of a CPF (mod-11 over weights 10..2, then 11..2)."""
    if len(set(digits)) == 1:
        return False
    numbers = [int(d) for d in digits]
    for size in (9, 10):
        total = sum(n * w for n, w in zip(numbers[:size], range(size + 1, 1, -1), strict=True))
        if (total * 10 % 11) % 10 != numbers[size]:
            return False
    return True


def _masked(value: Any, key: str = "") -> Any:
    """Strings masked wherever they sit in the structure; a string under a secret-named key whole."""
    if isinstance(value, str):
        return "***" if key and _secret_key(key) else mask_pii(value)
    # Numbers, booleans (ints too) and None before the Mapping test, an abstract class's slow check.
    if value is None or isinstance(value, int | float):
        return value
    if isinstance(value, Mapping):
        return {k: _masked(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_masked(item) for item in value]
    return mask_pii(str(value))


# Formatting and handlers -------------------------------------------------------------------------
# A line's milliseconds, ".000Z" to ".999Z", found by index rather than formatted on every line.
_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))
# Field values written as they are, told by their exact type: cheaper than `_masked`'s checks.
_AS_IS = frozenset({bool, int, float, type(None)})


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service
        # The timestamp up to its seconds, made once a second rather than on every line; one pair,
        # so a thread never reads one second's text with another second.
        self._second: tuple[int, str] = (-1, "")

    def _timestamp(self, created: float) -> str:
        second, text = self._second
        if int(created) != second:
            second = int(created)
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, text)
        return text + _MILLIS[int((created - second) * 1000)]  # LogRecord's msecs, from `created`

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {"message": record.getMessage(), **_context.get()}
        fields.update(_extra(record))
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return self.line(record.levelname, record.name, record.created, fields)

    def line(self, level: str, logger: str, created: float, fields: dict[str, Any]) -> str:
        """The JSON line of a record (`format`) or of a line made without one (`log_info`)."""
        entry: dict[str, Any] = {
            "ts": self._timestamp(created),
            "level": level,
            "service": self.service,
            "logger": logger,
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = trace.format_trace_id(span.trace_id)
            entry["span_id"] = trace.format_span_id(span.span_id)
        _add_masked(entry, fields)
        return orjson.dumps(entry, default=str).decode()


def _extra(record: logging.LogRecord) -> Iterable[tuple[str, Any]]:
    """The fields given with `extra=`. makeRecord adds them after the attributes LogRecord.__init__
    sets (refusing any of those), so they are the attributes past those: about half the time of
    testing every attribute. Each is tested only when a formatter has added "message" or "asctime"."""
    attributes = vars(record)
    extra = islice(attributes.items(), len(_RECORD_ATTRIBUTES), None)
    if "message" in attributes or "asctime" in attributes:
        return [(k, v) for k, v in extra if k not in _RESERVED]
    return extra


def _add_masked(entry: dict[str, Any], fields: dict[str, Any]) -> None:
    """`fields` masked into `entry` by `_masked`, but the formatter's own (`_TRUSTED`); a number, a
    flag or None, told by one test of the exact type, is written as it is without the call."""
    for key, value in fields.items():
        if key not in _TRUSTED:
            entry[key] = value if type(value) in _AS_IS else _masked(value, key)


def setup_logging(
    service: str,
    level: str,
    log_dir: Path | None = None,
    *,
    max_bytes: int = 10 * 2**20,
    backups: int = 5,
) -> None:
    # A line holds none of the caller's file, line and function, thread, process or
    # multiprocessing names: the records need not find them (logging's documented switches; the
    # caller's frame is a walk up the stack on every line). The fields read None then.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    formatter = JsonFormatter(service)
    stdout = BatchedStreamHandler(sys.stdout)
    handlers: list[logging.Handler] = [stdout]
    audit = logging.getLogger(AUDIT_LOGGER)
    for handler in audit.handlers[:]:
        audit.removeHandler(handler)
        handler.close()
    if log_dir is not None:
        combined = _rotating(log_dir / "combined.log", max_bytes, backups)
        errors = _rotating(log_dir / "error.log", max_bytes, backups)
        errors.setLevel(logging.ERROR)
        handlers += [combined, errors]
        audit_file = _rotating(log_dir / "audit.log", max_bytes, backups)
        audit_file.setFormatter(formatter)
        audit.addHandler(audit_file)  # and, propagating, to stdout and combined.log as well
    for handler in handlers:
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(True)  # Python warnings become JSON lines too, not bare stderr text
    audit.setLevel(logging.INFO)  # admin actions are recorded whatever LOG_LEVEL says
    # aio-pika narrates every reconnect attempt at INFO; our own broker log says what matters.
    logging.getLogger("aio_pika").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("aiormq").setLevel(max(logging.WARNING, root.level))


# How often the lines logged in an event loop are written at most, and how many characters of them
# are written at once, without waiting (a pipe holds 64 KiB).
FLUSH_EVERY_S = 0.005
KEPT_CHARS = 32 * 1024


class BatchedStreamHandler(logging.StreamHandler[TextIO]):
    """A stream handler that writes the lines logged in an event loop together, not in a system
    call each (two a message, the access line and the worker's; the call costs more than making a
    line). The handler keeps them itself, as the stream may write through (PYTHONUNBUFFERED, which
    the image sets, makes every write of stdout a system call). They reach the stream in one write
    and one flush when their turn of the loop ends, or, within `every_s` of the last write, `every_s`
    after it: under load, one write every few milliseconds; in a quiet moment, at the turn's end.
    A WARNING or above is written at once, after the lines kept (the lines an operator waits for,
    and those before a crash), and so is a line logged without a running loop (start-up, a thread,
    shutdown), as StreamHandler does; logging.shutdown, at exit, writes any still kept. A process
    killed outright (SIGKILL, os._exit) loses the INFO and DEBUG lines of its last `every_s`."""

    def __init__(self, stream: TextIO, *, every_s: float = FLUSH_EVERY_S) -> None:
        super().__init__(stream)
        self._every_s = every_s
        self._flush_on: asyncio.AbstractEventLoop | None = None  # the loop a flush is due on
        self._kept: list[str] = []  # the lines not written yet, in order
        self._kept_chars = 0
        self._written_at = -math.inf  # time.monotonic() of the last write of kept lines

    def emit(self, record: logging.LogRecord) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            super().emit(record)
            return
        try:
            line = self.format(record) + self.terminator
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
            return
        self._keep(line, loop, urgent=record.levelno >= logging.WARNING)

    def keep(self, line: str) -> None:
        """An INFO line made already (`log_info`), kept as `emit` keeps a record's."""
        with self.lock:  # type: ignore[union-attr]  # made in Handler.__init__
            try:
                loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            self._keep(line + self.terminator, loop, urgent=False)

    def _keep(self, line: str, loop: asyncio.AbstractEventLoop | None, *, urgent: bool) -> None:
        self._kept.append(line)
        self._kept_chars += len(line)
        if loop is None or urgent or self._kept_chars >= KEPT_CHARS:
            self.flush()
        elif self._flush_on is not loop:
            self._flush_later(loop)

    def _flush_later(self, loop: asyncio.AbstractEventLoop) -> None:
        # A flush due on another loop (one that has since closed, in tests) happens now.
        if self._flush_on is not None:
            self.flush()
        self._flush_on = loop
        wait = self._written_at + self._every_s - time.monotonic()
        if wait > 0:
            loop.call_later(wait, self._flush_due)
        else:
            loop.call_soon(self._flush_due)

    def flush(self) -> None:
        """Write the lines kept, then flush the stream (when due, and at shutdown)."""
        with self.lock:  # type: ignore[union-attr]  # made in Handler.__init__
            if self._kept:
                lines, self._kept, self._kept_chars = "".join(self._kept), [], 0
                self.stream.write(lines)
                self._written_at = time.monotonic()
            super().flush()

    def _flush_due(self) -> None:
        self._flush_on = None
        self.flush()


def log_info(logger: logging.Logger, message: str, fields: Mapping[str, Any]) -> None:
    """`logger.info(message, extra=fields)` for the lines written once per message (the gateway's
    access line, the worker's "message processed"). Where every handler the line reaches is a
    BatchedStreamHandler sharing one JsonFormatter, and nothing filters (stdout alone: the default
    and the containers' setup), the same JSON line is made without a LogRecord and logging's
    handler chain, which cost more than the line's formatting; elsewhere (LOG_DIR's files, a test's
    capturing handler) it goes through logging as any other line. `message` is written as it is."""
    if not logger.isEnabledFor(logging.INFO):
        return
    direct = _direct_handlers(logger)
    if direct is None:
        logger.info(message, extra=fields)
        return
    formatter, handlers = direct
    try:
        line = formatter.line("INFO", logger.name, time.time(), {"message": message, **_context.get(), **fields})
    except Exception:  # a line that cannot be written: logging reports it (handleError), never the caller
        logger.info(message, extra=fields)
        return
    for handler in handlers:
        handler.keep(line)


def _direct_handlers(logger: logging.Logger) -> tuple[JsonFormatter, list[BatchedStreamHandler]] | None:
    """The handlers an INFO record of `logger` would reach (logging's own walk up the hierarchy),
    when `log_info` may hand them its line itself; None when not."""
    handlers: list[BatchedStreamHandler] = []
    formatter: JsonFormatter | None = None
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        for handler in current.handlers:
            if handler.level > logging.INFO:
                continue
            if type(handler) is not BatchedStreamHandler or handler.filters:
                return None
            if type(handler.formatter) is not JsonFormatter or formatter not in (None, handler.formatter):
                return None  # another format, or lines that differ between handlers
            formatter = handler.formatter
            handlers.append(handler)
        current = current.parent if current.propagate else None
    if formatter is None:
        return None  # no handler: logging's last resort decides
    return formatter, handlers


# Owner reads and writes, its group (a log shipper) reads, nobody else: logs hold customer words.
LOG_FILE_MODE = 0o640


class _PrivateRotatingFileHandler(RotatingFileHandler):
    """Creates each file (the first one and every one after a rotation) with LOG_FILE_MODE, and
    narrows a file that already existed with a wider mode."""

    def _open(self) -> Any:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, LOG_FILE_MODE)
        os.fchmod(fd, LOG_FILE_MODE)
        return os.fdopen(fd, self.mode, encoding=self.encoding, errors=self.errors)


def _rotating(path: Path, max_bytes: int, backups: int) -> RotatingFileHandler:
    # Several processes may share a LOG_DIR (make run): appends stay whole lines, and each process
    # rotates when the file it writes reaches the size.
    return _PrivateRotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
