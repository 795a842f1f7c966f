"""kcookbook.retrieval: passages cover the text in order; nearest agrees with a full sort."""

import doctest

import numpy as np
import pytest

from kcookbook import retrieval
from kcookbook.data import load_shakespeare
from kcookbook.retrieval import chunk_words, nearest


@pytest.mark.parametrize("size,overlap", [(5, 0), (5, 2), (7, 6), (100, 10)])
def test_chunks_cover_every_word_in_order_with_the_overlap(size, overlap):
    words = [f"w{i}" for i in range(23)]
    passages = [p.split() for p in chunk_words("\n ".join(words), size, overlap)]
    assert all(1 <= len(p) <= size for p in passages)
    rebuilt = passages[0] + [w for p in passages[1:] for w in p[overlap:]]
    assert rebuilt == words
    assert all(a[len(a) - overlap:] == b[:overlap] for a, b in zip(passages, passages[1:]) if len(a) == size)


def test_a_real_play_is_cut_into_passages():
    hamlet = load_shakespeare(["hamlet"])[0].text
    passages = chunk_words(hamlet, 100)
    assert len(passages) == -(-len(hamlet.split()) // 100)
    assert any("Alas, poor Yorick!" in p for p in passages)


def test_nearest_agrees_with_a_full_sort():
    rng = np.random.default_rng(0)
    queries, passages = rng.normal(size=(4, 8)), rng.normal(size=(50, 8))
    indices, scores = nearest(queries, passages, k=5)
    full = queries @ passages.T
    np.testing.assert_array_equal(indices, np.argsort(-full, axis=1)[:, :5])
    np.testing.assert_allclose(scores, np.sort(full, axis=1)[:, ::-1][:, :5], rtol=1e-5)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="overlap"):
        chunk_words("a b c", 3, overlap=3)
    with pytest.raises(ValueError, match="words_per_chunk"):
        chunk_words("a b c", 0)
    with pytest.raises(ValueError, match="k must be"):
        nearest(np.ones((1, 2)), np.ones((3, 2)), k=4)
    with pytest.raises(ValueError, match="same dim"):
        nearest(np.ones((1, 2)), np.ones((3, 5)), k=1)


def test_docstring_examples_run():
    result = doctest.testmod(retrieval, globs={**vars(retrieval)})
    assert result.attempted > 0 and result.failed == 0
