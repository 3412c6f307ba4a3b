"""PDFs written by hand, for the media tests: a tiny honest one and a decompression bomb."""

from __future__ import annotations

import zlib


def _pdf(content: bytes, stream_dict: bytes) -> bytes:
    """A one-page PDF whose page content is `content` (already encoded as `stream_dict` says)."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 400 144] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d %s >>\nstream\n%s\nendstream" % (len(content), stream_dict, content),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, obj in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, obj)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def tiny_pdf(text: str) -> bytes:
    """A one-page PDF showing `text`."""
    return _pdf(f"BT /F1 12 Tf 20 100 Td ({text}) Tj ET".encode("latin-1"), b"")


def pdf_bomb(inflated_bytes: int = 60 * 2**20) -> bytes:
    """A PDF of some tens of kilobytes whose one page inflates to `inflated_bytes` of text
    operators (a single string shown over and over): what the issue's reviewer sent."""
    line = b"BT /F1 12 Tf 20 100 Td (" + b"A" * 4000 + b") Tj ET\n"
    return _pdf(zlib.compress(line * (inflated_bytes // len(line)), 9), b"/Filter /FlateDecode")
