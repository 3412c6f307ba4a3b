"""Logs SREs can search (issue 6): JSON lines with trace ids, LOG_DIR files, and no PII in them."""

from __future__ import annotations

import asyncio
import io
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import orjson
import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from shared.logs import (
    AUDIT_LOGGER,
    KEPT_CHARS,
    BatchedStreamHandler,
    JsonFormatter,
    log_context,
    log_info,
    mask_pii,
    setup_logging,
)
from tests.support import AMQP_URL, Stack, eventually, web_id
from tests.support.otlp import Collector, tracing_env
from tests.support.pipeline import wait_ready
from tests.support.tracing import new_traceparent, post_traced, spans_of

PHONE, EMAIL, CPF = "+55 11 98765-4321", "maria.souza@example.com", "123.456.789-09"
# What must never reach a log file: each piece of PII in any of the ways it could be written.
LEAKS = ("98765-4321", "987654321", "maria.souza", "souza@", "123.456.789-09", "12345678909", "456.789")


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line parsed as a JSON object (fails on the first that is not)."""
    lines = []
    for line in text.splitlines():
        if line.strip():
            entry = orjson.loads(line)
            assert isinstance(entry, dict), line
            lines.append(entry)
    return lines


async def test_a_message_with_pii_leaves_json_lines_with_its_trace_id_and_no_pii(
    stack: Stack, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    collector = Collector()
    log_dir = tmp_path / "logs"
    try:
        stack.extra_env.update(tracing_env(await collector.http()), LOG_DIR=str(log_dir), LOG_LEVEL="DEBUG")
        gateway = await stack.start("gateway")
        worker = await stack.start("worker")
        await wait_ready(stack)

        traceparent, trace_id, _ = new_traceparent()
        message_id = f"m-{uuid.uuid4().hex}"
        text = f"Meu telefone é {PHONE}, e-mail {EMAIL}, CPF {CPF}. Qual o prazo de entrega?"
        status, answer = await post_traced(
            http, gateway.url, {"user_id": "maria", "message_id": message_id, "text": text}, traceparent
        )
        assert status == 200, answer
        await _publish_malformed(stack.namespace, f"not json, but PII: {PHONE} {EMAIL}")

        # Logs name the message and conversation by their ids inside the system (user-scoped).
        internal_id = web_id("maria", message_id)

        def logged_lines() -> list[dict[str, Any]]:
            return json_lines((log_dir / "combined.log").read_text())

        async def processed() -> dict[str, Any] | None:
            found = [e for e in logged_lines() if e.get("message_id") == internal_id and "processingTime" in e]
            return found[0] if found else None

        line = await eventually(processed, what="the 'message processed' line in combined.log")
        assert line["level"] == "INFO" and line["service"] == "worker"
        assert line["conversation_id"] == web_id("maria", answer["conversation_id"])
        assert isinstance(line["processingTime"], float | int)
        # The trace id in the line is the caller's, and its span is the message's CONSUMER span.
        assert line["trace_id"] == trace_id
        spans = await spans_of(collector, trace_id, ("atendimento-worker", f"process {stack.namespace}.inbound"))
        (consumer,) = [span for span in spans if span.kind == "CONSUMER"]
        assert line["span_id"] == consumer.span_id

        # The DEBUG line is tied to the message and its trace, and says how long the text was, never
        # the text itself (LOG_MESSAGE_TEXT is off by default).
        (debug,) = [
            e for e in logged_lines() if e["message"] == "generating a reply" and e.get("message_id") == internal_id
        ]
        assert debug["trace_id"] == trace_id
        assert debug["chars"] == len(text) and "text" not in debug

        async def malformed_logged() -> bool:
            return (log_dir / "error.log").exists() and "malformed" in (log_dir / "error.log").read_text()

        await eventually(malformed_logged, what="the malformed message's ERROR line in error.log")
    finally:
        # In a thread: the collector, in this event loop, takes the services' last spans as they stop.
        await asyncio.to_thread(stack.stop_all)
        await collector.stop()

    files = sorted(log_dir.iterdir())
    assert {"combined.log", "error.log", "audit.log"} <= {f.name for f in files}
    for file in files:
        content = file.read_text()
        assert not [leak for leak in LEAKS if leak in content], (file.name, [leak for leak in LEAKS if leak in content])
        entries = json_lines(content)
        assert all({"ts", "level", "service", "logger", "message"} <= set(e) for e in entries), file.name
    assert {e["level"] for e in json_lines((log_dir / "error.log").read_text())} <= {"ERROR", "CRITICAL"}
    for service in (gateway, worker):  # stdout too: every line JSON, no PII
        assert json_lines(service.logs())
        assert not [leak for leak in LEAKS if leak in service.logs()]


async def _publish_malformed(namespace: str, body: str) -> None:
    """A body that is no message, straight onto a shard queue: the worker logs an ERROR."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(f"{namespace}.inbound")
        await exchange.publish(aio_pika.Message(body.encode(), message_id=f"bad-{uuid.uuid4().hex}"), routing_key="0")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """setup_logging reconfigures the root and audit loggers of this (pytest's) process."""
    root, audit = logging.getLogger(), logging.getLogger(AUDIT_LOGGER)
    saved = (root.handlers[:], root.level, audit.handlers[:], audit.level)
    yield
    for handler in root.handlers + audit.handlers:
        if handler not in saved[0] + saved[2]:
            handler.close()
    root.handlers[:], audit.handlers[:] = saved[0], saved[2]
    root.setLevel(saved[1])
    audit.setLevel(saved[3])


def test_log_dir_files_split_by_level_and_audit_and_rotate_by_size(tmp_path: Path, restore_logging: None) -> None:
    setup_logging("monitor", "INFO", tmp_path, max_bytes=4096, backups=2)
    logging.getLogger(AUDIT_LOGGER).info("admin released a conversation", extra={"token": "s3cr3t-v4lue"})
    logging.getLogger("services.monitor").error("Redis down while reading %s", EMAIL)
    logging.getLogger("services.monitor").debug("not at INFO")
    for number in range(100):
        logging.getLogger("services.monitor").info("filler line %d", number)

    audit = json_lines((tmp_path / "audit.log").read_text())
    assert [e["message"] for e in audit] == ["admin released a conversation"]
    assert audit[0]["token"] == "***"
    errors = json_lines((tmp_path / "error.log").read_text())
    assert [e["message"] for e in errors] == ["Redis down while reading m***@example.com"]
    rotated = sorted(path.name for path in tmp_path.glob("combined.log*"))
    assert rotated == ["combined.log", "combined.log.1", "combined.log.2"]  # 2 backups kept, older dropped
    everything = "".join(path.read_text() for path in tmp_path.glob("combined.log*"))
    assert "not at INFO" not in everything and "filler line 99" in everything
    assert all(json_lines(path.read_text()) for path in tmp_path.glob("combined.log*"))
    # Owner and group only, the rotated files too (they hold customer words, even masked).
    assert {path.name: oct(path.stat().st_mode & 0o777) for path in tmp_path.iterdir()} == {
        name: oct(0o640) for name in ("audit.log", "error.log", *rotated)
    }


class _CountedFlushes(io.StringIO):
    """A stream that says what reached it: what was flushed, one entry per flush."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []
        self._sent = 0

    def flush(self) -> None:
        text = self.getvalue()
        if len(text) > self._sent:
            self.flushed.append(text[self._sent :])
            self._sent = len(text)


def _handler_logger(stream: io.StringIO, every_s: float = 3600.0) -> logging.Logger:
    """A logger writing the bare message through a BatchedStreamHandler; by default one that waits
    an hour after a write, so what is kept stays kept whatever the machine's pace."""
    handler = BatchedStreamHandler(stream, every_s=every_s)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(f"test.batched.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger


def test_lines_of_a_quiet_loop_turn_reach_stdout_in_one_flush_when_the_turn_ends() -> None:
    stream = _CountedFlushes()
    logger = _handler_logger(stream)

    async def turn() -> list[str]:
        logger.info("one")
        logger.info("two")
        before = list(stream.flushed)  # nothing reached the stream within the turn
        await asyncio.sleep(0)  # the turn ends (yielding to the loop: no timing)
        await asyncio.sleep(0)
        return before

    assert asyncio.run(turn()) == []
    assert stream.flushed == ["one\ntwo\n"]
    logger.info("no loop: at once")
    assert stream.flushed[-1] == "no loop: at once\n"


class _WritesThrough(io.StringIO):
    """A stream like stdout under PYTHONUNBUFFERED: each write is a system call of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_lines_of_turns_soon_after_a_write_wait_and_a_warning_writes_them_at_once() -> None:
    """Within `every_s` of a write, the lines of the following turns are kept; a WARNING is written
    at once with them, in order, in one write."""
    stream = _WritesThrough()
    logger = _handler_logger(stream)

    async def turns() -> list[list[str]]:
        seen = []
        logger.info("first")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        seen.append(list(stream.writes))  # a quiet turn: written when it ended
        for text in ("two", "three"):
            logger.info(text)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        seen.append(list(stream.writes))  # kept past their turns' ends
        logger.warning("four")
        seen.append(list(stream.writes))  # within the turn
        return seen

    assert asyncio.run(turns()) == [["first\n"], ["first\n"], ["first\n", "two\nthree\nfour\n"]]


def test_lines_kept_after_a_write_all_arrive_in_order_when_the_wait_ends() -> None:
    stream = _WritesThrough()
    logger = _handler_logger(stream, every_s=0.2)
    lines = [f"line {number}" for number in range(5)]

    async def turns() -> None:
        for text in lines:
            logger.info(text)
            await asyncio.sleep(0)

        async def all_written() -> bool:  # polled, the loop running the handler's timer meanwhile
            return "".join(stream.writes).count("\n") == len(lines)

        await eventually(all_written, timeout=10, interval=0.005, what="the kept lines written")

    asyncio.run(turns())
    assert "".join(stream.writes) == "".join(f"{text}\n" for text in lines)
    assert len(stream.writes) < len(lines)  # the first at its turn's end, the others together


def test_kept_lines_are_written_at_once_when_they_fill_the_buffer() -> None:
    stream = _WritesThrough()
    logger = _handler_logger(stream)
    line = "x" * 1023  # 1 KiB with its newline
    filling = KEPT_CHARS // 1024

    async def turn() -> list[list[str]]:
        logger.info("first")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        for _ in range(filling - 1):
            logger.info(line)
        before = list(stream.writes)
        logger.info(line)
        return [before, list(stream.writes)]

    before, after = asyncio.run(turn())
    assert before == ["first\n"]
    assert after == ["first\n", f"{line}\n" * filling]


def test_a_line_from_a_thread_is_written_at_once_after_those_kept() -> None:
    stream = _WritesThrough()
    logger = _handler_logger(stream)

    async def turns() -> None:
        logger.info("first")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        logger.info("kept")
        await asyncio.to_thread(logger.info, "from a thread")

    asyncio.run(turns())
    assert stream.writes == ["first\n", "kept\n", "from a thread\n"]


def test_a_flush_due_on_a_closed_loop_is_not_lost() -> None:
    """A loop that closes with a flush still due (a test's, a service's at stop) leaves the next
    line, on another loop or none, to flush it."""
    stream = _CountedFlushes()
    logger = _handler_logger(stream)

    def log_and_stop() -> None:
        loop.stop()  # the loop ends with this turn, before the flush's turn
        logger.info("left behind")

    loop = asyncio.new_event_loop()
    loop.call_soon(log_and_stop)
    loop.run_forever()
    loop.close()
    assert stream.flushed == []

    async def next_line() -> None:
        logger.info("next")

    asyncio.run(next_line())
    logger.info("no loop")
    assert "".join(stream.flushed) == "left behind\nnext\nno loop\n"


# A span of the caller's trace (tests/test_tracing.py follows real ones through the services).
_SPAN = NonRecordingSpan(
    SpanContext(
        trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736,
        span_id=0x00F067AA0BA902B7,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
)


def _record(message: str, *args: object, extra: dict[str, Any]) -> logging.LogRecord:
    record = logging.getLogger("services.worker.processor").makeRecord(
        "services.worker.processor", logging.INFO, "(unknown file)", 0, message, args, None, extra=extra
    )
    record.created, record.msecs = 1765000000.5, 500.0  # 2025-12-06T05:46:40.500Z
    return record


def test_a_line_has_its_fields_in_order_masked_with_the_span_and_the_context() -> None:
    """The exact bytes of a line: the formatter's fields, the span's ids, the message, the context's
    fields (the record's own `extra` in their place when both have one), then the record's; every
    string masked, a secret-named field whole, numbers, flags and None as they are."""
    extra = {
        "message_id": "web:5d77af412345f33d08e14bb3:123456789abcdef0123456789abcdef0",
        "engine": "kb",
        "handoff": False,
        "merged_into": None,
        "processingTime": 5.34,
        "status": 200,
        "token": "s3cr3t",
        "caller": {"phone": PHONE, "password": "x", "tags": ["vip", EMAIL]},
    }
    record = _record("called from %s", PHONE, extra=extra)
    with trace.use_span(_SPAN), log_context(message_id="m-context", conversation_id="c-1"):
        line = JsonFormatter("worker").format(record)
    assert line == (
        '{"ts":"2025-12-06T05:46:40.500Z","level":"INFO","service":"worker","logger":"services.worker.processor",'
        '"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7",'
        '"message":"called from +** ** *****-4321",'
        '"message_id":"web:5d77af412345f33d08e14bb3:123456789abcdef0123456789abcdef0","conversation_id":"c-1",'
        '"engine":"kb","handoff":false,"merged_into":null,"processingTime":5.34,"status":200,"token":"***",'
        '"caller":{"phone":"+** ** *****-4321","password":"***","tags":["vip","m***@example.com"]}}'
    )


def test_a_record_another_formatter_wrote_first_makes_the_same_line() -> None:
    """Another handler's formatter (pytest's, a plain one) adds `message` and `asctime` to the
    record: neither becomes a field of its own."""
    formatter = JsonFormatter("gateway")
    first, second = (_record("%s %s %d", "POST", "/v1/messages", 200, extra={"route": "/v1"}) for _ in range(2))
    logging.Formatter("%(asctime)s %(message)s").format(second)
    assert (
        formatter.format(first)
        == formatter.format(second)
        == (
            '{"ts":"2025-12-06T05:46:40.500Z","level":"INFO","service":"gateway","logger":"services.worker.processor",'
            '"message":"POST /v1/messages 200","route":"/v1"}'
        )
    )


def _json_logger(stream: io.StringIO) -> tuple[logging.Logger, BatchedStreamHandler]:
    """A logger of its own writing JSON lines through a BatchedStreamHandler, as setup_logging's."""
    handler = BatchedStreamHandler(stream, every_s=3600.0)
    handler.setFormatter(JsonFormatter("worker"))
    logger = logging.getLogger(f"test.info.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger, handler


def _without_ts(text: str) -> list[dict[str, Any]]:
    return [{k: v for k, v in line.items() if k != "ts"} for line in json_lines(text)]


def test_a_per_message_line_made_without_a_record_is_the_line_logging_makes() -> None:
    """log_info hands the handler its line itself: the same fields, masked, with the span and the
    context, in order with the lines logged the usual way."""
    fields = {"message_id": "m-1", "conversation_id": f"whatsapp:{PHONE}", "handoff": False, "latency_ms": 4.5}
    stream = io.StringIO()
    logger, handler = _json_logger(stream)

    async def both() -> None:
        with trace.use_span(_SPAN), log_context(message_id="m-context", channel="whatsapp"):
            log_info(logger, f"processed for {EMAIL}", fields)
            logger.info("processed for %s", EMAIL, extra=fields)
            log_info(logger, "the third", {})
        handler.flush()

    asyncio.run(both())
    direct, through_logging, third = _without_ts(stream.getvalue())
    assert direct == through_logging
    assert direct == {
        "level": "INFO",
        "service": "worker",
        "logger": logger.name,
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "span_id": "00f067aa0ba902b7",
        "message": "processed for m***@example.com",
        "message_id": "m-1",
        "conversation_id": "whatsapp:+** ** *****-4321",
        "channel": "whatsapp",
        "handoff": False,
        "latency_ms": 4.5,
    }
    assert third["message"] == "the third"
    # A value orjson refuses (a lone surrogate) is reported as logging reports it, never raised.
    with pytest.MonkeyPatch.context() as patch:
        reported: list[logging.LogRecord] = []
        patch.setattr(handler, "handleError", reported.append)
        log_info(logger, "unwritable", {"who": "\ud800"})
    assert [record.getMessage() for record in reported] == ["unwritable"]
    logger.setLevel(logging.WARNING)
    log_info(logger, "not written", {})
    assert len(json_lines(stream.getvalue())) == 3


class _Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_per_message_line_goes_through_logging_where_another_handler_or_a_filter_would_see_it() -> None:
    """A capturing handler (LOG_DIR's files, pytest's caplog) gets its record; a filter decides;
    a handler above INFO neither takes the line nor sends it the long way."""
    stream = io.StringIO()
    logger, handler = _json_logger(stream)
    captured = _Captured()
    logger.addHandler(captured)
    log_info(logger, "seen by both", {"route": "/v1/messages"})
    assert [(r.getMessage(), r.route) for r in captured.records] == [("seen by both", "/v1/messages")]  # type: ignore[attr-defined]
    captured.setLevel(logging.ERROR)
    logger.addFilter(lambda record: record.getMessage() != "filtered out")
    log_info(logger, "filtered out", {})
    log_info(logger, "kept", {})
    assert len(captured.records) == 1
    handler.flush()
    assert [line["message"] for line in json_lines(stream.getvalue())] == ["seen by both", "kept"]


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("ligue +55 11 98765-4321 amanhã", "ligue +** ** *****-4321 amanhã"),
        ("(11) 98765-4321 ou 11987654321", "(**) *****-4321 ou *******4321"),
        ("whatsapp 5511987654321", "whatsapp *********4321"),
        ("email maria.souza@example.com.br!", "email m***@example.com.br!"),
        ("CPF 123.456.789-09 e 52998224725", "CPF ***.***.***-** e ***********"),
        ("Authorization: Bearer abc.DEF-123", "Authorization: Bearer ***"),
        (
            "GET https://api.telegram.org/bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/sendMessage",
            "GET https://api.telegram.org/bot***/sendMessage",
        ),
        ("hub.verify_token=abc123&hub.challenge=9", "hub.verify_token=***&hub.challenge=9"),
        ("key sk-proj-abcdefghijklmnopqrstuv", "key ***"),
        ("X-Hub-Signature-256: sha256=0123456789abcdef0123", "X-Hub-Signature-256: ***"),
        ("minha senha: hunter2, obrigado", "minha senha: ***, obrigado"),
        ("Senha=hunter2", "Senha=***"),
        ("password: hunter2", "password: ***"),
        ("minha senha é hunter2 e o login maria", "minha senha é *** e o login maria"),
        ("my password is hunter2", "my password is ***"),
        ("ligue +55 (11) 9.8888.7777 hoje", "ligue +** (**) *.****.7777 hoje"),
        ("ou 11 9 8888 7777", "ou ** * **** 7777"),
    ],
)
def test_mask_pii_masks_phones_emails_cpfs_and_secrets(text: str, masked: str) -> None:
    assert mask_pii(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-25T01:45:01.789Z took 12345678.5 ms",
        "uuid 550e8400-e29b-41d4-a716-446655440000 trace 4bf92f3577b34da6a3ce929d0e0e4736",
        "RabbitMQ at 192.168.100.200:5672, version 1.45.2, shards [0, 1, 2, 3]",
        "message m-1234567890123456abcdef on shard 3",
        # A web id: its hex scope may end in digits, and what follows is no Telegram token.
        "web:77796d66c3ea187e40527727:m-61cf73c605ac4aff9b80a4a03121914e",
    ],
)
def test_mask_pii_leaves_ids_dates_and_addresses_alone(text: str) -> None:
    assert mask_pii(text) == text
