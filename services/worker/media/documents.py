"""The text of a PDF a customer sent, for the LLM's context: at most MAX_PAGES pages and
MAX_CHARS characters (a 300-page catalogue must not fill the model's window)."""

from __future__ import annotations

import io
import logging

from pypdf import PdfReader
from pypdf.errors import PyPdfError

MAX_PAGES = 20
MAX_CHARS = 20_000

logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings about odd files quote their content


class Unreadable(Exception):
    """Not a PDF we can read text from (damaged, encrypted, or only scanned images)."""


def pdf_text(data: bytes) -> str:
    """Blocking (CPU): call it in a thread."""
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise Unreadable("encrypted PDF")
        parts: list[str] = []
        size = 0
        for page in reader.pages[:MAX_PAGES]:
            text = page.extract_text() or ""
            parts.append(text.strip())
            size += len(text)
            if size >= MAX_CHARS:
                break
    except (PyPdfError, ValueError, KeyError, TypeError, OSError) as exc:
        raise Unreadable(f"unreadable PDF: {type(exc).__name__}") from None
    text = "\n\n".join(part for part in parts if part)[:MAX_CHARS]
    if not text.strip():
        raise Unreadable("the PDF has no text (scanned pages?)")
    return text
