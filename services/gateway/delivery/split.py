"""Splitting a reply that is longer than a channel allows into messages that each read well.

Preference, from best to worst: end a part at a paragraph break, then at a line break (a list's
items, one a line, stay whole), then at the end of a sentence, then between words; only a single
word longer than the limit is cut where it stands.
"""

from __future__ import annotations

import re

# After sentence punctuation (and any closing quote or bracket) followed by white space.
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+")
_PARAGRAPH = re.compile(r"\n\s*\n")
_LINE = re.compile(r"\n")
_SPACE = re.compile(r"\s+")
# Where a part may end, from the best place to the worst.
_CUTS = (_PARAGRAPH, _LINE, _SENTENCE_END, _SPACE)


def units(text: str) -> int:
    """Length in UTF-16 code units: what Telegram counts and never less than what WhatsApp counts,
    so an emoji-rich part cannot slip over a limit measured in Python characters."""
    return len(text.encode("utf-16-le")) // 2


def split_text(text: str, limit: int) -> list[str]:
    """Parts of at most `limit` units each, in order; joining them with spaces gives the text back
    up to white space at the cut points."""
    text = text.strip()
    if units(text) <= limit:
        return [text] if text else []
    parts: list[str] = []
    current = ""
    for piece in _pieces(text, limit):
        candidate = f"{current}{piece}" if current else piece.lstrip()
        if units(candidate.rstrip()) <= limit:
            current = candidate
            continue
        if current.strip():
            parts.append(current.strip())
        current = piece.lstrip()
    if current.strip():
        parts.append(current.strip())
    return parts


def _pieces(text: str, limit: int, cuts: tuple[re.Pattern[str], ...] = _CUTS) -> list[str]:
    """Paragraphs, broken into lines, broken into sentences, broken into words, broken into
    characters, each level only where the coarser piece would not fit in one part. Pieces keep
    their trailing space."""
    if not cuts:
        return _hard_cut(text, limit)
    pieces: list[str] = []
    for piece in _split_keep(cuts[0], text):
        pieces.extend([piece] if units(piece.rstrip()) <= limit else _pieces(piece, limit, cuts[1:]))
    return pieces


def _split_keep(pattern: re.Pattern[str], text: str) -> list[str]:
    """Split after each match, keeping the separator at the end of the piece before it."""
    pieces: list[str] = []
    start = 0
    for match in pattern.finditer(text):
        pieces.append(text[start : match.end()])
        start = match.end()
    if start < len(text):
        pieces.append(text[start:])
    return pieces


def _hard_cut(word: str, limit: int) -> list[str]:
    cuts: list[str] = []
    current = ""
    for char in word:
        if units(current + char) > limit:
            cuts.append(current)
            current = ""
        current += char
    if current:
        cuts.append(current)
    return cuts
