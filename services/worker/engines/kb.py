"""The offline knowledge-base reply engine (`REPLY_ENGINE=kb`, SPEC section 6).

Every reply about the base is one of three kinds, decided from calibrated probabilities
(confidence.py) rather than from a raw score:
  * `answer`:   the best entry's answer, verbatim, when it is very likely the one meant;
  * `clarify`:  when the one meant is likely among the three best but not surely the first: those
    entries as options (the reply policy adds "talk to a person" and writes the question back);
  * `fallback`: the base's "not found" when no entry is close.
Greetings, thanks and goodbyes on their own get a short reply in the base's language (`smalltalk`).

Candidates come from two stages. Words (index.py) rank the entries first, in well under a
millisecond; when words alone are sure (`WORDS_SURE`) the answer goes out without more. Otherwise
the multilingual model (e5.py, when loaded: KB_EMBEDDINGS=multilingual, the default) embeds the
question and the ranking becomes a fusion of both views: each entry's model similarity and word
score, as z-scores over the base's entries (so that the fusion reads the same on every base).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from shared.messages import Option, ReplyContent

from .base import EngineRequest
from .confidence import (
    SEMANTIC,
    TOLD_TERMS,
    WORDS,
    Candidate,
    Ranking,
    ambiguous,
    semantic_features,
    word_features,
)
from .e5 import E5Model, EntryVectors, QueryBatcher, Vectors
from .index import Analyzer, Hits, KbIndex, Tuning
from .kbfile import Entry, KnowledgeBase, KnowledgeBaseError
from .smalltalk import SmallTalk, SmallTalkDetector
from .text import spelled_out

__all__ = ["Entry", "KbEngine", "KnowledgeBase", "KnowledgeBaseError", "Tuning"]

# Confidence of the fallback reply: never above this, so callers can tell a guess from an answer.
FALLBACK_CONFIDENCE_CAP = 0.25
SMALL_TALK_CONFIDENCE = 0.95
OPTIONS = 3  # candidates offered by a question back
# The share of the word score's z-score in the fused ranking (the model's similarity weighs 1).
WORD_SHARE = 0.3


@dataclass(frozen=True, slots=True)
class Lexical:
    """The first stage: small talk and the word ranking of a question."""

    text: str
    scan: SmallTalk
    hits: Hits  # every entry sharing a word with the question, best first
    terms: int  # content words and question words of the question
    words: Ranking | None  # the ranking by words alone (None: no entry shares a word)

    @property
    def has_terms(self) -> bool:
        return self.terms > 0


class KbEngine:
    """Answers from a KnowledgeBase; the indexes are built (and the model warmed) once here."""

    name = "kb"
    uses_history = False

    def __init__(self, kb: KnowledgeBase, tuning: Tuning | None = None, model: E5Model | None = None) -> None:
        self.kb = kb
        self.tuning = tuning or Tuning()
        self._analyzer = Analyzer(kb.language)
        self._index = KbIndex(kb, self._analyzer, self.tuning)
        self._small_talk = SmallTalkDetector(kb.language)
        self._vectors = EntryVectors(kb.entries, model) if model is not None else None
        self._batcher = QueryBatcher(model) if model is not None else None
        if model is not None:
            model.query("warm-up")  # the first customer does not pay for the model's first call

    @property
    def semantic(self) -> bool:
        """Whether the multilingual model ranks the entries too."""
        return self._vectors is not None

    # -- the reply ----------------------------------------------------------------------------

    async def reply(self, request: EngineRequest) -> ReplyContent:
        lexical = self._lexical(request.text)
        return self._decide(lexical, self._rank(lexical, await self._query(lexical)))

    def answer(self, text: str) -> ReplyContent:
        """`reply` for a caller off the event loop (evaluation, tests): the model runs inline."""
        return self.explain(text)[0]

    def explain(self, text: str) -> tuple[ReplyContent, Ranking]:
        """The reply to `text` and the ranking it was decided from (the evaluation reads both)."""
        lexical = self._lexical(text)
        ranking = self.rank(text, lexical)
        return self._decide(lexical, ranking), ranking

    def entry_reply(self, entry_id: str) -> ReplyContent | None:
        """The answer of the entry `entry_id` (an option the customer chose); None when the base
        has no such entry."""
        for entry in self.kb.entries:
            if entry.id == entry_id:
                return self._answer(entry, confidence=1.0)
        return None

    def needs_model(self, text: str) -> bool:
        """Whether a question takes the multilingual model's (slower) path."""
        return self._needs_model(self._lexical(text))

    def rank(self, text: str, lexical: Lexical | None = None) -> Ranking:
        """The best entries for `text` with the calibrated probabilities (the model runs inline)."""
        lexical = lexical or self._lexical(text)
        return self._rank(lexical, self._query_inline(lexical))

    def rankings(self, text: str) -> tuple[Ranking | None, Ranking | None]:
        """Both rankings of `text`, words alone and with the model, whatever the engine would ask
        (eval.calibrate fits the confidence models on them); None where one cannot be made."""
        lexical = self._lexical(text)
        if lexical.scan.only_small_talk:
            return None, None
        if self._vectors is None or not lexical.has_terms:
            return lexical.words, None
        return lexical.words, self._rank(lexical, self._vectors.model.query(self._model_text(lexical)))

    async def lookup(self, text: str, limit: int = OPTIONS) -> list[tuple[Entry, float]]:
        """The entries closest to `text`, best first, each with the probability that it is the one
        meant (the LLM engine's grounding); none when no entry is close enough to offer."""
        lexical = self._lexical(text)
        ranking = self._rank(lexical, await self._query(lexical), depth=limit)
        return self._scored(ranking, _grounding_at(lexical, ranking), limit)

    def search(self, text: str, limit: int = OPTIONS) -> list[tuple[Entry, float]]:
        """`lookup` for a caller off the event loop."""
        lexical = self._lexical(text)
        ranking = self._rank(lexical, self._query_inline(lexical), depth=limit)
        return self._scored(ranking, _grounding_at(lexical, ranking), limit)

    async def close(self) -> None:
        """Nothing to release: the indexes live in memory."""

    # -- stages -------------------------------------------------------------------------------

    def _lexical(self, text: str) -> Lexical:
        scan = self._small_talk.scan(self._analyzer.words(text))
        terms = self._index.term_count(scan.rest)
        hits = Hits() if scan.only_small_talk else self._index.rank(scan.rest)
        words = _words_ranking(hits, terms) if hits else None
        return Lexical(text, scan, hits, terms, words)

    def _model_text(self, lexical: Lexical) -> str:
        """The question as the model reads it: chat abbreviations written out (it was trained on
        written language), and a greeting or thanks around the question cut off ("oi, qual o prazo?"
        is about the delivery time, not about saying hello)."""
        scan = lexical.scan
        return " ".join(scan.rest) if scan.kinds else spelled_out(lexical.text, self.kb.language)

    def _needs_model(self, lexical: Lexical) -> bool:
        if self._vectors is None or lexical.scan.only_small_talk or not lexical.has_terms:
            return False
        return lexical.words is None or lexical.words.answer < WORDS.sure

    async def _query(self, lexical: Lexical) -> Vectors | None:
        """The question's vector, from the batch of every lane in flight, where the model is needed."""
        if self._batcher is None or not self._needs_model(lexical):
            return None
        return await self._batcher.query(self._model_text(lexical))

    def _query_inline(self, lexical: Lexical) -> Vectors | None:
        """`_query` for a caller off the event loop."""
        if self._vectors is None or not self._needs_model(lexical):
            return None
        return self._vectors.model.query(self._model_text(lexical))

    def _rank(self, lexical: Lexical, vector: Vectors | None, depth: int = OPTIONS) -> Ranking:
        """The ranking of `depth` candidates (at least the two the features read)."""
        if vector is None or self._vectors is None:
            return lexical.words or Ranking.empty()
        views = self._vectors.similarities(vector)
        similarity = views.combined
        words = np.zeros(len(self.kb.entries), dtype=np.float32)
        for entry, score in zip(lexical.hits.entries, lexical.hits.scores, strict=True):
            words[entry] = score
        lead = _z(similarity) + WORD_SHARE * _z(words)
        order = [int(i) for i in np.argsort(-lead, kind="stable")[: max(2, depth)]]
        view_leads = [float(_z(view)[order[0]]) for view in (views.passage, views.question, views.sentence)]
        features = semantic_features(
            lead.tolist(), similarity.tolist(), order, lexical.hits, lexical.terms, lexical.words, view_leads
        )
        candidates = tuple(Candidate(entry, float(lead[entry])) for entry in order)
        # The linear reading does not count on a guess or a shared topic (_unsure); the tree
        # model reads both as features (confidence.py: either may answer).
        linear = 0.0 if _unsure(lexical) else SEMANTIC.answer.probability(features)
        trees = SEMANTIC.trees.probability(features) if SEMANTIC.trees else 0.0
        return Ranking(candidates, features, max(linear, trees), SEMANTIC.offer.probability(features), semantic=True)

    def _decide(self, lexical: Lexical, ranking: Ranking) -> ReplyContent:
        if lexical.scan.only_small_talk:
            text = lexical.scan.reply()
            return ReplyContent(text=text, engine=self.name, confidence=SMALL_TALK_CONFIDENCE, kind="smalltalk")
        calibration = SEMANTIC if ranking.semantic else WORDS
        unsure = not ranking.semantic and _unsure(lexical)  # (with the model, in ranking.answer)
        if ranking.candidates and ranking.answer >= calibration.answer_at and not unsure:
            return self._answer(self.kb.entries[ranking.candidates[0].entry], ranking.answer)
        if ranking.candidates and ranking.offer >= _offer_at(lexical, ranking):
            entries = [self.kb.entries[candidate.entry] for candidate in ranking.candidates[:OPTIONS]]
            return ReplyContent(
                text="",  # the reply policy writes the question back, with the options numbered
                engine=self.name,
                confidence=round(ranking.answer, 4),
                kind="clarify",
                options=tuple(Option(entry.id, entry.label) for entry in entries),
            )
        confidence = round(min(ranking.answer, FALLBACK_CONFIDENCE_CAP), 4)
        return ReplyContent(
            text=self.kb.fallback, engine=self.name, confidence=confidence, fallback=True, kind="fallback"
        )

    def _answer(self, entry: Entry, confidence: float) -> ReplyContent:
        return ReplyContent(
            text=entry.answer,
            engine=self.name,
            confidence=round(confidence, 4),
            sources=(entry.id,),
            options=tuple(Option.button(label) for label in entry.buttons),
        )

    def _scored(self, ranking: Ranking, offer_at: float, limit: int) -> list[tuple[Entry, float]]:
        """Each candidate with its share of the probability: the first the answer's, the others an
        equal part of what the offer adds to it. None when the engine itself would fall back
        (`offer_at`: the P(offer) it would ask back from)."""
        if ranking.offer < offer_at:
            return []
        candidates = ranking.candidates[:limit]
        rest = max(0.0, ranking.offer - ranking.answer) / max(1, len(candidates) - 1)
        return [
            (self.kb.entries[candidate.entry], round(ranking.answer if place == 0 else rest, 4))
            for place, candidate in enumerate(candidates)
        ]


def _unsure(lexical: Lexical) -> bool:
    """Ask back, however close the entry looks, on "vendem bitcoin?" against "Vendemos para pessoa
    jurídica" (one shared word and one the base lacks, which may be the very topic), and on a topic
    several entries hold alike ("e o pagamento?")."""
    top = lexical.hits.top
    return bool(top) and (top[0].guess or ambiguous(top))


def _offer_at(lexical: Lexical, ranking: Ranking) -> float:
    """The P(offer) from which a question back is worth asking. Where no entry shares a word with
    the question the model's closeness alone must be surer: "can i come in sunday night?" (the
    opening hours, in other words) is what the model is there for, "como faço bolo de cenoura"
    is not. A question that tells more (TOLD_TERMS words) is worth asking back about sooner."""
    calibration = SEMANTIC if ranking.semantic else WORDS
    if not lexical.hits:
        return calibration.offer_unmatched_at
    return calibration.offer_told_at if lexical.terms >= TOLD_TERMS else calibration.offer_at


def _grounding_at(lexical: Lexical, ranking: Ranking) -> float:
    """The P(offer) from which the LLM engine is given the candidates: as for a question back, but
    whether or not they share a word (the LLM reads the entries and tells for itself)."""
    calibration = SEMANTIC if ranking.semantic else WORDS
    return min(_offer_at(lexical, ranking), calibration.offer_at)


def _words_ranking(hits: Hits, terms: int) -> Ranking:
    """The ranking by words alone: every entry sharing a word, best first (callers take the few
    they need)."""
    features = word_features(hits.top, terms)
    candidates = tuple(map(Candidate, hits.entries, hits.scores))
    return Ranking(
        candidates, features, WORDS.answer.probability(features), WORDS.offer.probability(features), semantic=False
    )


def _z(values: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """How many standard deviations each value stands above the base's mean."""
    spread = float(values.std())
    z: npt.NDArray[np.float32] = (values - values.mean()) / (spread if spread > 1e-9 else 1.0)
    return z
