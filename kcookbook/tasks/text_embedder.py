"""TextEmbedder: strings → one vector each, for search, clustering and similarity.

For sentence-transformers checkpoints (all-MiniLM-L6-v2) it pools exactly as they do: the mean of
the token vectors over real tokens, then L2 normalisation, so cosine similarity is a dot product.

    >>> embedder = TextEmbedder.from_preset("all_minilm_l6_v2")  # doctest: +SKIP
    >>> vectors = embedder.predict(["A cat sits.", "A kitten is sitting."])  # doctest: +SKIP
    >>> float(vectors[0] @ vectors[1]) > 0.7  # doctest: +SKIP
    True
"""

import keras

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

    def get_config(self):
        config = super().get_config()
        config.update({"pooling": self.pooling, "normalize": self.normalize})
        return config
