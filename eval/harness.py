"""Scoring the knowledge-base engine against a question file, and timing it.

Question files hold `questions: [{text, expect}]`, `expect` being the id of the entry that answers
the question or `fallback` where no entry does.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml

from services.worker.engines.e5 import E5Model
from services.worker.engines.kb import OPTIONS, Entry, KbEngine, KnowledgeBase

FALLBACK = "fallback"


@dataclass(frozen=True, slots=True)
class Question:
    text: str
    expect: str  # an entry id, or FALLBACK


@dataclass(frozen=True, slots=True)
class Outcome:
    question: Question
    kind: str  # the reply's kind: answer, clarify, fallback, smalltalk
    got: str  # the entry id answered directly, or FALLBACK when none was
    offered: tuple[str, ...]  # the entries a question back offered
    ranked: tuple[str, ...]  # the three best-ranked entries: what the LLM engine is given
    score: float  # the reply's confidence
    ms: float
    used_model: bool  # the multilingual model was asked

    @property
    def answerable(self) -> bool:
        return self.question.expect != FALLBACK

    @property
    def correct(self) -> bool:
        """Answered right directly, or (out of scope) not answered with an entry."""
        return self.got == self.question.expect

    @property
    def resolved(self) -> bool:
        """An answerable question answered right directly, or by one tap on the options."""
        return self.correct or (self.kind == "clarify" and self.question.expect in self.offered)

    @property
    def confidently_wrong(self) -> bool:
        """Answered directly with an entry that is not the one meant (or any, out of scope)."""
        return self.got != FALLBACK and self.got != self.question.expect


@dataclass(frozen=True, slots=True)
class Report:
    outcomes: tuple[Outcome, ...]

    def _count(self, answerable: bool, test: Callable[[Outcome], bool]) -> tuple[int, int]:
        picked = [o for o in self.outcomes if o.answerable == answerable]
        return sum(test(o) for o in picked), len(picked)

    @property
    def answered(self) -> tuple[int, int]:
        """(answered right directly, total) over questions an entry answers."""
        return self._count(True, lambda o: o.correct)

    @property
    def resolved(self) -> tuple[int, int]:
        """(resolved in one step: directly or by one tap, total) over answerable questions."""
        return self._count(True, lambda o: o.resolved)

    @property
    def wrong(self) -> tuple[int, int]:
        """(answered directly with another entry, total) over answerable questions."""
        return self._count(True, lambda o: o.confidently_wrong)

    @property
    def refused(self) -> tuple[int, int]:
        """(not answered with an entry, total) over questions no entry answers."""
        return self._count(False, lambda o: o.correct)

    @property
    def out_of_scope_answered(self) -> tuple[int, int]:
        return self._count(False, lambda o: o.kind == "answer")

    @property
    def out_of_scope_asked(self) -> tuple[int, int]:
        """(asked back, total) over questions no entry answers: a tap away from a person."""
        return self._count(False, lambda o: o.kind == "clarify")

    def recall(self, k: int) -> tuple[int, int]:
        """(the entry meant among the k best-ranked, total) over answerable questions."""
        return self._count(True, lambda o: o.question.expect in o.ranked[:k])

    @property
    def model_share(self) -> tuple[int, int]:
        """(questions the multilingual model was asked for, questions)."""
        return sum(o.used_model for o in self.outcomes), len(self.outcomes)

    @property
    def failures(self) -> list[Outcome]:
        """Answerable questions not resolved, and out-of-scope ones answered with an entry."""
        return [o for o in self.outcomes if (not o.resolved if o.answerable else o.kind == "answer")]

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
        reply, ranking = engine.explain(question.text)
        ms = (time.perf_counter() - started) * 1000.0
        ranked = tuple(engine.kb.entries[candidate.entry].id for candidate in ranking.candidates[:OPTIONS])
        outcomes.append(
            Outcome(
                question=question,
                kind=reply.kind,
                got=reply.sources[0] if reply.kind == "answer" and reply.sources else FALLBACK,
                offered=tuple(option.id for option in reply.options) if reply.kind == "clarify" else (),
                ranked=ranked,
                score=reply.confidence,
                ms=ms,
                used_model=ranking.semantic,
            )
        )
    return Report(tuple(outcomes))


@dataclass(frozen=True, slots=True)
class Latency:
    count: int
    p50_ms: float
    p95_ms: float

    @classmethod
    def of(cls, ms: Sequence[float]) -> Latency:
        if len(ms) < 2:
            return cls(len(ms), ms[0] if ms else 0.0, ms[0] if ms else 0.0)
        return cls(len(ms), statistics.median(ms), statistics.quantiles(ms, n=20)[-1])


@dataclass(frozen=True, slots=True)
class Timing:
    entries: int
    build_ms: float
    words: Latency  # replies words alone were sure of
    model: Latency  # replies that asked the multilingual model


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


def time_synthetic(entries: int = 1000, replies: int = 500, seed: int = 7, model: E5Model | None = None) -> Timing:
    """Index build time and per-reply latency on a synthetic base, apart for replies that words
    alone were sure of and replies that asked the model; queries reuse and mangle the base's words."""
    kb = synthetic_base(entries, seed)
    started = time.perf_counter()
    engine = KbEngine(kb, model=model)
    build_ms = (time.perf_counter() - started) * 1000.0
    rng = random.Random(seed + 1)
    words_ms: list[float] = []
    model_ms: list[float] = []
    for _ in range(replies):
        words = rng.choice(rng.choice(kb.entries).questions).split()
        words.append("".join(rng.sample("abcdefghij", 6)))  # a word the base does not know
        if rng.random() < 0.5:
            rng.shuffle(words)  # less like the entry: words alone are less often sure
        text = " ".join(words)
        started = time.perf_counter()
        _, ranking = engine.explain(text)
        ms = (time.perf_counter() - started) * 1000.0
        (model_ms if ranking.semantic else words_ms).append(ms)
    return Timing(entries, build_ms, Latency.of(words_ms), Latency.of(model_ms))
