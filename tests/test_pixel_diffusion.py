"""Pixel-space diffusion (a StableDiffusionBackbone without an autoencoder), the denoising
trajectory helper and the small RGB digits the text-to-image recipe trains on.

The UNet, text encoder and schedulers are checked against diffusers in test_stable_diffusion.py;
without an autoencoder nothing else computes, so these tests check what pixel space changes: the
"latents" are the images themselves (times ``scaling_factor``), ``fit`` trains the UNet alone, and
:func:`denoising_trajectory`, which walks the same loop eagerly, ends where ``generate`` ends.
"""

import numpy as np
import pytest
from keras import ops

from kcookbook.backbones import StableDiffusionBackbone
from kcookbook.backbones.clip import CLIPTextEncoder
from kcookbook.backbones.stable_diffusion import StableDiffusionUNet, TinyVAEDecoder
from kcookbook.components.byte_pair import end_of_word_vocabulary
from kcookbook.data import small_rgb_digits
from kcookbook.diffusion import denoising_trajectory
from kcookbook.formats.converters.clip import END_TOKEN, START_TOKEN, clip_tokenizer
from kcookbook.tasks import TextClassifierPreprocessor, TextToImage
from test_clip import TINY_MERGES, _openai_merges

SCHEDULE = {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02, "prediction_type": "v_prediction",
            "timestep_spacing": "trailing"}


@pytest.fixture(scope="module")
def model():
    merges = _openai_merges(TINY_MERGES)  # OpenAI's first merges: CLIP's tokenizer, a small vocabulary
    tokenizer = clip_tokenizer(end_of_word_vocabulary(merges, [START_TOKEN, END_TOKEN]), merges)
    text = CLIPTextEncoder(vocabulary_size=tokenizer.vocabulary_size, max_sequence_length=6, num_layers=1,
                           num_heads=2, hidden_dim=8, intermediate_dim=16)
    unet = StableDiffusionUNet(block_channels=[8, 16], layers_per_block=1, attention_heads=2, context_dim=8,
                               down_block_kinds=["plain", "cross_attention"], in_channels=3, out_channels=3, groups=4)
    backbone = StableDiffusionBackbone(text, unet, scaling_factor=1.0)
    return TextToImage(backbone, TextClassifierPreprocessor(tokenizer, sequence_length=6), SCHEDULE, image_size=(8, 8))


def test_pixel_space_backbone_has_no_autoencoder(model):
    backbone = model.backbone
    assert backbone.vae_encoder is None and backbone.vae_decoder is None and backbone.downsampling_factor == 1
    images = np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(ops.convert_to_numpy(backbone.encode_images(images)), images)
    np.testing.assert_allclose(ops.convert_to_numpy(backbone.decode_latents(images)), images)
    rebuilt = StableDiffusionBackbone.from_config(backbone.get_config())
    assert rebuilt.vae_decoder is None and rebuilt.count_params() == backbone.count_params()
    four_channels = StableDiffusionUNet(block_channels=[8], layers_per_block=1, attention_heads=2, context_dim=8, groups=4)
    with pytest.raises(ValueError, match="in_channels=3"):
        StableDiffusionBackbone(backbone.text_encoder, four_channels)
    with pytest.raises(ValueError, match="pixel space"):
        backbone._attach_tiny_decoder(TinyVAEDecoder(), 1.0)


def test_pixel_space_fit_trains_the_unet_and_generates_images(model):
    images = np.random.default_rng(1).integers(0, 256, (4, 8, 8, 3)).astype("uint8")
    text_before = [ops.convert_to_numpy(w) for w in model.backbone.text_encoder.weights]
    unet_before = [ops.convert_to_numpy(w) for w in model.backbone.unet.weights]
    model.compile(learning_rate=1e-2)
    history = model.fit(images, ["a seven", "a three", "a one", "a seven"], batch_size=2, epochs=2, seed=0, verbose=0)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()
    assert all(np.array_equal(a, ops.convert_to_numpy(b)) for a, b in zip(text_before, model.backbone.text_encoder.weights))
    assert any(not np.array_equal(a, ops.convert_to_numpy(b)) for a, b in zip(unet_before, model.backbone.unet.weights))
    generated = model.generate(["a seven"], num_steps=3, guidance_scale=2.0, seed=0)
    assert generated.shape == (1, 8, 8, 3) and generated.dtype == np.uint8


@pytest.mark.parametrize("scheduler, guidance_scale", [("ddim", 1.0), ("ddim", 3.0), ("euler", 2.0)])
def test_trajectory_ends_where_generate_ends(model, scheduler, guidance_scale):
    prompts = ["a seven", "a three"]
    frames = denoising_trajectory(model, prompts, num_steps=4, guidance_scale=guidance_scale, seed=3,
                                  scheduler=scheduler)
    assert frames.shape == (5, 2, 8, 8, 3) and frames.min() >= 0.0 and frames.max() <= 1.0
    final = model.generate(prompts, num_steps=4, guidance_scale=guidance_scale, seed=3, scheduler=scheduler,
                           output="float")
    np.testing.assert_allclose(frames[-1], final, atol=1e-4)
    noise = np.random.default_rng(3).standard_normal((2, 8, 8, 3))  # frame 0: the seed's starting noise
    np.testing.assert_allclose(frames[0], np.clip((noise + 1) / 2, 0, 1), atol=1e-5)


def test_trajectory_refuses_bad_steps(model):
    with pytest.raises(ValueError, match="num_steps"):
        denoising_trajectory(model, "a one", num_steps=0)


@pytest.mark.backend_independent
def test_small_rgb_digits():
    digits = np.zeros((3, 28, 28), "float32")
    digits[1, 10:12, 4:6] = 200.0
    images = small_rgb_digits(digits, size=18)
    assert images.shape == (3, 18, 18, 3) and images.dtype == np.uint8
    assert images[1, 2 + 5, 2 + 2].tolist() == [200, 200, 200] and images.sum() == 200 * 3
    with pytest.raises(ValueError, match="28 × 28"):
        small_rgb_digits(np.zeros((2, 20, 20)))
    with pytest.raises(ValueError, match="size"):
        small_rgb_digits(digits, size=15)


def test_pixel_space_image_to_image_starts_from_the_image(model):
    rng = np.random.default_rng(2)
    dark, bright = np.zeros((8, 8, 3), "uint8"), np.full((8, 8, 3), 255, "uint8")
    noise = rng.standard_normal((1, 8, 8, 3)).astype("float32")
    outputs = [model.generate(["a seven"], images=image, strength=0.5, num_steps=4, guidance_scale=1.0,
                              latents=noise, output="float") for image in (dark, bright)]
    assert outputs[0].shape == (1, 8, 8, 3)
    assert outputs[1].mean() > outputs[0].mean()  # half the walk: the starting image still shows


def test_pixel_space_preset_round_trip(model, tmp_path):
    model.save_to_preset(str(tmp_path / "pixel"))
    again = TextToImage.from_preset(str(tmp_path / "pixel"))
    assert again.backbone.vae_encoder is None and again.backbone.vae_decoder is None
    assert again.scheduler_config == model.scheduler_config and again.image_size == model.image_size
    before = model.generate(["a seven", "a three"], num_steps=3, guidance_scale=2.0, seed=5, output="float")
    after = again.generate(["a seven", "a three"], num_steps=3, guidance_scale=2.0, seed=5, output="float")
    assert before.std() > 1e-3  # not a constant image: the comparison below can fail
    np.testing.assert_allclose(after, before, atol=1e-5)
