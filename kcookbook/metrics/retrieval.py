"""Recall@k of a retrieval: how often the right item is among the ``k`` best-scored ones.

Image-text retrieval scores every query (an image, or a caption) against every candidate (the
captions, or the images); ``recall_at_k`` is the fraction of queries whose own candidate is ranked
within the first ``k``. Read the columns of the same similarity matrix for the other direction:
``recall_at_k(similarity.T, k)``.

    >>> similarity = np.array([[0.9, 0.1, 0.0], [0.8, 0.7, 0.1], [0.2, 0.3, 0.1]])
    >>> recall_at_k(similarity, 1), recall_at_k(similarity, 2), recall_at_k(similarity, 3)
    (0.3333333333333333, 0.6666666666666666, 1.0)
"""

import numpy as np


def recall_at_k(similarity, k, relevant=None):
    """The fraction of queries whose relevant candidate is among their ``k`` highest scores.

    Args:
        similarity: (queries, candidates) scores, higher is better (cosine similarities).
        k: how many of the best candidates count, ``1 <= k <= candidates``.
        relevant: (queries,) the column of each query's relevant candidate; default ``i`` for row
            ``i`` (query ``i`` and candidate ``i`` are a pair, e.g. an image and its caption).

    A candidate ties with the relevant one only if it scores exactly the same; ties count in the
    relevant candidate's favour (its rank is the number of strictly higher scores).
    """
    similarity = np.asarray(similarity, "float64")
    if similarity.ndim != 2 or 0 in similarity.shape:
        raise ValueError(f"similarity must be a non-empty (queries, candidates) matrix, got shape {similarity.shape}.")
    queries, candidates = similarity.shape
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= candidates:
        raise ValueError(f"k must be an integer between 1 and the number of candidates ({candidates}), got {k!r}.")
    if relevant is None:
        if queries > candidates:
            raise ValueError(f"{queries} queries but {candidates} candidates: with no `relevant`, query i's pair "
                             "is candidate i; pass relevant=[the column of each query's candidate].")
        relevant = np.arange(queries)
    relevant = np.asarray(relevant)
    if relevant.shape != (queries,) or not np.issubdtype(relevant.dtype, np.integer) or \
            relevant.min() < 0 or relevant.max() >= candidates:
        raise ValueError(f"relevant must hold one candidate column in [0, {candidates}) per query ({queries}); "
                         f"got shape {relevant.shape}, dtype {relevant.dtype}.")
    target = similarity[np.arange(queries), relevant]
    rank = (similarity > target[:, None]).sum(axis=1)
    return float((rank < k).mean())
