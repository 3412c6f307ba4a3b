"""The offline knowledge-base reply engine (`REPLY_ENGINE=kb`, SPEC section 6).

A question an entry answers gets that entry's answer verbatim with `sources=(id,)` and the match
score as confidence; anything else gets the base's fallback with a confidence under 0.3.
Greetings, thanks and goodbyes on their own get a short reply in the base's language.

Entries are ranked by words (index.py). With KB_EMBEDDINGS=on and an English base, sentence
embeddings (embeddings.py) rank them too: the ranking is mostly theirs (they see that "how much do
u charge for delivery" asks "How much is shipping?"), and an entry answers when its cosine is high
or its word score passes the threshold. Both were set on the English bases of `python -m eval
--all`, as the choice that answered more of their questions without wrongly answering any
off-topic one more.

With KB_EMBEDDINGS=multilingual (either language), multilingual-e5 embeddings (e5.py) weigh in
only where words may be wrong: a question whose every word the base knows and whose best entry's
word score reaches MULTILINGUAL_TRUSTED is answered by words alone; any other is ranked by
MULTILINGUAL_SHARE of the cosine to each entry (the rest: the word score) and answered when that
reaches MULTILINGUAL_ANSWERS. The model tells "how long does it take to cook pasta" from "How
long does shipping take?", which share every word the base knows. Set on the tuned-on sets of
`python -m eval --all --multilingual`, off-topic ones included; a question with no word the base
knows still gets the fallback without asking the model.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from shared.messages import Option, ReplyContent

from .base import EngineRequest
from .index import Analyzer, Hit, KbIndex, Tuning
from .kbfile import Entry, KnowledgeBase, KnowledgeBaseError
from .smalltalk import SmallTalk, SmallTalkDetector

if TYPE_CHECKING:
    from .e5 import E5Model, PassageIndex
    from .embeddings import SemanticIndex, SentenceEncoder

T = TypeVar("T")

__all__ = ["Entry", "KbEngine", "KnowledgeBase", "KnowledgeBaseError", "Tuning"]

# Confidence of the fallback reply: never above this, so callers can tell a guess from an answer.
FALLBACK_CONFIDENCE_CAP = 0.25
SMALL_TALK_CONFIDENCE = 0.95
# With embeddings: rank by this share of the cosine (the rest: the word score), and answer when
# the best entry's cosine reaches EMBEDDING_ANSWERS (or its word score the threshold).
EMBEDDING_SHARE = 0.9
EMBEDDING_ANSWERS = 0.5
# Multilingual embeddings: trust words alone at this word score when the base knows every word;
# otherwise rank by this share of the cosine and answer from this blended score. e5's cosines of
# related texts sit in 0.75..0.95, hence the high bar.
MULTILINGUAL_TRUSTED = 0.7
MULTILINGUAL_SHARE = 0.9
MULTILINGUAL_ANSWERS = 0.81


@dataclass(frozen=True, slots=True)
class Match:
    entry: int  # position in KnowledgeBase.entries
    score: float  # what ranks the entries, 0..1
    confidence: float
    answers: bool  # strong enough to answer with


class KbEngine:
    """Answers from a KnowledgeBase; the index is built once here, replies are pure CPU."""

    name = "kb"
    uses_history = False

    def __init__(
        self,
        kb: KnowledgeBase,
        tuning: Tuning | None = None,
        encoder: SentenceEncoder | None = None,
        multilingual: E5Model | None = None,
    ) -> None:
        self.kb = kb
        self.tuning = tuning or Tuning()
        self._analyzer = Analyzer(kb.language)
        self._index = KbIndex(kb, self._analyzer, self.tuning)
        self._small_talk = SmallTalkDetector(kb.language)
        self._semantic: SemanticIndex | None = None
        if encoder is not None and kb.language == "en":  # the model knows English only
            from .embeddings import SemanticIndex

            self._semantic = SemanticIndex([entry.questions for entry in kb.entries], encoder)
        self._passages: PassageIndex | None = None
        if multilingual is not None:
            from .e5 import PassageIndex

            self._passages = PassageIndex(kb.entries, multilingual)

    @property
    def semantic(self) -> bool:
        """Whether embeddings rank the entries."""
        return self._semantic is not None or self._passages is not None

    def needs_model(self, text: str) -> bool:
        """Whether a question takes the multilingual model's (slow) path."""
        scan = self._small_talk.scan(self._analyzer.words(text))
        if self._passages is None or scan.only_small_talk:
            return False
        hits = self._index.rank(scan.rest, limit=1)
        return bool(hits) and not self._trusted(hits[0])

    def _trusted(self, hit: Hit) -> bool:
        return hit.known >= 1.0 and hit.confidence >= MULTILINGUAL_TRUSTED

    def answer(self, text: str) -> ReplyContent:
        scan = self._small_talk.scan(self._analyzer.words(text))
        if scan.only_small_talk:
            return ReplyContent(
                text=scan.reply(), engine=self.name, confidence=SMALL_TALK_CONFIDENCE, kind="smalltalk"
            )
        matches = self._matches(text, scan, limit=1)
        if matches and matches[0].answers:
            best = matches[0]
            entry = self.kb.entries[best.entry]
            return ReplyContent(
                text=entry.answer,
                engine=self.name,
                confidence=round(best.confidence, 4),
                sources=(entry.id,),
                options=tuple(Option.button(label) for label in entry.buttons),
            )
        closest = matches[0].confidence if matches else 0.0
        confidence = round(min(closest, FALLBACK_CONFIDENCE_CAP), 4)
        return ReplyContent(
            text=self.kb.fallback, engine=self.name, confidence=confidence, fallback=True, kind="fallback"
        )

    def entry_reply(self, entry_id: str) -> ReplyContent | None:
        """The answer of the entry `entry_id` (an option the customer chose); None when the base
        has no such entry."""
        for entry in self.kb.entries:
            if entry.id == entry_id:
                return ReplyContent(
                    text=entry.answer,
                    engine=self.name,
                    confidence=1.0,
                    sources=(entry.id,),
                    options=tuple(Option.button(label) for label in entry.buttons),
                )
        return None

    def search(self, text: str, limit: int = 3) -> list[tuple[Entry, float]]:
        """The entries closest to `text`, best first, with their 0..1 score (LLM grounding)."""
        scan = self._small_talk.scan(self._analyzer.words(text))
        return [(self.kb.entries[m.entry], round(m.score, 4)) for m in self._matches(text, scan, limit)]

    def _matches(self, text: str, scan: SmallTalk, limit: int) -> list[Match]:
        if self._passages is not None:
            return self._multilingual_matches(text, scan, self._passages, limit)
        if self._semantic is None:
            return [
                Match(h.entry, h.score, h.confidence, h.confidence >= self.tuning.threshold)
                for h in self._index.rank(scan.rest, limit=limit)
            ]
        if not any(self._analyzer.is_term(word) for word in scan.rest):
            return []  # nothing but small talk and stop words: nothing to look up
        words = {h.entry: h.score for h in self._index.rank(scan.rest, limit=len(self.kb.entries))}
        cosines = self._semantic.cosines(text)
        matches = []
        for entry, cosine in enumerate(cosines.tolist()):
            word_score = words.get(entry, 0.0)
            score = EMBEDDING_SHARE * max(cosine, 0.0) + (1.0 - EMBEDDING_SHARE) * word_score
            answers = cosine >= EMBEDDING_ANSWERS or word_score >= self.tuning.threshold
            matches.append(Match(entry, score, max(cosine, word_score, 0.0), answers))
        matches.sort(key=lambda m: (-m.score, m.entry))
        return matches[:limit]

    def _multilingual_matches(self, text: str, scan: SmallTalk, passages: PassageIndex, limit: int) -> list[Match]:
        hits = self._index.rank(scan.rest, limit=len(self.kb.entries))
        if not hits or self._trusted(hits[0]):
            # No word the base knows (the fallback), or words alone are sure: no need to ask the model.
            return [Match(h.entry, h.score, h.confidence, h.confidence >= self.tuning.threshold) for h in hits[:limit]]
        words = {h.entry: h.confidence for h in hits}
        matches = []
        for entry, cosine in enumerate(passages.cosines(text).tolist()):
            score = MULTILINGUAL_SHARE * cosine + (1.0 - MULTILINGUAL_SHARE) * words.get(entry, 0.0)
            matches.append(Match(entry, score, score, score >= MULTILINGUAL_ANSWERS))
        matches.sort(key=lambda m: (-m.score, m.entry))
        return matches[:limit]

    async def reply(self, request: EngineRequest) -> ReplyContent:
        return await self._off_the_loop(self.answer, request.text)

    async def lookup(self, text: str, limit: int = 3) -> list[tuple[Entry, float]]:
        """`search` for a caller on the event loop (the LLM engine's grounding)."""
        return await self._off_the_loop(functools.partial(self.search, limit=limit), text)

    async def _off_the_loop(self, work: Callable[[str], T], text: str) -> T:
        if self._passages is not None:
            # Tens of milliseconds in the model's C code (which lets go of the GIL): in a thread,
            # so the other conversations' lanes keep running meanwhile.
            return await asyncio.to_thread(work, text)
        return work(text)

    async def close(self) -> None:
        """Nothing to release: the index lives in memory."""
