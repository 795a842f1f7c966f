"""The classification head that TextClassifier and ImageClassifier put on their pooled features."""

import keras


def classifier_head(features, num_classes, activation=None, dropout=0.0, name="logits"):
    """Dropout then a dense layer of ``num_classes`` units: logits, or ``activation`` of them.

    The layers are named as keras_hub names them (``output_dropout``, then ``logits`` in its text
    classifiers and ``predictions`` in its image classifiers), because a task's weights file addresses
    layers by name: with these names keras_hub task presets load into ours and ours into keras_hub.
    """
    features = keras.layers.Dropout(dropout, name="output_dropout")(features)
    return keras.layers.Dense(num_classes, activation=activation, name=name)(features)
