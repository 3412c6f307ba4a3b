"""The offline knowledge-base reply engine (`REPLY_ENGINE=kb`, SPEC section 6).

A question an entry answers gets that entry's answer verbatim with `sources=(id,)` and the match
score as confidence; anything else gets the base's fallback with a confidence under 0.3.
Greetings, thanks and goodbyes on their own get a short reply in the base's language.
"""

from __future__ import annotations

from shared.messages import ReplyContent

from .base import EngineRequest
from .index import Analyzer, KbIndex, Tuning
from .kbfile import Entry, KnowledgeBase, KnowledgeBaseError
from .smalltalk import SmallTalkDetector

__all__ = ["Entry", "KbEngine", "KnowledgeBase", "KnowledgeBaseError", "Tuning"]

# Confidence of the fallback reply: never above this, so callers can tell a guess from an answer.
FALLBACK_CONFIDENCE_CAP = 0.25
SMALL_TALK_CONFIDENCE = 0.95


class KbEngine:
    """Answers from a KnowledgeBase; the index is built once here, replies are pure CPU."""

    name = "kb"
    uses_history = False

    def __init__(self, kb: KnowledgeBase, tuning: Tuning | None = None) -> None:
        self.kb = kb
        self.tuning = tuning or Tuning()
        self._analyzer = Analyzer(kb.language)
        self._index = KbIndex(kb, self._analyzer, self.tuning)
        self._small_talk = SmallTalkDetector(kb.language)

    def answer(self, text: str) -> ReplyContent:
        scan = self._small_talk.scan(self._analyzer.words(text))
        if scan.only_small_talk:
            return ReplyContent(text=scan.reply(), engine=self.name, confidence=SMALL_TALK_CONFIDENCE)
        hits = self._index.rank(scan.rest, limit=1)
        if hits and hits[0].score >= self.tuning.threshold:
            entry = self.kb.entries[hits[0].entry]
            return ReplyContent(
                text=entry.answer, engine=self.name, confidence=round(hits[0].score, 4), sources=(entry.id,)
            )
        best = hits[0].score if hits else 0.0
        confidence = round(min(best, FALLBACK_CONFIDENCE_CAP), 4)
        return ReplyContent(text=self.kb.fallback, engine=self.name, confidence=confidence)

    def search(self, text: str, limit: int = 3) -> list[tuple[Entry, float]]:
        """The entries closest to `text`, best first, with their 0..1 score (LLM grounding)."""
        scan = self._small_talk.scan(self._analyzer.words(text))
        hits = self._index.rank(scan.rest, limit=limit)
        return [(self.kb.entries[h.entry], round(h.score, 4)) for h in hits]

    async def reply(self, request: EngineRequest) -> ReplyContent:
        return self.answer(request.text)

    async def close(self) -> None:
        """Nothing to release: the index lives in memory."""
