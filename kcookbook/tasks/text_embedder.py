"""TextEmbedder: strings → one vector each, for search, clustering and similarity.

For sentence-transformers checkpoints (all-MiniLM-L6-v2) it pools exactly as they do: the mean of
the token vectors over real tokens, then L2 normalisation, so cosine similarity is a dot product.

    >>> embedder = TextEmbedder.from_preset("all_minilm_l6_v2")  # doctest: +SKIP
    >>> vectors = embedder.predict(["A cat sits.", "A kitten is sitting."])  # doctest: +SKIP
    >>> float(vectors[0] @ vectors[1]) > 0.7  # doctest: +SKIP
    True
"""

import keras
import numpy as np

from kcookbook.components import L2Normalization
from kcookbook.tasks.preprocessor import TextClassifierPreprocessor
from kcookbook.tasks.task import Task
from kcookbook.tasks.text_classifier import pool_sequence


@keras.saving.register_keras_serializable(package="kcookbook")
class TextEmbedder(Task):
    """Sentence embeddings from an encoder backbone.

    Args:
        backbone: an encoder (outputs ``sequence_output``, optionally ``pooled_output``).
        preprocessor: a ``TextClassifierPreprocessor`` (single segment), or None for token-id dicts.
        pooling: ``"mean"`` (default), ``"cls"`` or ``"pooled"``.
        normalize: L2-normalise the vectors.
    """

    preprocessor_cls = TextClassifierPreprocessor

    def __init__(self, backbone, preprocessor=None, pooling="mean", normalize=True,
                 name="text_embedder", **kwargs):
        inputs = backbone.input
        vectors = pool_sequence(backbone, backbone(inputs), inputs, pooling)
        if normalize:
            vectors = L2Normalization(name="l2_normalize")(vectors)
        super().__init__(inputs=inputs, outputs=vectors, name=name, **kwargs)
        self._init_task(backbone, preprocessor)
        self.pooling = pooling
        self.normalize = normalize

    LENGTH_STEP = 16  # positions a cut batch is rounded up to: few distinct shapes to compile

    def predict(self, x, batch_size=None, **kwargs):
        """Vectors for ``x`` (raw strings, or token-id dicts), in the order given.

        Like sentence-transformers' ``encode``, the sequences are embedded shortest first and each group
        of batches is cut to a multiple of ``LENGTH_STEP`` positions past its longest sequence, instead
        of every batch carrying the preprocessor's full ``sequence_length`` of padding (256 for
        all-MiniLM-L6-v2, where tweets need ~30). Padding never changes a vector (masked in attention
        and in the pooling), so only the time changes: about the padded fraction of it.
        """
        x, _, _ = self._prepare(x)
        any_length = all(len(t.shape) == 2 and t.shape[1] is None for t in keras.tree.flatten(self.input))
        groups = _length_groups(x, batch_size or 32, self.LENGTH_STEP) if any_length else None
        with self._keeps_state_on_failure():
            if groups is None:
                return keras.Model.predict(self, x, batch_size=batch_size, **kwargs)
            arrays, vectors = {k: np.asarray(v) for k, v in x.items()}, None
            for rows, width in groups:
                part = keras.Model.predict(self, {k: v[rows, :width] for k, v in arrays.items()},
                                           batch_size=batch_size, **kwargs)
                if vectors is None:
                    vectors = np.empty((len(x["padding_mask"]),) + part.shape[1:], part.dtype)
                vectors[rows] = part
            return vectors

    def get_config(self):
        config = super().get_config()
        config.update({"pooling": self.pooling, "normalize": self.normalize})
        return config


def _length_groups(inputs, batch_size, step):
    """``[(row indices, width)]`` covering every row once, shortest sequences first: consecutive batches
    of the sorted rows, each batch cut to its longest sequence rounded up to ``step`` positions, and
    batches of equal width merged (one compiled shape each). None where the inputs cannot be cut:
    not a dict of equal-length (rows, positions) arrays with a right-padded ``padding_mask``."""
    if not isinstance(inputs, dict) or "padding_mask" not in inputs:
        return None
    arrays = {k: np.asarray(v) for k, v in inputs.items()}
    mask = arrays["padding_mask"].astype(bool)
    if mask.ndim != 2 or any(a.shape[:2] != mask.shape for a in arrays.values()):
        return None
    lengths = mask.sum(axis=1)
    if not np.array_equal(mask, np.arange(mask.shape[1]) < lengths[:, None]):
        return None  # not right-padded: cutting the tail would drop real tokens
    order = np.argsort(lengths, kind="stable")
    groups = []
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = int(min(mask.shape[1], max(step, -(-int(lengths[rows].max()) // step) * step)))
        if groups and groups[-1][1] == width:
            groups[-1] = (np.concatenate([groups[-1][0], rows]), width)
        else:
            groups.append((rows, width))
    return groups
