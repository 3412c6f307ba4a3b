"""The child process that reads a PDF's text, inside hard limits (run by documents.py).

A PDF is a compressed program: 59 KB can inflate to 60 MB of text and half a minute of CPU. So
the worker never parses one itself. This script runs as `python -I pdfchild.py LIMITS` with the
PDF on stdin; before it imports pypdf it caps its own address space (RLIMIT_AS) and CPU time
(RLIMIT_CPU, the kernel kills it past that), and pypdf's decompression is capped too, so a bomb
ends early as "too_large" and never touches the worker's memory. It prints one JSON object:
`{"text": ...}` or `{"problem": "too_large" | "document_unreadable", "detail": ...}`.

It imports nothing of the project (the interpreter runs isolated, `-I`): only pypdf and the
standard library, so it starts small.
"""

from __future__ import annotations

import io
import json
import logging
import resource
import sys
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    max_chars: int
    max_pages: int
    max_stream_bytes: int  # the largest a single stream may inflate to
    memory_bytes: int  # the child's address space
    cpu_seconds: int

    def argv(self) -> list[str]:
        return [
            str(value)
            for value in (self.max_chars, self.max_pages, self.max_stream_bytes, self.memory_bytes, self.cpu_seconds)
        ]

    @classmethod
    def from_argv(cls, argv: list[str]) -> Limits:
        chars, pages, stream, memory, cpu = (int(value) for value in argv)
        return cls(chars, pages, stream, memory, cpu)


class Refused(Exception):
    def __init__(self, problem: str, detail: str) -> None:
        super().__init__(detail)
        self.problem = problem


def _cap_pypdf(max_stream_bytes: int) -> None:
    """pypdf's own limits on inflating a stream (its Configuration API in recent versions, the
    module constant before; the address-space limit holds whatever the version)."""
    import pypdf
    from pypdf import filters

    overwrite = getattr(pypdf, "overwrite_configuration", None)
    if overwrite is not None:
        overwrite(
            zlib_maximum_output_length=max_stream_bytes,
            lzw_maximum_output_length=max_stream_bytes,
            run_length_maximum_output_length=max_stream_bytes,
            array_based_stream_maximum_output_length=max_stream_bytes,
        )
    else:  # pragma: no cover - older pypdf
        setattr(filters, "ZLIB_MAX_OUTPUT_LENGTH", max_stream_bytes)  # noqa: B010


def extract(data: bytes, limits: Limits) -> str:
    """The text of the first pages, at most `max_chars` characters; raises Refused."""
    from pypdf import PdfReader
    from pypdf.errors import LimitReachedError

    _cap_pypdf(limits.max_stream_bytes)
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise Refused("document_unreadable", "encrypted PDF")
        parts: list[str] = []
        size = 0
        for page in reader.pages[: limits.max_pages]:
            text = (page.extract_text() or "").strip()
            parts.append(text)
            size += len(text)
            if size >= limits.max_chars:
                break
    except Refused:
        raise
    except LimitReachedError as exc:
        raise Refused("too_large", f"a stream inflates past the limit: {exc}") from None
    except MemoryError:
        raise Refused("too_large", "the PDF needs more memory than allowed") from None
    except Exception as exc:  # a damaged file trips a parser in every possible way
        raise Refused("document_unreadable", f"unreadable PDF: {type(exc).__name__}") from None
    text = "\n\n".join(part for part in parts if part)[: limits.max_chars]
    if not text.strip():
        raise Refused("document_unreadable", "the PDF has no text (scanned pages?)")
    return text


def main() -> None:
    limits = Limits.from_argv(sys.argv[1:])
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds))
    logging.disable(logging.CRITICAL)  # pypdf's warnings about odd files quote their content
    try:
        answer: dict[str, str] = {"text": extract(sys.stdin.buffer.read(), limits)}
    except Refused as exc:
        answer = {"problem": exc.problem, "detail": str(exc)}
    sys.stdout.write(json.dumps(answer))


if __name__ == "__main__":
    main()
