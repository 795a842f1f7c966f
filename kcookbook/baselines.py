"""Small baselines the recipes measure pretrained and custom models against.

``small_cnn`` is the classic MNIST network: two convolution blocks and a dense layer, trained from
scratch. A pretrained model should beat it at the same number of training images to earn its cost.

    >>> model = small_cnn((28, 28, 1), num_classes=10)
    >>> model.count_params()
    34826
"""

import keras


def small_cnn(input_shape=(28, 28, 1), num_classes=10, dropout=0.3, name="cnn"):
    """Rescaling(1/255) → [Conv 3×3 + ReLU → MaxPool] × 2 (32, 64 filters) → Dropout → Dense logits.

    Takes 0-255 pixels (uint8 or float) of ``input_shape``; outputs ``num_classes`` logits.
    """
    if len(input_shape) != 3 or min(input_shape[:2]) < 10:
        raise ValueError(f"input_shape must be (height, width, channels) with sides of at least 10 pixels "
                         f"(two 3×3 convolutions and poolings), got {tuple(input_shape)}.")
    return keras.Sequential([
        keras.Input(tuple(input_shape)),
        keras.layers.Rescaling(1 / 255),
        keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Flatten(), keras.layers.Dropout(dropout),
        keras.layers.Dense(num_classes),
    ], name=name)
