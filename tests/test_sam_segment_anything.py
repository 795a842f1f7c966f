"""Segment Anything from Meta's segment_anything state dicts (``sam_vit_b_01ec64.pth`` …).

Reference: segment-anything 1.0's own ``Sam`` (its classes, its ``forward`` and ``postprocess_masks``)
on a tiny RANDOM model, run by tests/fixtures/make_segment_anything_fixtures.py in a venv of its own
(torchvision has no build for the project's CPU torch); its outputs are the stored fixtures. The
shapes of the real ViT-B/L/H state dicts come from the same script (``sam_model_registry`` on torch's
meta device).
"""

import json
import os
import shutil

import keras
import numpy as np
import pytest

from kcookbook.formats.converters.sam import SegmentAnythingLoader, segment_anything_config
from kcookbook.formats.loaders import load
from kcookbook.presets.errors import PresetError
from kcookbook.tasks import ImageSegmenter
from kcookbook.tasks.image_segmenter import upscale_masks

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
PROMPTS = ("points", "box", "points_and_box", "points_and_mask")


def numpy(x):
    return keras.ops.convert_to_numpy(x)


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(os.path.join(FIXTURES, "segment_anything_tiny_outputs.npz")))


def write_preset(folder, weights="segment_anything_tiny.safetensors", config=None):
    os.makedirs(folder, exist_ok=True)
    shutil.copy(os.path.join(FIXTURES, weights), os.path.join(folder, "model.safetensors"))
    if config is None:
        shutil.copy(os.path.join(FIXTURES, "segment_anything_tiny.json"), os.path.join(folder, "segment_anything.json"))
    else:
        with open(os.path.join(folder, "segment_anything.json"), "w") as f:
            json.dump(config, f)
    return str(folder)


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    return ImageSegmenter.from_preset(write_preset(tmp_path_factory.mktemp("segment_anything")))


def _prompt_inputs(reference, name, frame_factor):
    """The fixture's prompt ``name`` (original pixels) in the model's frame, as backbone.decode takes it."""
    ours = {}
    if f"{name}_coords" in reference:
        ours["points"] = reference[f"{name}_coords"] * frame_factor[:, None]
        ours["labels"] = reference[f"{name}_labels"]
    if f"{name}_boxes" in reference:
        ours["boxes"] = (reference[f"{name}_boxes"] * np.tile(frame_factor, 2))[:, None]
    elif "points" in ours:  # segment_anything's padding point when there is no box
        ours["points"] = np.concatenate([ours["points"], np.zeros((2, 1, 2))], 1)
        ours["labels"] = np.concatenate([ours["labels"], -np.ones((2, 1))], 1)
    if name == "points_and_mask":
        ours["masks"] = reference["points_and_mask_mask_inputs"].transpose(0, 2, 3, 1)
    return ours


def test_state_dict_matches_segment_anything(segmenter, reference):
    """Preprocessed pixels, image embeddings, and low-res mask logits and IoU predictions for point, box,
    point + box and point + mask prompts, single and multimask, within 1e-4 of segment_anything's Sam."""
    backbone = segmenter.backbone
    for i in range(2):  # raw image → SamPredictor's resize (ResizeLongestSide) and Sam.preprocess
        pixels, original, resized = segmenter.preprocessor.images(reference[f"original_{i}"])
        np.testing.assert_array_equal(resized[0], reference[f"image_{i}"].shape[:2])
        np.testing.assert_allclose(pixels[0], reference["pixels"][i].transpose(1, 2, 0), atol=1e-4)
    embeddings = numpy(backbone.embed_images(reference["pixels"].transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(embeddings, reference["image_embeddings"].transpose(0, 2, 3, 1), atol=1e-4)
    resized = np.asarray([reference[f"image_{i}"].shape[:2] for i in range(2)])
    factor = (resized / reference["original_sizes"])[:, ::-1]  # ResizeLongestSide.apply_coords: x, y
    for name in PROMPTS:
        out = backbone.decode(embeddings, **_prompt_inputs(reference, name, factor))
        for multimask, chosen in (("single", slice(0, 1)), ("multi", slice(1, None))):
            expected = reference[f"{name}_{multimask}_low_res_logits"]
            np.testing.assert_allclose(numpy(out["masks"])[:, chosen], expected, atol=1e-4, err_msg=name)
            np.testing.assert_allclose(numpy(out["iou_pred"])[:, chosen],
                                       reference[f"{name}_{multimask}_iou_predictions"], atol=1e-4, err_msg=name)


def test_predict_matches_sam_forward(segmenter, reference):
    """predict on the raw images of two sizes with a box in their pixels: IoU predictions, low-res
    logits, Sam.postprocess_masks' logits at the original size and Sam.forward's boolean masks (those
    logits > 0)."""
    resized = np.asarray([reference[f"image_{i}"].shape[:2] for i in range(2)])
    out = segmenter.predict({"images": [reference["original_0"], reference["original_1"]],
                             "boxes": reference["box_boxes"]})
    np.testing.assert_allclose(out["iou_pred"][:, 1:], reference["box_multi_iou_predictions"], atol=1e-4)
    np.testing.assert_allclose(out["low_res_masks"][:, :1], reference["box_single_low_res_logits"], atol=1e-4)
    for i in range(2):
        logits = numpy(upscale_masks(out["low_res_masks"][i], 64, resized[i], reference["original_sizes"][i]))
        for multimask, chosen in (("single", slice(0, 1)), ("multi", slice(1, None))):
            expected = reference[f"box_{multimask}_upscaled_{i}"]
            np.testing.assert_allclose(logits[chosen], expected, atol=1e-4)
            clear = np.abs(expected) > 1e-3  # pixels on the 0 boundary may round either way
            np.testing.assert_array_equal(out["masks"][i][chosen][clear], expected[clear] > 0)


@pytest.mark.backend_independent
def test_pickled_checkpoint_is_refused(tmp_path):
    """torch.save(model) pickles classes: refused (weights_only=True), with how to save a state dict."""
    torch = pytest.importorskip("torch")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "sam_vit_b_01ec64.pth")
    with pytest.raises(PresetError, match=r"never unpickle.*state_dict\(\)"):
        ImageSegmenter.from_preset(str(tmp_path / "sam_vit_b_01ec64.pth"))


@pytest.mark.backend_independent
@pytest.mark.parametrize("config, culprit", [
    ({"model_type": "vit_x"}, "model_type 'vit_x'"),
    ({"model_type": "vit_b", "window": 7}, r"unknown segment_anything settings \['window'\]"),
    ({"encoder_depth": 2}, r"encoder_embed_dim"),
])
def test_bad_config_is_named(tmp_path, config, culprit):
    with pytest.raises(PresetError, match=culprit):
        load(write_preset(tmp_path, config=config))


@pytest.mark.backend_independent
def test_mismatched_config_is_named(tmp_path):
    """A state dict whose config says another depth: the missing or extra tensors are named."""
    config = json.load(open(os.path.join(FIXTURES, "segment_anything_tiny.json")))
    with pytest.raises(PresetError, match=r"image_encoder\.blocks\.2\."):
        ImageSegmenter.from_preset(write_preset(tmp_path, config={**config, "encoder_depth": 2}))


@pytest.mark.backend_independent
@pytest.mark.parametrize("model_type, file", [("vit_b", "sam_vit_b_01ec64.pth"), ("vit_l", "sam_vit_l_0b3195.pth"),
                                              ("vit_h", "sam_vit_h_4b8939.pth")])
def test_official_file_names_give_segment_anythings_models(tmp_path, model_type, file):
    """Meta's file names pick ViT-B/L/H; the settings agree with the state dict shapes that
    segment_anything's own sam_model_registry builds (patch size, width, depth, heads from the
    relative-position tables, window size and global layers from their lengths, MLP width, image size)."""
    (tmp_path / file).write_bytes(b"")
    loader = load(str(tmp_path / file))
    assert isinstance(loader, SegmentAnythingLoader)
    config = loader.backbone_config
    assert config == segment_anything_config({"model_type": model_type}, file)
    shapes = json.load(open(os.path.join(FIXTURES, "segment_anything_official_shapes.json")))[model_type]
    encoder, prefix = config["image_encoder"], "image_encoder.blocks."
    depth = len({name.split(".")[2] for name in shapes if name.startswith(prefix)})
    hidden, _, patch, _ = shapes["image_encoder.patch_embed.proj.weight"]
    grid = shapes["image_encoder.pos_embed"][1]
    rel_lengths = [shapes[f"{prefix}{i}.attn.rel_pos_h"][0] for i in range(depth)]
    assert (encoder["num_layers"], encoder["hidden_dim"], encoder["patch_size"]) == (depth, hidden, patch)
    assert config["image_size"] == grid * patch
    assert encoder["num_heads"] == hidden // shapes[f"{prefix}0.attn.rel_pos_h"][1]
    assert encoder["global_attention_layers"] == [i for i, n in enumerate(rel_lengths) if n == 2 * grid - 1]
    assert {n for n in rel_lengths if n != 2 * grid - 1} == {2 * encoder["window_size"] - 1}
    assert encoder["intermediate_dim"] == shapes[f"{prefix}0.mlp.lin1.weight"][0]
    assert config["decoder_intermediate_dim"] == shapes["mask_decoder.transformer.layers.0.mlp.lin1.weight"][0]


@pytest.mark.slow  # builds the 94M-parameter ViT-B SAM
@pytest.mark.one_backend
def test_official_vit_b_state_dict_names_and_shapes_load_whole(tmp_path):
    """Every tensor of segment_anything's ViT-B state dict (its names and shapes, zeros standing in for
    sam_vit_b_01ec64.pth's values) lands in a variable of the right shape; none is left over."""
    from kcookbook.backbones.sam import SAMBackbone
    from kcookbook.formats.converters.sam import SAMConverter
    from kcookbook.presets import files

    shapes = json.load(open(os.path.join(FIXTURES, "segment_anything_official_shapes.json")))["vit_b"]
    state = {name: np.zeros(shape, "float32") for name, shape in shapes.items()}
    backbone = SAMBackbone(**segment_anything_config({"model_type": "vit_b"}, "sam_vit_b_01ec64.pth"))
    arrays = SAMConverter().weights_from_state_dict(state, backbone)
    assert state == {}
    files.assign_weights(backbone, arrays, "sam_vit_b_01ec64.pth")  # names and shapes checked
    assert backbone.count_params() == sum(int(np.prod(s)) for s in shapes.values())
