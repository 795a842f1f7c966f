"""A keras_hub 0.32 SAM preset (``SAMBackbone``: ViTDet image encoder, prompt encoder, mask decoder)
loads into kcookbook's SAMBackbone with keras_hub's image embeddings, mask logits and IoU scores.

keras_hub builds a tiny SAM (64-px images, 16-px patches, a windowed and a global layer), every
weight randomised (norm scales too, so a swapped norm shows), runs its ``SAMImageSegmenter`` once
(which builds the mask decoder, so ``save_to_preset`` writes its weights, as in keras_hub's Kaggle
presets) and writes the preset; kcookbook's ``Backbone.from_preset`` and
``ImageSegmenter.from_preset`` read it. Prompts: a foreground point (with SAM's padding point)
and a box.

The parity tests were run on jax, tensorflow and torch when written; CI runs them in its torch run
only (``one_backend``: building and calling keras_hub's model costs 40-130 s per file on jax and
tensorflow here, and kcookbook's per-backend numerics of this family are covered by its transformers
parity tests). ``KCOOKBOOK_ALL_BACKENDS=1`` runs them on every backend.
"""

import shutil

import keras
import numpy as np
import pytest

from helpers import assert_keras_hub_option_refused

from kcookbook.backbones import Backbone, SAMBackbone
from kcookbook.tasks import ImageSegmenter

import keras_hub  # the test-only reference

IMAGE_SIZE, WIDTH = 64, 8
PROMPTS = {  # keras_hub's form; ours is the same with boxes as (x0, y0, x1, y1)
    "point": dict(points=[[[20.0, 30.0], [0.0, 0.0]]], labels=[[1.0, -1.0]], boxes=np.zeros((1, 0, 2, 2))),
    "box": dict(points=np.zeros((1, 0, 2)), labels=np.zeros((1, 0)), boxes=[[[[5.0, 8.0], [40.0, 50.0]]]]),
}


def numpy(x):
    return keras.ops.convert_to_numpy(x)


def keras_hub_sam():
    encoder = keras_hub.models.ViTDetBackbone(
        hidden_size=16, num_layers=2, intermediate_dim=32, num_heads=2, global_attention_layer_indices=[1],
        image_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), patch_size=16, num_output_channels=WIDTH, window_size=2)
    grid = IMAGE_SIZE // 16
    prompt = keras_hub.layers.SAMPromptEncoder(hidden_size=WIDTH, image_embedding_size=(grid, grid),
                                               input_image_size=(IMAGE_SIZE, IMAGE_SIZE), mask_in_channels=4)
    decoder = keras_hub.layers.SAMMaskDecoder(hidden_size=WIDTH, num_layers=2, intermediate_dim=16, num_heads=2,
                                              embedding_dim=WIDTH, num_multimask_outputs=3, iou_head_depth=3,
                                              iou_head_hidden_dim=8)
    return keras_hub.models.SAMBackbone(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder)


def keras_hub_inputs(images, prompt):
    given = {k: np.asarray(v, "float32") for k, v in PROMPTS[prompt].items()}
    return {"images": images, **given, "masks": np.zeros((1, 0, 16, 16, 1), "float32")}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """(keras_hub segmenter, preset folder, images, {prompt: keras_hub outputs}, image embeddings)."""
    keras.utils.set_random_seed(2)
    segmenter = keras_hub.models.SAMImageSegmenter(backbone=keras_hub_sam())
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(1, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")  # keras_hub: [0, 1]
    segmenter(keras_hub_inputs(images, "point"))  # builds the mask decoder
    for variable in segmenter.backbone.weights:
        variable.assign(rng.normal(0.0, 0.3, variable.shape).astype("float32"))
    outputs = {name: {k: numpy(v) for k, v in segmenter(keras_hub_inputs(images, name)).items()}
               for name in PROMPTS}
    embeddings = numpy(segmenter.backbone(keras_hub_inputs(images, "point"))["image_embeddings"])
    folder = tmp_path_factory.mktemp("sam") / "preset"
    segmenter.backbone.save_to_preset(str(folder))
    return segmenter, str(folder), images, outputs, embeddings


def normalised(images):
    """keras_hub's ViTDet takes [0, 1] images and applies ImageNet's mean and std itself; kcookbook's
    image encoder takes them normalised (its ImageConverter does it)."""
    return (images - np.array([0.485, 0.456, 0.406], "float32")) / np.array([0.229, 0.224, 0.225], "float32")


def ours_for(prompt):
    given = PROMPTS[prompt]
    return {"points": np.asarray(given["points"], "float32"), "labels": np.asarray(given["labels"], "float32"),
            "boxes": np.asarray(given["boxes"], "float32").reshape(1, -1, 4)}


@pytest.mark.one_backend
def test_keras_hub_sam_preset_loads_with_its_embeddings_masks_and_iou(written):
    reference, folder, images, outputs, embeddings = written
    backbone = Backbone.from_preset(folder)
    assert isinstance(backbone, SAMBackbone)
    # keras_hub's count_params leaves out the mask decoder (outside its functional graph): count weights.
    assert backbone.count_params() == sum(int(np.prod(w.shape)) for w in reference.weights)
    ours = backbone.embed_images(normalised(images))
    np.testing.assert_allclose(numpy(ours), embeddings, atol=1e-5, rtol=0)
    for prompt, expected in outputs.items():
        got = backbone.decode(ours, **ours_for(prompt))
        np.testing.assert_allclose(numpy(got["masks"]), expected["masks"], atol=1e-5, rtol=0, err_msg=prompt)
        np.testing.assert_allclose(numpy(got["iou_pred"]), expected["iou_pred"], atol=1e-5, rtol=0, err_msg=prompt)


@pytest.mark.one_backend
def test_image_segmenter_reads_the_keras_hub_preset_and_its_image_converter(written, tmp_path):
    reference, folder, _, outputs, embeddings = written
    shutil.copytree(folder, tmp_path / "preset")
    converter = keras_hub.layers.SAMImageConverter(image_size=(IMAGE_SIZE, IMAGE_SIZE), scale=1 / 255)
    converter.save_to_preset(str(tmp_path / "preset"))
    segmenter = ImageSegmenter.from_preset(str(tmp_path / "preset"))
    got = segmenter.backbone.decode(embeddings, **ours_for("box"))
    np.testing.assert_allclose(numpy(got["masks"]), outputs["box"]["masks"], atol=1e-5, rtol=0)
    # keras_hub's converter, then its ViTDet's own ImageNet normalisation = our one converter.
    photo = np.random.default_rng(3).integers(0, 256, (1, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
    expected = numpy(reference.backbone.image_encoder(converter(photo)))
    ours = segmenter.backbone.embed_images(segmenter.preprocessor.image_converter(photo))
    np.testing.assert_allclose(numpy(ours), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("part, option, value", [
    ("image_encoder", "use_abs_pos", False),
    ("image_encoder", "image_shape", [64, 48, 3]),
    ("prompt_encoder", "activation", "relu"),
    ("mask_decoder", "hidden_size", 16),
])
@pytest.mark.one_backend  # no backend numerics, but its fixture builds keras_hub's SAM: with the parity tests
def test_an_option_kcookbook_cannot_represent_is_refused_by_name(written, tmp_path, part, option, value):
    assert_keras_hub_option_refused(written[1], tmp_path / "edited", (part, "config", option), value)
