"""TextClassifier: any encoder backbone + a pooled dense head, trained on raw strings.

    >>> classifier = TextClassifier.from_preset("all_minilm_l6_v2", num_classes=3)  # doctest: +SKIP
    >>> classifier.fit(["great day", "awful service"], [2, 0], epochs=1)  # doctest: +SKIP
    >>> classifier.predict(["not bad at all"]).shape  # doctest: +SKIP
    (1, 3)
"""

import keras

from kcookbook.components import MaskedMeanPooling
from kcookbook.tasks.classifier_head import classifier_head
from kcookbook.tasks.preprocessor import TextClassifierPreprocessor
from kcookbook.tasks.task import Task

POOLINGS = ("pooled", "cls", "mean")


def first_token_features(backbone, inputs, pooling):
    """The ``"pooled"`` or ``"cls"`` vector from the backbone's first-token-only path, or None where
    the backbone has none (``Backbone.first_token_outputs``) or the pooling reads every token."""
    offer = getattr(backbone, "first_token_outputs", None)
    outputs = offer(inputs) if pooling in ("pooled", "cls") and offer is not None else None
    if outputs is None:
        return None
    return outputs["pooled_output" if pooling == "pooled" else "first_token_output"]


def pool_sequence(backbone, outputs, inputs, pooling, name="pooling"):
    """One vector per example from a backbone's outputs: its pooled output, [CLS], or a masked mean."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
    if pooling == "pooled":
        if "pooled_output" not in outputs:
            raise ValueError(f"{backbone.name} has no pooled_output; use pooling='cls' or 'mean'.")
        return outputs["pooled_output"]
    sequence = outputs["sequence_output"]
    if pooling == "cls":
        return sequence[:, 0, :]
    return MaskedMeanPooling(name=name)(sequence, padding_mask=inputs["padding_mask"])


@keras.saving.register_keras_serializable(package="kcookbook")
class TextClassifier(Task):
    """Classify text with an encoder backbone.

    Args:
        backbone: an encoder whose outputs include ``sequence_output`` (and ``pooled_output`` for
            ``pooling="pooled"``).
        num_classes: number of classes (a positive integer).
        preprocessor: a ``TextClassifierPreprocessor``, or None to feed token-id dicts.
        pooling: ``"pooled"`` (the backbone's pooler, BERT's choice), ``"cls"`` or ``"mean"``
            (sentence-transformers' choice). ``from_preset`` picks the preset's own default.
        activation: None for logits (the default loss expects logits), or e.g. ``"softmax"``.
        dropout: dropout before the output layer.
    """

    preprocessor_cls = TextClassifierPreprocessor

    def __init__(self, backbone, num_classes, preprocessor=None, pooling="pooled", activation=None,
                 dropout=0.1, name="text_classifier", **kwargs):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= 0:
            raise ValueError(
                f"num_classes must be a positive integer (the number of labels), got {num_classes!r}.")
        inputs = backbone.input
        # "pooled" and "cls" read the first token only: a backbone that can compute that alone
        # (BERT: its last block on one query) builds it from its own layers, so the full last
        # block is not in this graph; the backbone's outputs and variables are unchanged.
        features = first_token_features(backbone, inputs, pooling)
        if features is None:
            features = pool_sequence(backbone, backbone(inputs), inputs, pooling)
        logits = classifier_head(features, num_classes, activation, dropout, name="logits")
        super().__init__(inputs=inputs, outputs=logits, name=name, **kwargs)
        self._init_task(backbone, preprocessor)
        self.num_classes = num_classes
        self.pooling = pooling
        self.activation = keras.activations.get(activation)
        self.dropout = dropout
        self.compile()

    def compile(self, optimizer="auto", loss="auto", metrics="auto", **kwargs):
        """Defaults: Adam(5e-5), sparse categorical cross-entropy, accuracy."""
        self._compile_classifier(5e-5, optimizer, loss, metrics, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes, "pooling": self.pooling,
                       "activation": keras.activations.serialize(self.activation),
                       "dropout": self.dropout})
        return config
