"""The lexical index of a knowledge base and the score that ranks its entries for a question.

Built once at load; a reply is a few dictionary look-ups per query word (about a third of a
millisecond on a base of a thousand entries, in pure Python): what a word stands for and what it
brings each entry are read the first time a customer uses it, and kept (`KbIndex._word`).

A query word stands for some of the base's stems (`KbIndex.expand`), each with a similarity:
  * its own stem                                                      1
  * stems extending it or sharing most of a long prefix ("rastre"/"rastrei")
                                                                      `family_similarity`
  * for a word the base does not know: words one edit away (two for long words) that start
    the same way ("entraga" -> "entrega")                             `typo_similarity`
  * for an unknown short word: the acronym of a phrase the base repeats ("nf" -> "nota fiscal")
  * for an unknown word: the base's words of its paraphrase group (text.SYNONYMS: "reach" ->
    "contact")                                                        `synonym_similarity`

Question words ("quando", "onde", "how much") are terms too, of little weight (text.QUESTION_WORDS).

An entry's score, in 0..1, is the mean of two views that must both be high to answer:
  * coverage: the share of the query's information (idf-weighted words) that the entry holds.
    A word counts by where the entry has it: in an example question, in its id or tags, in its
    answer, and more when in several of those (noisy-OR). A query word no entry has counts
    against every entry: "como faço bolo de cenoura" is all words a shop never uses.
  * question match: for the closest example question, the F-measure (beta > 1: recall counts
    more) of how much of the question the query holds and how much of the query's *known* words
    the question holds, plus a bonus for word pairs the two share ("quanto tempo", "de desconto").
    Unknown words were already counted by coverage, so they do not count twice here.
    An entry whose id, tags or answer hold the query's words matches a little even when no
    example question does ("aceita pix?" where only the answer names Pix): `described_match`
    times the share of the query's known information they hold.
What the engine makes of these scores (answer, ask back, fall back) is decided from calibrated
probabilities (confidence.py). A guess (a short question with a word the base never uses, held by
one entry through a single known word: `Tuning.guess_answers`) is flagged and its confidence
scaled down: the engine asks back on it rather than answer.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import overload

from .kbfile import Entry, KnowledgeBase
from .stemmer import STEMMERS
from .text import NUMBER_WORDS, PHRASES, QUESTION_WORDS, SYNONYMS, Language, is_content, join_phrases, words_of

_PREFIX = 4  # stems shorter than this only match exactly
_GRAM = 3
_STEM_CACHE = 8192
# Distinct query words kept read per index (`KbIndex._word`): customers' vocabulary repeats.
_WORD_CACHE = 4096
_ACRONYM_MIN_REPEATS = 2  # a phrase seen once is too weak a reason to read "nf" as "nota fiscal"
_ID_SEPARATORS = re.compile(r"[-_./:]+")

Pair = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Tuning:
    """Knobs of the scorer.

    The defaults were chosen on five bases at once (two Portuguese shops, a Portuguese gym, an
    English shop and an English internet provider: `python -m eval --all`), keeping only changes
    that helped on all of them, then checked on two bases written for that and never tuned on
    (eval/holdout). The weights are flat: moving one by 0.1 changes a question or two.
    `threshold` and `guess_answers` only scale a guess's confidence now (one of the features the
    confidence models were fitted on): change them and run `python -m eval.calibrate` again.
    """

    question_weight: float = 0.8
    label_weight: float = 0.6  # the entry's id and tags
    answer_weight: float = 0.45
    # A query word no entry holds weighs this share of the idf of a word held by no entry.
    unknown_weight: float = 1.0
    family_similarity: float = 0.9
    typo_similarity: float = 0.8
    synonym_similarity: float = 0.8
    coverage_share: float = 0.5  # the rest of the score is the question match
    beta: float = 1.5
    pair_weight: float = 0.5
    # A question word ("quando", "how") weighs this share of its idf.
    question_word_weight: float = 0.7
    # An entry whose id, tags or answer hold the query's words (and no example question does)
    # matches it at most this much: "aceita pix?" when only the answer names Pix.
    described_match: float = 0.3
    threshold: float = 0.31
    # A guess: a short question (at most `guess_terms` terms, question words included) with a word the base never uses
    # and a single word it knows, held by one entry well ahead of the next (whose score is at
    # most `guess_rival` of the winner's). "vcs vendem celular?" in a shop that sells to
    # companies, "do you sell furniture?", "quem descobriu o brasil?". Such a match is flagged
    # (`Hit.guess`) and its confidence scaled down by threshold / guess_answers: the word the base
    # lacks is as likely the topic of the question as a detail of it.
    guess_terms: int = 4
    guess_rival: float = 0.4
    guess_answers: float = 0.45


@dataclass(frozen=True, slots=True)
class Hit:
    entry: int  # position in KnowledgeBase.entries
    score: float
    coverage: float
    question_match: float
    confidence: float  # the score, scaled down for a guess (Tuning.guess_answers)
    # The share of the query's information the base knows at all (1: every word is the base's).
    known: float = 1.0
    # A guess (Tuning.guess_answers): the word the base lacks may well be the question's topic.
    guess: bool = False


# An entry ranked for a query: (-score, -question match, entry, score, coverage, question match).
# Sorted, the best come first (ties: the closer question match, then the entry first in the base).
_Row = tuple[float, float, int, float, float, float]


def _hit(row: _Row, known: float) -> Hit:
    _, _, entry, score, coverage, question_match = row
    return Hit(entry, score, coverage, question_match, score, known)


class Hits(Sequence[Hit]):
    """Every entry sharing a word with a query, best first.

    An answer from words alone reads the first two hits (`top`) and of the others only their
    entries and scores; so the others' `Hit`s are made when read (the fused ranking with the
    model reads them), not for every reply: a common word is in hundreds of a large base's entries.
    """

    __slots__ = ("_known", "_rows", "entries", "scores", "top")

    def __init__(self, rows: Sequence[_Row] = (), known: float = 1.0, top: tuple[Hit, ...] = ()) -> None:
        self._rows = rows  # sorted
        self._known = known
        self.top = top  # the first two hits (the first flagged when a guess)
        self.entries: Sequence[int] = [row[2] for row in rows]
        self.scores: Sequence[float] = [row[3] for row in rows]

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, index: int) -> Hit: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Hit]: ...

    def __getitem__(self, index: int | slice) -> Hit | Sequence[Hit]:
        if isinstance(index, slice):
            return tuple(self)[index]
        place = range(len(self._rows))[index]  # (an IndexError out of range, as for a tuple)
        return self.top[place] if place < len(self.top) else _hit(self._rows[place], self._known)

    def __iter__(self) -> Iterator[Hit]:
        yield from self.top
        for row in itertools.islice(self._rows, len(self.top), None):
            yield _hit(row, self._known)


@dataclass(frozen=True, slots=True)
class _Reach:
    """What a query word brings, by its best stem, to each entry and example question that holds
    one of its stems (`_best_per_key` over the postings); read-only, shared between words."""

    coverage: tuple[tuple[int, float], ...]  # (entry, weight x idf x similarity)
    # (question, its share of the question's information, that share x the information)
    questions: tuple[tuple[int, float, float], ...]
    described: tuple[tuple[int, float], ...]  # (entry, idf x similarity) by its id, tags, answer


@dataclass(frozen=True, slots=True)
class _Term:
    """One query word: the base stems it stands for (stem -> similarity), its information and reach."""

    found: dict[str, float]
    weight: float
    question_word: bool
    reach: _Reach


@dataclass(frozen=True, slots=True)
class _Word:
    """A query word as the index reads it, the same in every question (`KbIndex._word`)."""

    key: str  # its stem when a term, else the word itself: how word pairs are keyed
    term: _Term | None  # None: a stop word


@dataclass(frozen=True, slots=True)
class _Question:
    entry: int
    information: float  # sum of the idf of its stems
    pairs: int  # how many word pairs it has


class Analyzer:
    """Text -> words -> terms (content and question words) -> stems, for one language."""

    def __init__(self, language: Language) -> None:
        self.language = language
        self.stem = functools.lru_cache(maxsize=_STEM_CACHE)(STEMMERS[language])
        self.question_words = QUESTION_WORDS[language]
        self.number_words = NUMBER_WORDS[language]
        self.synonyms = SYNONYMS[language]

    def words(self, text: str) -> list[str]:
        return words_of(text, self.language)

    def is_term(self, word: str) -> bool:
        return word in self.question_words or is_content(word, self.language)

    def content_of(self, words: Iterable[str]) -> list[str]:
        return [w for w in words if self.is_term(w)]

    def pairs(self, words: Sequence[str]) -> set[Pair]:
        """Adjacent word pairs holding at least one term, terms stemmed."""
        content = [self.is_term(w) for w in words]
        keys = [self.stem(w) if c else w for w, c in zip(words, content, strict=True)]
        return {(keys[i], keys[i + 1]) for i in range(len(keys) - 1) if content[i] or content[i + 1]}


class KbIndex:
    def __init__(self, kb: KnowledgeBase, analyzer: Analyzer, tuning: Tuning) -> None:
        self._analyzer = analyzer
        self._tuning = tuning
        self._surface: dict[str, str] = {}  # every content word of the base -> its stem
        phrases: Counter[tuple[str, ...]] = Counter()  # runs of 2-3 content words, for acronyms
        self._described: list[set[str]] = []  # per entry: the stems of its id, tags and answer
        entry_terms, questions = self._read(kb, phrases)
        self._idf = _idf_table(entry_terms)
        for word in analyzer.question_words:
            stem = analyzer.stem(word)
            if stem in self._idf:
                self._idf[stem] *= tuning.question_word_weight
        # A query word the base lacks is as informative as a word held by no entry.
        self._unknown_idf = tuning.unknown_weight * _idf(len(entry_terms), 0)
        self._postings = self._entry_postings(entry_terms)
        self._described_postings = self._described_index()
        self._questions: list[_Question] = []
        self._question_postings: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self._pair_postings: dict[Pair, list[int]] = defaultdict(list)
        for entry, stems, pairs in questions:
            self._add_question(entry, stems, pairs)
        self._by_prefix: dict[str, list[str]] = defaultdict(list)
        for stem in self._idf:
            if len(stem) >= _PREFIX:
                self._by_prefix[stem[:_PREFIX]].append(stem)
        self._by_gram = _gram_index(self._surface)
        self._acronyms = _acronyms(phrases, analyzer.stem)
        self._synonyms = self._synonym_table()
        # A paraphrase is only worth rewriting into a word the base can match.
        self._phrases = {pair: word for pair, word in PHRASES[analyzer.language].items() if self.expand(word)}
        self._phrase_starts = frozenset(first for first, _ in self._phrases)
        # Per stem and similarity (a few tuning constants): bounded by the base, not by traffic.
        self._reaches: dict[tuple[str, float], _Reach] = {}
        # Query words read (`_word`), oldest first. A plain dict, not an lru_cache of a bound
        # method: that would tie the index in a reference cycle, kept after a reload until the
        # collector runs (never, for an index built before the service's gc.freeze()).
        self._words: dict[str, _Word] = {}

    # -- building ---------------------------------------------------------------------------

    def _read(
        self, kb: KnowledgeBase, phrases: Counter[tuple[str, ...]]
    ) -> tuple[list[dict[str, float]], list[tuple[int, tuple[str, ...], set[Pair]]]]:
        """(per entry: stem -> weight, every example question as (entry, stems, word pairs))."""
        entry_terms = []
        questions = []
        for number, entry in enumerate(kb.entries):
            stems_of_questions = []
            for text in entry.questions:
                words = self._analyzer.words(text)
                stems = self._stems(words, phrases)
                stems_of_questions.append(stems)
                if stems:
                    questions.append((number, stems, self._analyzer.pairs(words)))
            entry_terms.append(self._entry_terms(entry, stems_of_questions, phrases))
        return entry_terms, questions

    def _stems(self, words: Sequence[str], phrases: Counter[tuple[str, ...]]) -> tuple[str, ...]:
        """The distinct stems of the content words, in order; counts their 2- and 3-word runs."""
        content = self._analyzer.content_of(words)
        for n in (2, 3):
            phrases.update(tuple(content[i : i + n]) for i in range(len(content) - n + 1))
        stems: dict[str, None] = {}  # an ordered set
        for word in content:
            stems[self._surface.setdefault(word, self._analyzer.stem(word))] = None
        return tuple(stems)

    def _entry_terms(
        self, entry: Entry, stems_of_questions: list[tuple[str, ...]], phrases: Counter[tuple[str, ...]]
    ) -> dict[str, float]:
        """stem -> weight: 1 - the product of (1 - field weight) over the fields holding it."""
        t = self._tuning
        # Ids are usually written like "prazo-entrega": their words name the entry's topic.
        label = " ".join((_ID_SEPARATORS.sub(" ", entry.id), *entry.tags))
        fields = [(stems, t.question_weight) for stems in stems_of_questions]
        label_stems = self._stems(self._analyzer.words(label), phrases)
        answer_stems = self._stems(self._analyzer.words(entry.answer), phrases)
        self._described.append(set(label_stems) | set(answer_stems))
        fields.append((label_stems, t.label_weight))
        fields.append((answer_stems, t.answer_weight))
        missing: dict[str, float] = defaultdict(lambda: 1.0)
        for stems, weight in fields:
            for stem in stems:
                missing[stem] *= 1.0 - weight
        return {stem: 1.0 - m for stem, m in missing.items()}

    def _entry_postings(self, entry_terms: list[dict[str, float]]) -> dict[str, list[tuple[int, float]]]:
        """stem -> (entry, weight x idf) for every entry holding it."""
        postings: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for number, terms in enumerate(entry_terms):
            for stem, weight in terms.items():
                postings[stem].append((number, weight * self._idf[stem]))
        return dict(postings)

    def _described_index(self) -> dict[str, list[tuple[int, float]]]:
        """stem -> (entry, idf) for the entries whose id, tags or answer hold it. Numbers are left
        out: an answer's prices and days say little about the number a customer mentions."""
        postings: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for number, stems in enumerate(self._described):
            for stem in stems:
                if not stem.isdigit():
                    postings[stem].append((number, self._idf[stem]))
        return dict(postings)

    def _synonym_table(self) -> dict[str, tuple[str, ...]]:
        """stem -> the stems of its paraphrase groups that the base holds."""
        table: dict[str, set[str]] = defaultdict(set)
        for group in self._analyzer.synonyms:
            stems = {self._analyzer.stem(word) for word in group}
            for stem in stems:
                table[stem].update(other for other in stems if other != stem and other in self._idf)
        return {stem: tuple(sorted(others)) for stem, others in table.items() if others}

    def _add_question(self, entry: int, stems: tuple[str, ...], pairs: set[Pair]) -> None:
        number = len(self._questions)
        information = sum(self._idf[s] for s in stems)
        self._questions.append(_Question(entry, information, len(pairs)))
        for stem in stems:
            self._question_postings[stem].append((number, self._idf[stem] / information))
        for pair in pairs:
            self._pair_postings[pair].append(number)

    # -- querying ---------------------------------------------------------------------------

    def expand(self, word: str) -> dict[str, float]:
        """The base's stems a query word stands for, with a similarity in 0..1 each."""
        stem = self._analyzer.stem(word)
        found: dict[str, float] = {}
        if stem in self._idf:
            found[stem] = 1.0
        for other in self._by_prefix.get(stem[:_PREFIX], ()) if len(stem) >= _PREFIX else ():
            if other != stem and _same_family(stem, other):
                found[other] = self._tuning.family_similarity
        if stem in self._idf or word in self._surface:
            return found
        for candidate in self._typo_candidates(word):
            found.setdefault(self._surface[candidate], self._tuning.typo_similarity)
        for part in self._acronyms.get(word, ()):
            found.setdefault(part, self._tuning.family_similarity)
        for synonym in self._synonyms.get(stem, ()):
            found.setdefault(synonym, self._tuning.synonym_similarity)
        return found

    def rank(self, words: Sequence[str]) -> Hits:
        """The entries sharing a word with a query (its words, stop words included), best first."""
        if not self._phrase_starts.isdisjoint(words):  # (else there is no phrase to join)
            words = join_phrases(words, self._phrases)
        read = [self._word(word) for word in words]
        terms = _terms(read)
        information = sum(t.weight for t in terms)
        known = sum(t.weight for t in terms if t.found)
        if known <= 0.0:
            return Hits()
        coverage = _coverage(terms)
        question_match = self._question_match(terms, known, _pairs(read))
        for entry, value in self._described_match(terms, known).items():
            if value > question_match.get(entry, 0.0):
                question_match[entry] = value
        rows = self._rows(coverage, question_match, information)
        known_share = known / information
        best = [_hit(row, known_share) for row in rows[:2]]
        if self._is_guess(terms, best):
            t = self._tuning
            best[0] = dataclasses.replace(best[0], confidence=best[0].score * t.threshold / t.guess_answers, guess=True)
        return Hits(rows, known_share, tuple(best))

    def term_count(self, words: Sequence[str]) -> int:
        """How many distinct terms (content and question words, told apart by stem) `words` hold."""
        return len({read.key for read in map(self._word, words) if read.term is not None})

    def _rows(self, coverage: dict[int, float], question_match: dict[int, float], information: float) -> list[_Row]:
        """The entries the query covers, scored, best first."""
        share = self._tuning.coverage_share
        rows = []
        for entry, held in coverage.items():
            covered, matched = held / information, question_match.get(entry, 0.0)
            score = share * covered + (1.0 - share) * matched
            rows.append((-score, -matched, entry, score, covered, matched))
        rows.sort()  # (entries are distinct: the order never reads past them)
        return rows

    def _is_guess(self, terms: list[_Term], best: list[Hit]) -> bool:
        """Whether the best hit is a guess (Tuning.guess_answers)."""
        t = self._tuning
        if len(terms) > t.guess_terms or all(term.found for term in terms):
            return False
        if sum(1 for term in terms if term.found and not term.question_word) > 1:
            return False
        rival = best[1].score if len(best) > 1 else 0.0
        return rival <= t.guess_rival * best[0].score

    def _word(self, word: str) -> _Word:
        """What the index makes of a query word: read the first time, then kept (the oldest word
        dropped past _WORD_CACHE)."""
        read = self._words.get(word)
        if read is None:
            if len(self._words) >= _WORD_CACHE:
                del self._words[next(iter(self._words))]
            read = self._words[word] = self._read_word(word)
        return read

    def _read_word(self, word: str) -> _Word:
        """`_word` uncached: a term's stems, information and reach."""
        if not self._analyzer.is_term(word):
            return _Word(word, None)
        found = self.expand(word)
        # A number the base never mentions (an age, a date, an order number) is a detail of
        # the customer's case, not a topic the base lacks; so is a question word.
        question_word = word in self._analyzer.question_words
        detail = word.isdigit() or word in self._analyzer.number_words or question_word
        unknown = 0.0 if detail else self._unknown_idf
        weight = max((s * self._idf[f] for f, s in found.items()), default=unknown)
        return _Word(self._analyzer.stem(word), _Term(found, weight, question_word, self._reach(found)))

    def _reach(self, found: dict[str, float]) -> _Reach:
        """What a word standing for `found` brings each entry and question; a single stem's (most
        words) is kept for every word that stands for it alike."""
        if len(found) != 1:
            return self._read_reach(found)
        key = next(iter(found.items()))
        reach = self._reaches.get(key)
        if reach is None:
            reach = self._reaches[key] = self._read_reach(found)
        return reach

    def _read_reach(self, found: dict[str, float]) -> _Reach:
        return _Reach(
            tuple(_best_per_key(found, self._postings).items()),
            tuple(
                (question, share, share * self._questions[question].information)
                for question, share in _best_per_key(found, self._question_postings).items()
            ),
            tuple(_best_per_key(found, self._described_postings).items()),
        )

    def _question_match(self, terms: list[_Term], known: float, pairs: set[Pair]) -> dict[int, float]:
        """entry -> the best match of the query with one of the entry's example questions."""
        recall: dict[int, float] = {}  # question -> its share the query holds
        held: dict[int, float] = {}  # question -> query information it holds
        for term in terms:
            for question, share, information in term.reach.questions:
                recall[question] = recall.get(question, 0.0) + share
                held[question] = held.get(question, 0.0) + information
        shared_pairs: dict[int, int] = {}
        for pair in pairs:
            for question in self._pair_postings.get(pair, ()):
                shared_pairs[question] = shared_pairs.get(question, 0) + 1
        beta2, pair_weight = self._tuning.beta**2, self._tuning.pair_weight
        gain = 1.0 + beta2
        best: dict[int, float] = {}
        for question, r in recall.items():
            r, p = r if r < 1.0 else 1.0, held[question] / known
            f = gain * p * r / (beta2 * p + r)
            q = self._questions[question]
            if question in shared_pairs:  # (no pair shared adds nothing)
                f += pair_weight * shared_pairs[question] / q.pairs
            f = f if f < 1.0 else 1.0
            if f > best.get(q.entry, 0.0):
                best[q.entry] = f
        return best

    def _described_match(self, terms: list[_Term], known: float) -> dict[int, float]:
        """entry -> `described_match` x the share of the query's known information that the
        entry's id, tags and answer hold."""
        held: dict[int, float] = {}
        for term in terms:
            for entry, value in term.reach.described:
                held[entry] = held.get(entry, 0.0) + value
        return {entry: self._tuning.described_match * value / known for entry, value in held.items()}

    def _typo_candidates(self, word: str) -> list[str]:
        """Known words one edit away (two for long words), starting the same way.

        Real typos rarely touch the first letter; requiring it keeps real words of the query
        ("apagar") from being read as other words of the base ("pagar").
        """
        if len(word) < 5:
            return []
        max_edits = 2 if len(word) >= 9 else 1
        keep = 2 if len(word) == 5 else 1
        grams = _grams(word)
        shared: Counter[str] = Counter()
        for gram in grams:
            shared.update(self._by_gram.get(gram, ()))
        # Each edit destroys at most three trigrams of the padded word.
        needed = max(1, len(grams) - 3 * max_edits)
        return [
            candidate
            for candidate, count in shared.items()
            if count >= needed
            and candidate[:keep] == word[:keep]
            and abs(len(candidate) - len(word)) <= max_edits
            and _edit_distance(word, candidate, max_edits) <= max_edits
        ]


def _terms(words: Iterable[_Word]) -> list[_Term]:
    """The terms of the query, one per stem: "entrega entregar" counts once, as its first word."""
    terms: dict[str, _Term] = {}
    for word in words:
        if word.term is not None and word.key not in terms:
            terms[word.key] = word.term
    return list(terms.values())


def _pairs(words: Sequence[_Word]) -> set[Pair]:
    """Adjacent word pairs holding at least one term, terms stemmed (as Analyzer.pairs)."""
    return {(a.key, b.key) for a, b in itertools.pairwise(words) if a.term is not None or b.term is not None}


def _coverage(terms: list[_Term]) -> dict[int, float]:
    """entry -> the query information it holds (a word counts once, by its best match)."""
    coverage: dict[int, float] = {}
    for term in terms:
        for entry, value in term.reach.coverage:
            coverage[entry] = coverage.get(entry, 0.0) + value
    return coverage


def _best_per_key(found: dict[str, float], postings: dict[str, list[tuple[int, float]]]) -> dict[int, float]:
    """key -> max over the found stems of similarity x posting value."""
    best: dict[int, float] = {}
    for stem, similarity in found.items():
        for key, value in postings.get(stem, ()):
            value *= similarity
            if value > best.get(key, 0.0):
                best[key] = value
    return best


def _idf(entries: int, df: int) -> float:
    """BM25's idf, always positive."""
    return math.log(1.0 + (entries - df + 0.5) / (df + 0.5))


def _idf_table(entry_terms: list[dict[str, float]]) -> dict[str, float]:
    df: Counter[str] = Counter()
    for terms in entry_terms:
        df.update(terms.keys())
    return {stem: _idf(len(entry_terms), count) for stem, count in df.items()}


def _same_family(a: str, b: str) -> bool:
    """Forms of one word: "rastre"/"rastrei", "entreg"/"entregu"; not "cont"/"contat" (too little
    shared) nor "empreg"/"empres" (emprego, empresa: they part before either ends)."""
    common = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        common += 1
    if common < 0.75 * max(len(a), len(b)):
        return False
    return common >= 6 or (common >= _PREFIX and common == min(len(a), len(b)))


def _acronyms(phrases: Counter[tuple[str, ...]], stem: Callable[[str], str]) -> dict[str, tuple[str, ...]]:
    """ "nf" -> stems of "nota fiscal", for phrases the base repeats and no rival phrase shares."""
    by_acronym: dict[str, list[tuple[int, tuple[str, ...]]]] = defaultdict(list)
    for phrase, count in phrases.items():
        if all(w.isalpha() for w in phrase):
            by_acronym["".join(w[0] for w in phrase)].append((count, phrase))
    table: dict[str, tuple[str, ...]] = {}
    for acronym, candidates in by_acronym.items():
        candidates.sort(reverse=True)
        count, phrase = candidates[0]
        if count >= _ACRONYM_MIN_REPEATS and (len(candidates) == 1 or candidates[1][0] < count):
            table[acronym] = tuple(stem(w) for w in phrase)
    return table


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
