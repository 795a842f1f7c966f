"""How close a changed model (bfloat16, int8) stays to its float32 self: numpy, on outputs already computed.

    >>> import numpy as np
    >>> ids = np.array([[1, 2, 0]])
    >>> logits = np.log(np.full((1, 3, 3), 1 / 3))
    >>> round(float(next_token_nll(logits, ids)), 4)  # log 3: uniform over 3 tokens
    1.0986
"""

import numpy as np


def next_token_nll(logits, token_ids):
    """Mean negative log-likelihood of each next token: ``token_ids[:, 1:]`` under ``logits[:, :-1]``
    (``(batch, length, vocabulary)``), computed in float64."""
    logits = np.asarray(logits, "float64")
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return -np.take_along_axis(log_probs[:, :-1], np.asarray(token_ids)[:, 1:, None], -1).mean()


def logits_closeness(logits, reference, token_ids):
    """``logits`` against ``reference`` (the float32 model's) on the same ``token_ids``: perplexity,
    its ratio to the reference's, the largest absolute logit difference and how often the greedy
    next token is the same."""
    logits, reference = np.asarray(logits, "float64"), np.asarray(reference, "float64")
    nll, reference_nll = next_token_nll(logits, token_ids), next_token_nll(reference, token_ids)
    return {"perplexity": float(np.exp(nll)), "perplexity_ratio": float(np.exp(nll - reference_nll)),
            "max_logit_diff": float(np.abs(logits - reference).max()),
            "argmax_agreement": float((logits.argmax(-1) == reference.argmax(-1)).mean())}


def _nearest(unit_vectors):
    similarity = unit_vectors @ unit_vectors.T
    np.fill_diagonal(similarity, -np.inf)
    return similarity.argmax(1)


def embedding_closeness(vectors, reference):
    """Embeddings ``(n, dim)`` against ``reference``'s of the same texts: the smallest cosine between a
    text's two vectors, and how often a text's nearest other text is the same."""
    def unit(x):
        x = np.asarray(x, "float64")
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    vectors, reference = unit(vectors), unit(reference)
    return {"min_cosine": float((vectors * reference).sum(1).min()),
            "nearest_agreement": float((_nearest(vectors) == _nearest(reference)).mean())}
