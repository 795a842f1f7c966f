"""kcookbook.baselines.small_cnn: the from-scratch baseline of cv/02 and cv/04."""

import doctest

import keras
import numpy as np
import pytest

import kcookbook.baselines
from kcookbook.baselines import small_cnn


def test_small_cnn_learns_bright_versus_dark_from_raw_pixels(seeded):
    # 0-255 inputs (its Rescaling layer), logits out: bright squares are class 1, dark ones 0
    images = np.concatenate([seeded.integers(0, 60, (16, 28, 28, 1)), seeded.integers(195, 256, (16, 28, 28, 1))])
    labels = np.array([0] * 16 + [1] * 16)
    model = small_cnn((28, 28, 1), num_classes=2)
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(images.astype("uint8"), labels, batch_size=8, epochs=8, verbose=0)
    assert (model.predict(images, verbose=0).argmax(-1) == labels).all()


@pytest.mark.backend_independent
def test_docstring_and_bad_shapes():
    failures, tried = doctest.testmod(kcookbook.baselines)
    assert tried >= 2 and failures == 0
    with pytest.raises(ValueError, match="input_shape must be"):
        small_cnn((28, 28))
    with pytest.raises(ValueError, match="at least 10 pixels"):
        small_cnn((8, 8, 3))
