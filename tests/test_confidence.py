"""The confidence models as the engine reads them: the tree model fitted by eval.calibrate is read
back from its stored form with the same probabilities, and the stored model matches the features."""

from __future__ import annotations

import json

import numpy as np

from eval.calibrate import fit_trees
from services.worker.engines.confidence import SEMANTIC_FEATURES, TREES_FILE, Trees


def test_a_fitted_tree_model_reads_back_with_the_probabilities_it_was_fitted_with() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(400, 3))
    # Sure only where two features are high together: what a linear model cannot say.
    y = ((x[:, 0] > 0.3) & (x[:, 1] > 0.3)).astype(np.float64)
    fitted = fit_trees(x, y, trees=40)
    stored = Trees.load(json.loads(json.dumps(fitted.data())))
    read = np.array([stored.probability(row.tolist()) for row in x])
    assert np.abs(read - fitted.predict(x)).max() < 1e-4
    both, neither = read[(x[:, 0] > 1) & (x[:, 1] > 1)], read[(x[:, 0] < -1) & (x[:, 1] < -1)]
    assert both.min() > 0.7 and neither.max() < 0.1


def test_the_stored_tree_model_reads_the_engine_features() -> None:
    data = json.loads(TREES_FILE.read_text())
    assert tuple(data["features"]) == SEMANTIC_FEATURES
    model = Trees.load(data["answer"])
    used = {int(node[0]) for tree in model.trees for node in tree if len(node) == 4}
    assert used <= set(range(len(SEMANTIC_FEATURES)))
    assert 0.0 < model.probability([0.0] * len(SEMANTIC_FEATURES)) < 1.0
