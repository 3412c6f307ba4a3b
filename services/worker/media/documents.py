"""The text of a PDF a customer sent, for the LLM's context, read in a child process within limits.

The first MAX_PAGES pages and MEDIA_MAX_TEXT_CHARS characters are kept (a 300-page catalogue must
not fill the model's window). Parsing runs in pdfchild.py, a
separate interpreter with its own memory ceiling and CPU limit: a decompression bomb ends there as
`TooLargeDocument`, and the worker's event loop and memory never carry it. At most
MEDIA_CONCURRENCY of these children run at once per worker (the resolver's semaphore), so the
worker's pod holds at most that many ceilings beside the worker itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path

from shared.settings import Settings

from .pdfchild import Limits

MAX_PAGES = 20
# One stream may inflate to this much: a page's text is kilobytes; a bomb is tens of megabytes.
MAX_STREAM_BYTES = 8 * 2**20
CHILD = Path(__file__).with_name("pdfchild.py")


class Unreadable(Exception):
    """Not a PDF we can read text from (damaged, encrypted, or only scanned images)."""


class TooLargeDocument(Exception):
    """The PDF needs more than its limits (inflated size, memory or CPU time) to be read."""


def limits_of(settings: Settings) -> Limits:
    return Limits(
        max_chars=settings.media_max_text_chars,
        max_pages=MAX_PAGES,
        max_stream_bytes=MAX_STREAM_BYTES,
        memory_bytes=settings.media_extract_memory_bytes,
        cpu_seconds=settings.media_extract_cpu_seconds,
    )


async def pdf_text(data: bytes, limits: Limits, timeout_s: float) -> str:
    """The PDF's text, read by the child; raises Unreadable or TooLargeDocument."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",  # isolated: the child imports pypdf and the standard library only
        str(CHILD),
        *limits.argv(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        # Wall time too: a child starved of CPU on a busy node is not left to run for ever.
        out, _ = await asyncio.wait_for(child.communicate(data), timeout_s)
    except TimeoutError:
        raise TooLargeDocument(f"reading the PDF took over {timeout_s:.0f}s") from None
    finally:
        if child.returncode is None:  # timed out, or the reply was cancelled: the child goes too
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await asyncio.shield(child.wait())
    return _answer(out, child.returncode)


def _answer(out: bytes, returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        # Killed by a signal: its CPU limit (SIGXCPU, then SIGKILL) or the kernel's OOM killer.
        raise TooLargeDocument(f"the PDF reader stopped at its limits (signal {-returncode})")
    if returncode != 0:
        raise Unreadable(f"the PDF reader failed (exit {returncode})")
    try:
        answer = json.loads(out)
    except ValueError:
        raise Unreadable("the PDF reader gave no answer") from None
    if not isinstance(answer, dict):
        raise Unreadable("the PDF reader gave no answer")
    if answer.get("problem") == "too_large":
        raise TooLargeDocument(str(answer.get("detail", "")))
    text = answer.get("text")
    if not isinstance(text, str):
        raise Unreadable(str(answer.get("detail", "unreadable PDF")))
    return text
