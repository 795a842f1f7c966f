"""Retrieval for retrieval-augmented generation: cut documents into passages, find the nearest ones.

A retriever embeds every passage once (e.g. with ``TextEmbedder``, whose vectors have unit length),
embeds each question the same way, and keeps the passages whose vectors have the largest dot
product with the question's. The generator then reads those passages before answering.

    >>> chunk_words("one two three four five six seven", words_per_chunk=3, overlap=1)
    ['one two three', 'three four five', 'five six seven']
    >>> passages = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], "float32")
    >>> indices, scores = nearest(np.array([[0.8, 0.6]], "float32"), passages, k=2)
    >>> indices.tolist(), scores.astype(float).round(2).tolist()
    ([[1, 0]], [[0.96, 0.8]])
"""

import numpy as np


def chunk_words(text, words_per_chunk=100, overlap=0):
    """Split ``text`` into passages of ``words_per_chunk`` whitespace-separated words.

    Consecutive passages share ``overlap`` words, so a sentence cut at a boundary is whole in one
    of them. Line breaks become single spaces. The last passage may be shorter; every word is in
    at least one passage, in order.
    """
    if not isinstance(words_per_chunk, int) or words_per_chunk < 1:
        raise ValueError(f"words_per_chunk must be a positive integer, got {words_per_chunk!r}.")
    if not isinstance(overlap, int) or not 0 <= overlap < words_per_chunk:
        raise ValueError(f"overlap must be an integer in [0, words_per_chunk={words_per_chunk}), got "
                         f"{overlap!r}: each passage must move on by at least one word.")
    words = text.split()
    step = words_per_chunk - overlap
    passages = []
    for begin in range(0, max(len(words) - overlap, 1), step):
        passages.append(" ".join(words[begin:begin + words_per_chunk]))
    return [p for p in passages if p]


def nearest(query_vectors, passage_vectors, k):
    """The ``k`` passages with the largest dot product with each query, best first.

    Args:
        query_vectors: ``(queries, dim)``; passage_vectors: ``(passages, dim)``. With unit-length
            vectors (``TextEmbedder`` normalises them) the dot product is the cosine similarity.
        k: passages per query (at most the number of passages).

    Returns:
        ``(indices, scores)``, both ``(queries, k)``: passage rows and their scores, best first.
    """
    query_vectors = np.asarray(query_vectors, "float32")
    passage_vectors = np.asarray(passage_vectors, "float32")
    if query_vectors.ndim != 2 or passage_vectors.ndim != 2 or query_vectors.shape[1] != passage_vectors.shape[1]:
        raise ValueError(f"nearest takes (queries, dim) and (passages, dim) arrays of the same dim, got "
                         f"{query_vectors.shape} and {passage_vectors.shape}.")
    if not 1 <= k <= len(passage_vectors):
        raise ValueError(f"k must be between 1 and the number of passages ({len(passage_vectors)}), got {k}.")
    scores = query_vectors @ passage_vectors.T
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    indices = np.take_along_axis(top, order, axis=1)
    return indices, np.take_along_axis(scores, indices, axis=1)
