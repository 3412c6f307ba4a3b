"""`python -m eval.calibrate`: fit the confidence models of the knowledge-base engine.

For every question of the tuned-on sets (never a held-out one), the engine's two rankings (words
alone; words and the multilingual model) are described by their features (services/worker/
engines/confidence.py) and labelled: is the first candidate the entry meant, is it among the
three offered. A logistic model is fitted to each label, per ranking: over the features for
words alone and for words and the model together (printed as the Python constants of
confidence.py), and for the latter a second P(answer) from boosted decision trees over all the
features (the tree model: `--write` stores it in services/worker/engines/semantic-trees.json). Then, leaving one
set out at a time (fitted on the others, applied to it: what an unseen base would see), it prints
what each pair of thresholds would do: answered right directly, resolved in one step (directly or
by one tap), confidently wrong, out-of-scope questions answered and asked back on. The thresholds
in confidence.py were chosen from that table.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from services.worker.engines.confidence import SEMANTIC_FEATURES, TREES_FILE, WORD_FEATURES, Ranking
from services.worker.engines.e5 import E5Model
from services.worker.engines.kb import OPTIONS, KbEngine, KnowledgeBase

from .__main__ import BUNDLED, TUNED
from .harness import FALLBACK, load_questions

Matrix = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Sample:
    group: str
    in_scope: bool
    features: tuple[float, ...]
    first: bool  # the first candidate is the entry meant
    offered: bool  # the entry meant is among the candidates


def samples(model: E5Model) -> tuple[list[Sample], list[Sample]]:
    """(words-alone samples, semantic samples) of every tuned-on question."""
    words: list[Sample] = []
    semantic: list[Sample] = []
    for name, role, kb_path, questions_path in BUNDLED:
        if role != TUNED:
            continue
        kb = KnowledgeBase.load(kb_path)
        engine = KbEngine(kb, model=model)
        ids = [entry.id for entry in kb.entries]
        for question in load_questions(questions_path):
            alone, both = engine.rankings(question.text)
            for ranking, into in ((alone, words), (both, semantic)):
                if ranking is not None and ranking.candidates:
                    into.append(_sample(name, question.expect, ranking, ids))
        print(f"  {name}: {len(words)} / {len(semantic)} samples so far", file=sys.stderr)
    return words, semantic


def _sample(group: str, expect: str, ranking: Ranking, ids: Sequence[str]) -> Sample:
    ranked = [ids[candidate.entry] for candidate in ranking.candidates[:OPTIONS]]
    in_scope = expect != FALLBACK
    return Sample(group, in_scope, ranking.features, in_scope and ranked[0] == expect, in_scope and expect in ranked)


@dataclass(frozen=True, slots=True)
class Fit:
    weights: Matrix
    bias: float
    means: Matrix
    scales: Matrix

    def predict(self, x: Matrix) -> Matrix:
        z = ((x - self.means) / self.scales) @ self.weights + self.bias
        p: Matrix = 1.0 / (1.0 + np.exp(-z))
        return p

    def code(self) -> str:
        def floats(values: Matrix) -> str:
            return "(" + ", ".join(f"{v:.4f}" for v in values) + ("," if len(values) == 1 else "") + ")"

        return (
            f"Logistic(weights={floats(self.weights)}, bias={self.bias:.4f}, "
            f"means={floats(self.means)}, scales={floats(self.scales)})"
        )


def fit(x: Matrix, y: Matrix, l2: float = 1.0, steps: int = 4000) -> Fit:
    """L2-regularised logistic regression by gradient descent on standardised features."""
    means, scales = x.mean(axis=0), x.std(axis=0) + 1e-9
    xs = (x - means) / scales
    weights, bias = np.zeros(x.shape[1]), 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(xs @ weights + bias)))
        weights -= 0.5 * (xs.T @ (p - y) / len(y) + l2 * weights / len(y))
        bias -= 0.5 * float((p - y).mean())
    return Fit(weights, bias, means, scales)


# Boosted trees (confidence.Trees), fitted by gradient boosting on the logistic loss: each tree
# fits the loss's gradient of the trees before it, split where the gain is largest among a few
# quantiles of each feature. Small, shallow and slow-learning: 1,400 samples are few, and the
# table of left-one-set-out results is what they must hold on (300 trees of depth 3 at 0.05 beat
# 100-200 trees, depth 2 or 4, and leaves of 50, there).
TREES = 300
TREE_DEPTH = 3
LEARNING_RATE = 0.05
SMALLEST_LEAF = 30
SPLIT_QUANTILES = np.linspace(0.05, 0.95, 16)
LEAF_L2 = 1.0

Node = list[float]


@dataclass(frozen=True, slots=True)
class TreesFit:
    bias: float
    trees: list[list[Node]]  # each: nodes, the root first (confidence.Trees)

    def predict(self, x: Matrix) -> Matrix:
        z = np.full(len(x), self.bias)
        for nodes in self.trees:
            z += _apply(nodes, 0, x)
        p: Matrix = 1.0 / (1.0 + np.exp(-z))
        return p

    def data(self) -> dict[str, Any]:
        """Six decimals, thresholds too: the file stays small, a leaf's value moves by under 1e-6, and
        the features split on (similarities, scores, counts) do not differ in their sixth decimal."""
        trees = [[[round(v, 6) for v in node] for node in nodes] for nodes in self.trees]
        return {"bias": round(self.bias, 6), "trees": trees}


def _apply(nodes: list[Node], at: int, x: Matrix) -> Matrix:
    node = nodes[at]
    if len(node) == 1:
        return np.full(len(x), node[0])
    left = x[:, int(node[0])] <= node[1]
    out = np.empty(len(x))
    out[left] = _apply(nodes, int(node[2]), x[left])
    out[~left] = _apply(nodes, int(node[3]), x[~left])
    return out


def fit_trees(x: Matrix, y: Matrix, trees: int = TREES) -> TreesFit:
    cuts = [np.unique(np.quantile(x[:, j], SPLIT_QUANTILES)) for j in range(x.shape[1])]
    share = float(np.clip(y.mean(), 1e-3, 1 - 1e-3))
    bias = float(np.log(share / (1 - share)))
    z = np.full(len(y), bias)
    fitted: list[list[Node]] = []
    for _ in range(trees):
        p = 1.0 / (1.0 + np.exp(-z))
        nodes: list[Node] = []
        _grow(nodes, x, y - p, p * (1 - p), np.arange(len(y)), 0, cuts)
        z += _apply(nodes, 0, x)
        fitted.append(nodes)
    return TreesFit(bias, fitted)


def _grow(
    nodes: list[Node], x: Matrix, g: Matrix, h: Matrix, rows: npt.NDArray[np.intp], depth: int, cuts: list[Matrix]
) -> int:
    """Append the subtree over `rows` to `nodes`; returns its root's place."""
    at = len(nodes)
    nodes.append([LEARNING_RATE * float(g[rows].sum() / (h[rows].sum() + LEAF_L2))])
    split = _best_split(x, g, h, rows, cuts) if depth < TREE_DEPTH else None
    if split is not None:
        feature, threshold = split
        left = x[rows, feature] <= threshold
        left_at = _grow(nodes, x, g, h, rows[left], depth + 1, cuts)
        right_at = _grow(nodes, x, g, h, rows[~left], depth + 1, cuts)
        nodes[at] = [float(feature), float(threshold), float(left_at), float(right_at)]
    return at


def _best_split(
    x: Matrix, g: Matrix, h: Matrix, rows: npt.NDArray[np.intp], cuts: list[Matrix]
) -> tuple[int, float] | None:
    """The split of `rows` (feature, threshold) that lowers the loss most with at least
    SMALLEST_LEAF rows a side; None when none does."""

    def score(g_sum: float, h_sum: float) -> float:
        return g_sum * g_sum / (h_sum + LEAF_L2)

    g_rows, h_rows = g[rows], h[rows]
    g_all, h_all = float(g_rows.sum()), float(h_rows.sum())
    best, best_gain = None, 0.0
    for feature, thresholds in enumerate(cuts):
        column = x[rows, feature]
        for threshold in thresholds:
            left = column <= threshold
            n = int(left.sum())
            if n < SMALLEST_LEAF or len(rows) - n < SMALLEST_LEAF:
                continue
            g_left, h_left = float(g_rows[left].sum()), float(h_rows[left].sum())
            gain = score(g_left, h_left) + score(g_all - g_left, h_all - h_left) - score(g_all, h_all)
            if gain > best_gain:
                best, best_gain = (feature, float(threshold)), gain
    return best


# The linear models with the multilingual model read the features it had before the tree model.
LINEAR_FEATURES = 9

Fitter = Callable[[Matrix, Matrix], Fit | TreesFit]


@dataclass(frozen=True, slots=True)
class Columns:
    groups: npt.NDArray[np.str_]
    x: Matrix
    first: Matrix
    offered: Matrix
    in_scope: npt.NDArray[np.bool_]


def columns(data: Sequence[Sample]) -> Columns:
    return Columns(
        groups=np.array([s.group for s in data]),
        x=np.array([s.features for s in data], dtype=np.float64),
        first=np.array([s.first for s in data], dtype=np.float64),
        offered=np.array([s.offered for s in data], dtype=np.float64),
        in_scope=np.array([s.in_scope for s in data]),
    )


def left_out(c: Columns, y: Matrix, fitter: Fitter) -> Matrix:
    """P(y) of each sample from a model fitted without its set."""
    p = np.zeros(len(y))
    for group in sorted(set(c.groups.tolist())):
        train = c.groups != group
        p[~train] = fitter(c.x[train], y[train]).predict(c.x[~train])
    return p


def outcomes(c: Columns, p_answer: Matrix, p_offer: Matrix, answer_at: float, offer_at: float) -> tuple[float, ...]:
    answers = p_answer >= answer_at
    asks = ~answers & (p_offer >= offer_at)
    inside, outside = c.in_scope, ~c.in_scope
    n_in, n_out = max(1, int(inside.sum())), max(1, int(outside.sum()))
    right = answers & (c.first == 1)
    return (
        float((right & inside).sum()) / n_in,
        float(((right | (asks & (c.offered == 1))) & inside).sum()) / n_in,
        float((answers & (c.first == 0) & inside).sum()) / n_in,
        float((answers & outside).sum()) / n_out,
        float((asks & outside).sum()) / n_out,
    )


def report(title: str, c: Columns, p_answer: Matrix, p_offer: Matrix) -> None:
    print(f"# {title}: left-one-set-out: answer_at offer_at | direct resolved wrong | out-of-scope answered asked")
    for answer_at in (0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.97):
        for offer_at in (0.2, 0.3, 0.4, 0.5, 0.6):
            d, r, w, oa, oq = outcomes(c, p_answer, p_offer, answer_at, offer_at)
            print(f"{answer_at:5.2f} {offer_at:5.2f} | {d:.3f} {r:.3f} {w:.3f} | {oa:.3f} {oq:.3f}")


def words_models(data: Sequence[Sample]) -> None:
    c = columns(data)
    print(f"\n# WORDS: {len(data)} samples ({int(c.in_scope.sum())} in scope)")
    print(f"answer={fit(c.x, c.first).code()},")
    print(f"offer={fit(c.x, c.offered).code()},")
    print(f"# features: {', '.join(WORD_FEATURES)}")
    report("WORDS", c, left_out(c, c.first, fit), left_out(c, c.offered, fit))


def semantic_models(data: Sequence[Sample], write: bool) -> None:
    """The linear models read the first LINEAR_FEATURES features; the tree model reads them all and
    answers too where it is sure (confidence.SEMANTIC.trees)."""
    c = columns(data)
    linear = replace(c, x=c.x[:, :LINEAR_FEATURES])
    print(f"\n# SEMANTIC: {len(data)} samples ({int(c.in_scope.sum())} in scope)")
    print(f"answer={fit(linear.x, c.first).code()},")
    print(f"offer={fit(linear.x, c.offered).code()},")
    if write:
        trees = {"features": list(SEMANTIC_FEATURES), "answer": fit_trees(c.x, c.first).data()}
        TREES_FILE.write_text(json.dumps(trees, separators=(",", ":")) + "\n")
        print(f"# trees written to {TREES_FILE}")
    p_linear, p_offer = left_out(linear, c.first, fit), left_out(linear, c.offered, fit)
    p_trees = left_out(c, c.first, fit_trees)
    unsure = (c.x[:, SEMANTIC_FEATURES.index("guess")] + c.x[:, SEMANTIC_FEATURES.index("ambiguous")]) > 0
    report("SEMANTIC, either model", c, np.maximum(np.where(unsure, 0.0, p_linear), p_trees), p_offer)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="store the fitted tree model for the engine")
    args = parser.parse_args(argv)
    words, semantic = samples(E5Model())
    words_models(words)
    semantic_models(semantic, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
