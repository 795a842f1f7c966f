"""kcookbook.metrics.recall_at_k against scikit-learn's top-k accuracy and a count by hand."""

import doctest

import numpy as np
import pytest
from sklearn.metrics import top_k_accuracy_score

from kcookbook.metrics import retrieval
from kcookbook.metrics import recall_at_k

pytestmark = pytest.mark.backend_independent  # numpy only


@pytest.mark.parametrize("k", [1, 3, 7])
def test_recall_at_k_equals_sklearn_top_k_accuracy(k):
    scores = np.random.default_rng(k).normal(size=(40, 9))
    relevant = np.random.default_rng(100 + k).integers(9, size=40)
    expected = top_k_accuracy_score(relevant, scores, k=k, labels=np.arange(9))
    assert recall_at_k(scores, k, relevant=relevant) == pytest.approx(expected)


def test_paired_rows_and_columns_read_both_directions():
    scores = np.random.default_rng(0).normal(size=(12, 12))
    for k in (1, 4):
        by_hand = np.mean([i in np.argsort(-scores[i])[:k] for i in range(12)])
        by_hand_t = np.mean([j in np.argsort(-scores[:, j])[:k] for j in range(12)])
        assert recall_at_k(scores, k) == pytest.approx(by_hand)
        assert recall_at_k(scores.T, k) == pytest.approx(by_hand_t)


def test_ties_count_for_the_relevant_item():
    assert recall_at_k(np.ones((3, 3)), 1) == 1.0


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="k must be"):
        recall_at_k(np.zeros((2, 2)), 3)
    with pytest.raises(ValueError, match="relevant"):
        recall_at_k(np.zeros((2, 2)), 1, relevant=[0, 2])
    with pytest.raises(ValueError, match="pass relevant"):
        recall_at_k(np.zeros((3, 2)), 1)
    with pytest.raises(ValueError, match="non-empty"):
        recall_at_k(np.zeros((0, 2)), 1)


def test_doctest():
    assert doctest.testmod(retrieval).failed == 0
