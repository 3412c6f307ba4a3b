"""Scoring the knowledge-base engine against a question file, and timing it.

Question files hold `questions: [{text, expect}]`, `expect` being the id of the entry that answers
the question or `fallback` where no entry does.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml

from services.worker.engines.kb import Entry, KbEngine, KnowledgeBase

FALLBACK = "fallback"


@dataclass(frozen=True, slots=True)
class Question:
    text: str
    expect: str  # an entry id, or FALLBACK


@dataclass(frozen=True, slots=True)
class Outcome:
    question: Question
    got: str  # the entry id answered, or FALLBACK
    score: float  # the reply's confidence
    best: str  # the best-ranked entry, even when the engine fell back ("" when none)
    best_score: float
    ms: float
    top3: tuple[str, ...] = ()  # the three best-ranked entries: what the LLM engine is given

    @property
    def recalled(self) -> bool:
        """Whether the expected entry is among the top three retrieved (answerable questions)."""
        return self.question.expect in self.top3

    @property
    def correct(self) -> bool:
        return self.got == self.question.expect


@dataclass(frozen=True, slots=True)
class Report:
    outcomes: tuple[Outcome, ...]

    def _share(self, answerable: bool) -> tuple[int, int]:
        picked = [o for o in self.outcomes if (o.question.expect != FALLBACK) == answerable]
        return sum(o.correct for o in picked), len(picked)

    @property
    def answered(self) -> tuple[int, int]:
        """(correct, total) over questions an entry answers: top-1 accuracy."""
        return self._share(answerable=True)

    @property
    def refused(self) -> tuple[int, int]:
        """(correct, total) over questions no entry answers: correct-fallback rate."""
        return self._share(answerable=False)

    @property
    def recall3(self) -> tuple[int, int]:
        """(recalled, total) over answerable questions: retrieval recall@3."""
        picked = [o for o in self.outcomes if o.question.expect != FALLBACK]
        return sum(o.recalled for o in picked), len(picked)

    @property
    def wrong(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.correct]

    @property
    def ms(self) -> list[float]:
        return [o.ms for o in self.outcomes]


def rate(share: tuple[int, int]) -> float:
    """correct / total; 1.0 for an empty set, which has nothing to get wrong."""
    correct, total = share
    return correct / total if total else 1.0


def load_questions(path: Path) -> list[Question]:
    """Read a question file; raises OSError or ValueError naming the file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: invalid YAML: {exc}") from None
    items = data.get("questions") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise ValueError(f"{path}: 'questions' must be a non-empty list of {{text, expect}}")
    questions = []
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict) or not isinstance(item.get("text"), str) or "expect" not in item:
            raise ValueError(f"{path}: question {number} needs a 'text' string and an 'expect' id")
        fields = cast(dict[str, Any], item)
        questions.append(Question(fields["text"], str(fields["expect"])))
    return questions


def unknown_expectations(kb: KnowledgeBase, questions: Sequence[Question]) -> list[str]:
    """`expect` values naming no entry: a typo in the question file, not an engine mistake."""
    ids = {e.id for e in kb.entries} | {FALLBACK}
    return sorted({q.expect for q in questions if q.expect not in ids})


def evaluate(engine: KbEngine, questions: Sequence[Question]) -> Report:
    outcomes = []
    for question in questions:
        started = time.perf_counter()
        reply = engine.answer(question.text)
        ms = (time.perf_counter() - started) * 1000.0
        got = reply.sources[0] if reply.sources else FALLBACK
        top = engine.search(question.text, limit=3)
        best, best_score = (top[0][0].id, top[0][1]) if top else ("", 0.0)
        top3 = tuple(entry.id for entry, _ in top)
        outcomes.append(Outcome(question, got, reply.confidence, best, best_score, ms, top3))
    return Report(tuple(outcomes))


@dataclass(frozen=True, slots=True)
class Timing:
    entries: int
    build_ms: float
    mean_ms: float
    p95_ms: float
    max_ms: float
    replies: int


def synthetic_base(entries: int, seed: int = 7) -> KnowledgeBase:
    """A base of `entries` made-up entries with a realistic spread of content words.

    Word frequencies follow Zipf's law shifted past the head that stop words take in real text
    (weight 1 / (rank + 30)), so the commonest content word is in about a fifth of the entries,
    as "pedido" or "order" would be in a large shop's base.
    """
    rng = random.Random(seed)
    syllables = [c + v for c in "bcdfglmnprstv" for v in "aeiou"]
    vocabulary = sorted({"".join(rng.choices(syllables, k=rng.randint(2, 4))) for _ in range(6000)})
    rng.shuffle(vocabulary)
    weights = [1.0 / (rank + 30) for rank in range(1, len(vocabulary) + 1)]

    def sentence(words: int) -> str:
        return " ".join(rng.choices(vocabulary, weights, k=words))

    return KnowledgeBase(
        language="pt",
        fallback="Desculpe, não encontrei essa informação.",
        entries=tuple(
            Entry(
                id=f"e{i}",
                questions=tuple(sentence(rng.randint(3, 8)) for _ in range(rng.randint(2, 4))),
                answer=sentence(rng.randint(12, 40)),
                tags=tuple(rng.choices(vocabulary[:50], k=2)),
            )
            for i in range(entries)
        ),
    )


def time_synthetic(entries: int = 1000, replies: int = 500, seed: int = 7) -> Timing:
    """Index build time and per-reply latency on a synthetic base; queries reuse and mangle its words."""
    kb = synthetic_base(entries, seed)
    started = time.perf_counter()
    engine = KbEngine(kb)
    build_ms = (time.perf_counter() - started) * 1000.0
    rng = random.Random(seed + 1)
    ms = []
    for _ in range(replies):
        words = rng.choice(rng.choice(kb.entries).questions).split()
        words.append("".join(rng.sample("abcdefghij", 6)))  # a word the base does not know
        started = time.perf_counter()
        engine.answer(" ".join(words))
        ms.append((time.perf_counter() - started) * 1000.0)
    p95 = statistics.quantiles(ms, n=20)[-1]
    return Timing(entries, build_ms, statistics.fmean(ms), p95, max(ms), replies)
