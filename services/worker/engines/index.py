"""The lexical index of a knowledge base and the score that ranks its entries for a question.

Built once at load; a reply is a few dictionary look-ups per query word, so a base of a thousand
entries answers in well under a millisecond or two in pure Python.

Matching a query word to the base's words (`KbIndex.expand`):
  * same stem                                   similarity 1
  * stems sharing a long prefix ("devolu"/"devolv", "rastre"/"rastrei")   `family_similarity`
  * a word the base does not know, one or two edits away from one it does ("entraga")
                                                `typo_similarity`

Scoring an entry, two views that must agree for a confident answer:
  * query coverage: the share of the query's information (idf-weighted words) that the entry
    holds, each word counted by the field it appears in (questions > tags > answer). Words no entry
    knows count in full against every entry: "como faço bolo de cenoura" is mostly words this shop
    never uses, so nothing covers it and the fallback answers.
  * question coverage: the best share of one of the entry's example questions that the query
    holds. "tem garantia?" holds all of "Os produtos têm garantia?" even though it is short.
The score is a weighted mean of the two, in 0..1; below `threshold` the base's fallback answers.
"""

from __future__ import annotations

import functools
import heapq
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .kbfile import KnowledgeBase
from .stemmer import STEMMERS
from .text import Language, is_content, words_of

_PREFIX = 4  # stems shorter than this are matched exactly only
_GRAM = 3
_STEM_CACHE = 4096


@dataclass(frozen=True, slots=True)
class Tuning:
    """Knobs of the scorer. The defaults are calibrated on several bases (pt and en) at once."""

    question_weight: float = 1.0
    tag_weight: float = 0.7
    answer_weight: float = 0.5
    # A query word no entry holds weighs this much of the idf of a word seen in no entry.
    unknown_weight: float = 1.0
    family_similarity: float = 0.9
    typo_similarity: float = 0.8
    # Share of query coverage in the score; the rest is question coverage.
    query_share: float = 0.6
    threshold: float = 0.4


@dataclass(frozen=True, slots=True)
class Hit:
    entry: int  # position in KnowledgeBase.entries
    score: float
    query_coverage: float
    question_coverage: float


class Analyzer:
    """Text -> content words -> stems, for one language."""

    def __init__(self, language: Language) -> None:
        self.language = language
        self._stem = STEMMERS[language]

    def content_words(self, text: str) -> list[str]:
        return self.content_of(words_of(text, self.language))

    def content_of(self, words: Iterable[str]) -> list[str]:
        return [w for w in words if is_content(w, self.language)]

    def stem(self, word: str) -> str:
        return self._stem(word)


class KbIndex:
    def __init__(self, kb: KnowledgeBase, analyzer: Analyzer, tuning: Tuning) -> None:
        self._analyzer = analyzer
        self._tuning = tuning
        self._stem = functools.lru_cache(maxsize=_STEM_CACHE)(analyzer.stem)
        self._surface: dict[str, str] = {}  # every content word of the base -> its stem
        entry_terms: list[dict[str, float]] = []  # per entry: stem -> weight of the best field holding it
        questions: list[tuple[int, tuple[str, ...]]] = []  # (entry, stems) of every example question
        for number, entry in enumerate(kb.entries):
            entry_terms.append(self._entry_terms(entry.questions, entry.tags, entry.answer))
            questions.extend((number, stems) for stems in map(self._stems, entry.questions) if stems)
        self._idf = _idf_table(entry_terms)
        # A word of the query that the base lacks is as informative as a word held by no entry.
        self._unknown_idf = tuning.unknown_weight * _idf(len(entry_terms), 0)
        self._postings = self._entry_postings(entry_terms)
        self._question_entry = [entry for entry, _ in questions]
        self._question_postings = self._question_postings_of(questions)
        self._by_prefix: dict[str, list[str]] = defaultdict(list)
        for stem in self._idf:
            if len(stem) >= _PREFIX:
                self._by_prefix[stem[:_PREFIX]].append(stem)
        self._by_gram = _gram_index(self._surface)

    # -- building ---------------------------------------------------------------------------

    def _stems(self, text: str) -> tuple[str, ...]:
        stems: dict[str, None] = {}  # an ordered set
        for word in self._analyzer.content_words(text):
            stem = self._surface.setdefault(word, self._stem(word))
            stems[stem] = None
        return tuple(stems)

    def _entry_terms(self, questions: Sequence[str], tags: Sequence[str], answer: str) -> dict[str, float]:
        t = self._tuning
        fields = [(self._stems(answer), t.answer_weight), (self._stems(" ".join(tags)), t.tag_weight)]
        fields.extend((self._stems(q), t.question_weight) for q in questions)
        terms: dict[str, float] = {}
        for stems, weight in fields:
            for stem in stems:
                terms[stem] = max(terms.get(stem, 0.0), weight)
        return terms

    def _entry_postings(self, entry_terms: list[dict[str, float]]) -> dict[str, list[tuple[int, float]]]:
        """stem -> (entry, field weight x idf) for every entry holding it."""
        postings: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for number, terms in enumerate(entry_terms):
            for stem, weight in terms.items():
                postings[stem].append((number, weight * self._idf[stem]))
        return dict(postings)

    def _question_postings_of(
        self, questions: list[tuple[int, tuple[str, ...]]]
    ) -> dict[str, list[tuple[int, float]]]:
        """stem -> (question, the stem's share of that question's information)."""
        postings: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for number, (_, stems) in enumerate(questions):
            information = sum(self._idf[s] for s in stems)
            for stem in stems:
                postings[stem].append((number, self._idf[stem] / information))
        return dict(postings)

    # -- querying ---------------------------------------------------------------------------

    def expand(self, word: str) -> dict[str, float]:
        """The base's stems a query word stands for, with a similarity in 0..1 each."""
        stem = self._stem(word)
        found: dict[str, float] = {}
        if stem in self._idf:
            found[stem] = 1.0
        for other in self._by_prefix.get(stem[:_PREFIX], ()) if len(stem) >= _PREFIX else ():
            if other != stem and _same_family(stem, other):
                found[other] = self._tuning.family_similarity
        if stem not in self._idf and word not in self._surface:
            for candidate in self._typo_candidates(word):
                found.setdefault(self._surface[candidate], self._tuning.typo_similarity)
        return found

    def rank(self, words: Sequence[str], limit: int) -> list[Hit]:
        """Best entries for the query's content words, best first."""
        terms = self._query_terms(words)
        covered, information = self._query_coverage(terms)
        if not covered:
            return []
        matched: dict[str, float] = {}  # base stem -> best similarity of a query word to it
        for found in terms:
            for stem, similarity in found.items():
                matched[stem] = max(matched.get(stem, 0.0), similarity)
        by_question = self._question_coverage(matched)
        share = self._tuning.query_share
        hits = (
            Hit(entry, share * qc + (1.0 - share) * by_question.get(entry, 0.0), qc, by_question.get(entry, 0.0))
            for entry, qc in ((entry, value / information) for entry, value in covered.items())
        )
        return heapq.nsmallest(limit, hits, key=lambda h: (-h.score, -h.question_coverage, h.entry))

    def _query_terms(self, words: Sequence[str]) -> list[dict[str, float]]:
        terms: dict[str, dict[str, float]] = {}  # one term per stem: "entrega entregar" counts once
        for word in words:
            stem = self._stem(word)
            if stem not in terms:
                terms[stem] = self.expand(word)
        return list(terms.values())

    def _query_coverage(self, terms: list[dict[str, float]]) -> tuple[dict[int, float], float]:
        """(entry -> query information it holds, the query's whole information)."""
        covered: dict[int, float] = defaultdict(float)
        information = 0.0
        for found in terms:
            if not found:
                information += self._unknown_idf
                continue
            information += max(similarity * self._idf[stem] for stem, similarity in found.items())
            best: dict[int, float] = {}  # a word counts once per entry, by its best match
            for stem, similarity in found.items():
                for entry, weight in self._postings[stem]:
                    value = similarity * weight
                    if value > best.get(entry, 0.0):
                        best[entry] = value
            for entry, value in best.items():
                covered[entry] += value
        return covered, information

    def _question_coverage(self, matched: dict[str, float]) -> dict[int, float]:
        """entry -> the largest share of one of its example questions that the query holds."""
        by_question: dict[int, float] = defaultdict(float)
        for stem, similarity in matched.items():
            for question, share in self._question_postings.get(stem, ()):
                by_question[question] += similarity * share
        by_entry: dict[int, float] = {}
        for question, value in by_question.items():
            entry = self._question_entry[question]
            if value > by_entry.get(entry, 0.0):
                by_entry[entry] = value
        return by_entry

    def _typo_candidates(self, word: str) -> list[str]:
        """Known words within one edit (two for long words) of `word`."""
        if len(word) < 5:
            return []
        max_edits = 2 if len(word) >= 9 else 1
        grams = _grams(word)
        shared: dict[str, int] = defaultdict(int)
        for gram in grams:
            for candidate in self._by_gram.get(gram, ()):
                shared[candidate] += 1
        # Each edit destroys at most three trigrams of the padded word.
        needed = max(1, len(grams) - 3 * max_edits)
        return [
            candidate
            for candidate, count in shared.items()
            if count >= needed
            and abs(len(candidate) - len(word)) <= max_edits
            and _edit_distance(word, candidate, max_edits) <= max_edits
        ]


def _idf_table(entry_terms: list[dict[str, float]]) -> dict[str, float]:
    df: dict[str, int] = defaultdict(int)
    for terms in entry_terms:
        for stem in terms:
            df[stem] += 1
    return {stem: _idf(len(entry_terms), count) for stem, count in df.items()}


def _idf(entries: int, df: int) -> float:
    """BM25's idf, always positive."""
    return math.log(1.0 + (entries - df + 0.5) / (df + 0.5))


def _same_family(a: str, b: str) -> bool:
    """Stems that share a prefix covering most of both: "devolu"/"devolv", not "cont"/"contat"."""
    common = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        common += 1
    return common >= _PREFIX and common >= 0.75 * max(len(a), len(b))


def _grams(word: str) -> set[str]:
    padded = f"^{word}$"
    return {padded[i : i + _GRAM] for i in range(len(padded) - _GRAM + 1)}


def _gram_index(words: Iterable[str]) -> dict[str, list[str]]:
    index: dict[str, list[str]] = defaultdict(list)
    for word in words:
        if not word.isdigit():
            for gram in _grams(word):
                index[gram].append(word)
    return dict(index)


def _edit_distance(a: str, b: str, limit: int) -> int:
    """Optimal-string-alignment distance (a swap of two letters is one edit), capped at limit+1."""
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i] + [0] * len(b)
        for j, cb in enumerate(b, start=1):
            cost = 0 if ca == cb else 1
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                current[j] = min(current[j], previous2[j - 2] + 1)
        if min(current) > limit:
            return limit + 1
        previous2, previous = previous, current
    return previous[-1]
