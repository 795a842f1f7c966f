"""Stable Diffusion: UNet, autoencoder, text states, schedulers and whole pipelines against diffusers.

Independent reference: diffusers 0.42.1. A tiny random ``StableDiffusionPipeline`` (UNet2DCondition
with a cross-attention level and a plain one, AutoencoderKL, transformers' CLIPTextModel; every
parameter randomised, norms included) is built from configs here, offline, and saved with
``save_pretrained``; its CLIP tokenizer files are written from OpenAI's BPE file as test_clip does.
Each part is compared on the same inputs (channels first there, channels last here), each scheduler
step with diffusers' ``DDIMScheduler`` / ``EulerDiscreteScheduler``, and whole pipelines from the
same initial latents.
"""

import json

import diffusers
import keras
import numpy as np
import pytest
import torch
import transformers

from kcookbook.backbones import StableDiffusionBackbone
from kcookbook.components.schedulers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler, get_scheduler
from kcookbook.formats.loaders import load
from kcookbook.presets.errors import PresetError
from kcookbook.tasks import TextToImage
from test_clip import TINY_MERGES, _openai_merges, _write_tokenizer_files

TOLERANCE = 1e-4
PIPELINE_TOLERANCE = 1e-3
SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False,
            "set_alpha_to_one": False, "steps_offset": 1, "timestep_spacing": "leading"}
PROMPTS = ["a red cube", "two birds"]


def _randomize(module, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator) * 0.1
            parameter.copy_(1.0 + noise if parameter.ndim == 1 and name.endswith("weight") else noise)
    return module.eval()


def _tiny_pipeline(folder):
    """A random diffusers pipeline with 16 × 16 images (8 × 8 latents), saved to ``folder``."""
    vocabulary_size = _write_tokenizer_files(folder, _openai_merges(TINY_MERGES))
    tokenizer = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                                           model_max_length=77)
    text_encoder = _randomize(transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=vocabulary_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=vocabulary_size - 2,
        eos_token_id=vocabulary_size - 1, pad_token_id=vocabulary_size - 1)), 1)
    unet = _randomize(diffusers.UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8), 2)
    vae = _randomize(diffusers.AutoencoderKL(
        block_out_channels=(16, 32), down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=8, layers_per_block=1), 3)
    pipeline = diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=diffusers.DDIMScheduler(**SCHEDULE), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    pipeline.save_pretrained(str(folder / "pipeline"), safe_serialization=True)
    return pipeline


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stable_diffusion")
    pipeline = _tiny_pipeline(folder)
    return pipeline, str(folder / "pipeline")


@pytest.fixture(scope="module")
def model(reference):
    return TextToImage.from_preset(reference[1])


def _first(x):
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))


def _last(x):
    return np.moveaxis(x.detach().numpy(), 1, -1)


def _close(ours, theirs, tolerance=TOLERANCE, rtol=0):
    ours = keras.ops.convert_to_numpy(ours)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, atol=tolerance, rtol=rtol)


# ----------------------------------------------------------------- parts
def test_text_states_unet_and_vae_match_diffusers(reference, model):
    pipeline, _ = reference
    rng = np.random.default_rng(0)
    token_ids = model.preprocessor(PROMPTS)["token_ids"]
    hf_ids = pipeline.tokenizer(PROMPTS, padding="max_length", max_length=77, return_tensors="np").input_ids
    np.testing.assert_array_equal(token_ids, hf_ids)
    with torch.no_grad():
        states = pipeline.text_encoder(torch.from_numpy(hf_ids))[0]
        _close(model.backbone.encode_text(token_ids), states.numpy())

        latents = rng.standard_normal((2, 8, 8, 4)).astype("float32")
        timesteps = np.array([999.0, 17.5], "float32")
        theirs = pipeline.unet(_first(latents), torch.from_numpy(timesteps), states).sample
        _close(model.backbone.predict_noise(latents, timesteps, states.numpy()), _last(theirs))

        images = rng.uniform(-1, 1, (2, 16, 16, 3)).astype("float32")
        mean = pipeline.vae.encode(_first(images)).latent_dist.mean
        _close(model.backbone.encode_images(images), _last(mean) * pipeline.vae.config.scaling_factor)
        decoded = pipeline.vae.decode(_first(latents) / pipeline.vae.config.scaling_factor).sample
        _close(model.backbone.decode_latents(latents), _last(decoded))


# ----------------------------------------------------------------- schedulers
@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_scheduler_steps_match_diffusers(spacing, prediction_type):
    config = {**SCHEDULE, "timestep_spacing": spacing, "prediction_type": prediction_type}
    rng = np.random.default_rng(1)
    sample = rng.standard_normal((1, 4, 4, 2)).astype("float32")
    output = rng.standard_normal((1, 4, 4, 2)).astype("float32")
    for ours, theirs in ((get_scheduler("ddim", config), diffusers.DDIMScheduler.from_config(config)),
                         (get_scheduler("euler", config), diffusers.EulerDiscreteScheduler.from_config(config))):
        assert isinstance(ours, (DDIMScheduler, EulerDiscreteScheduler))
        theirs.set_timesteps(7)
        np.testing.assert_allclose(ours.timesteps(7), theirs.timesteps.numpy(), atol=1e-4)
        assert ours.initial_noise_scale(7) == pytest.approx(float(theirs.init_noise_sigma), rel=1e-5)
        for index, t in enumerate(theirs.timesteps):
            scaled = theirs.scale_model_input(_first(sample), t)
            _close(ours.scale_model_input(sample, index, 7), _last(scaled), 1e-5, rtol=1e-5)
            expected = theirs.step(_first(output), t, _first(sample)).prev_sample
            _close(ours.step(output, index, sample, 7), _last(expected), 1e-5, rtol=1e-5)


def test_ddpm_add_noise_matches_diffusers():
    ours, theirs = DDPMScheduler(), diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                                            beta_end=0.012)
    rng = np.random.default_rng(2)
    clean, noise = rng.standard_normal((2, 3, 3, 4)).astype("float32"), rng.standard_normal((2, 3, 3, 4)).astype("float32")
    timesteps = np.array([3, 940])
    expected = theirs.add_noise(_first(clean), _first(noise), torch.from_numpy(timesteps))
    _close(ours.add_noise(clean, noise, timesteps), _last(expected), 1e-5)


# ----------------------------------------------------------------- whole pipeline
# Every backend runs DDIM with guidance and Euler without; the other two pairs run in the torch run only
# (8-19 s each on jax and tensorflow).
@pytest.mark.parametrize("scheduler,guidance_scale", [
    pytest.param("ddim", 1.0, marks=pytest.mark.one_backend), ("ddim", 4.0), ("euler", 1.0),
    pytest.param("euler", 4.0, marks=pytest.mark.one_backend)])
def test_pipeline_matches_diffusers(reference, model, scheduler, guidance_scale):
    pipeline, _ = reference
    kind = diffusers.EulerDiscreteScheduler if scheduler == "euler" else diffusers.DDIMScheduler
    pipeline.scheduler = kind.from_config(pipeline.scheduler.config)
    latents = np.random.default_rng(3).standard_normal((2, 8, 8, 4)).astype("float32")
    negative = ["blurry", "ugly"] if guidance_scale > 1 else None
    with torch.no_grad():
        expected = pipeline(PROMPTS, height=16, width=16, num_inference_steps=2, guidance_scale=guidance_scale,
                            negative_prompt=negative, latents=_first(latents), output_type="np").images
    output = "uint8" if (scheduler, guidance_scale) == ("ddim", 4.0) else "float"
    ours = model.generate(PROMPTS, num_steps=2, guidance_scale=guidance_scale, negative_prompts=negative,
                          latents=latents, scheduler=scheduler, output=output)
    if output == "uint8":  # diffusers' own rounding of the same floats, give or take one level
        assert ours.dtype == np.uint8 and ours.shape == (2, 16, 16, 3)
        assert np.abs(ours.astype(int) - np.round(expected * 255)).max() <= 1
    else:
        _close(ours, expected, PIPELINE_TOLERANCE)


# Image-to-image: diffusers' img2img pipeline on the same components. It is given the images' latents
# (the autoencoder's mean, as ours uses; a 4-channel image is taken as latents) and draws its noise from
# a seeded torch generator, which ours is given as ``latents``.
@pytest.mark.parametrize("scheduler,guidance_scale,strength", [
    ("ddim", 4.0, 0.5), pytest.param("euler", 1.0, 0.75, marks=pytest.mark.one_backend)])
def test_image_to_image_matches_diffusers(reference, model, scheduler, guidance_scale, strength):
    pipeline, _ = reference
    kind = diffusers.EulerDiscreteScheduler if scheduler == "euler" else diffusers.DDIMScheduler
    img2img = diffusers.StableDiffusionImg2ImgPipeline(**{**pipeline.components,
                                                          "scheduler": kind.from_config(pipeline.scheduler.config)})
    img2img.set_progress_bar_config(disable=True)
    images = np.random.default_rng(6).integers(0, 256, (2, 16, 16, 3)).astype("uint8")
    with torch.no_grad():
        image_latents = pipeline.vae.encode(_first(images.astype("float32") / 127.5 - 1)).latent_dist.mean
        image_latents = image_latents * pipeline.vae.config.scaling_factor
        noise = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(5))
        expected = img2img(PROMPTS, image=image_latents, strength=strength, num_inference_steps=4,
                           guidance_scale=guidance_scale, generator=torch.Generator().manual_seed(5),
                           output_type="np").images
    ours = model.generate(PROMPTS, images=images, strength=strength, num_steps=4, guidance_scale=guidance_scale,
                          latents=_last(noise), scheduler=scheduler, output="float")
    _close(ours, expected, PIPELINE_TOLERANCE)


@pytest.mark.slow  # compiling the UNet's train step: 85 s on jax, 112 s on tensorflow at a load average of ~5
@pytest.mark.one_backend  # every backend's UNet numerics are checked against diffusers above
def test_fit_trains_the_unet_only_and_preset_round_trip(model, tmp_path):
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (4, 16, 16, 3)).astype("uint8")
    text_before = keras.ops.convert_to_numpy(model.backbone.text_encoder.weights[0]).copy()
    vae_before = keras.ops.convert_to_numpy(model.backbone.vae_decoder.weights[0]).copy()
    unet_before = keras.ops.convert_to_numpy(model.backbone.unet.weights[0]).copy()
    model.compile(learning_rate=1e-3)
    history = model.fit(images, ["a cat", "a dog", "a cat", "a dog"], batch_size=2, epochs=1, seed=0, verbose=0)
    assert len(history.history["loss"]) == 1 and np.isfinite(history.history["loss"]).all()
    assert not np.allclose(keras.ops.convert_to_numpy(model.backbone.unet.weights[0]), unet_before)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.backbone.text_encoder.weights[0]), text_before)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.backbone.vae_decoder.weights[0]), vae_before)

    model.save_to_preset(str(tmp_path / "preset"))
    again = TextToImage.from_preset(str(tmp_path / "preset"))
    assert again.scheduler_config == model.scheduler_config and again.image_size == model.image_size
    inputs = {"latents": rng.standard_normal((1, 8, 8, 4)).astype("float32"), "timesteps": np.array([500.0]),
              "token_ids": model.preprocessor(["a cat"])["token_ids"]}
    np.testing.assert_allclose(keras.ops.convert_to_numpy(again.backbone(inputs)["noise_prediction"]),
                               keras.ops.convert_to_numpy(model.backbone(inputs)["noise_prediction"]), atol=1e-6)
    latents = rng.standard_normal((1, 8, 8, 4)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(again.backbone.decode_latents(latents)),
                               keras.ops.convert_to_numpy(model.backbone.decode_latents(latents)), atol=1e-6)


# ----------------------------------------------------------------- bad input
def test_bad_arguments_name_the_culprit(model):
    with pytest.raises(ValueError, match="scheduler='dpm'"):
        model.generate("a cube", num_steps=2, scheduler="dpm")
    with pytest.raises(ValueError, match="num_steps"):
        model.generate("a cube", num_steps=0)
    with pytest.raises(ValueError, match="channels last"):
        model.generate("a cube", num_steps=2, latents=np.zeros((1, 4, 8, 8), "float32"))
    image = np.zeros((16, 16, 3), "uint8")
    with pytest.raises(ValueError, match="strength must be a number in"):
        model.generate("a cube", num_steps=2, images=image, strength=1.5)
    with pytest.raises(ValueError, match="runs no step"):
        model.generate("a cube", num_steps=2, images=image, strength=0.2)
    with pytest.raises(ValueError, match="1 or 2 images"):
        model.generate(["a", "b"], num_steps=2, images=np.zeros((3, 16, 16, 3), "uint8"))
    with pytest.raises(ValueError, match="multiples of 16"):
        model.generate("a cube", num_steps=2, images=np.zeros((12, 16, 3), "uint8"))
    with pytest.raises(ValueError, match="negative_prompts has 2 entries"):
        model.generate("a cube", num_steps=2, negative_prompts=["x", "y"], height=16, width=16)


@pytest.mark.backend_independent
def test_unsupported_and_missing_pipeline_files_are_refused(reference, tmp_path):
    import shutil

    folder = tmp_path / "pipeline"
    shutil.copytree(reference[1], folder)
    config_path = folder / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "class_embed_type": "timestep"}))
    with pytest.raises(PresetError, match="class_embed_type"):
        load(str(folder)).load_backbone()
    config_path.write_text(json.dumps(config))
    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(PresetError, match="vae/diffusion_pytorch_model.safetensors.*safe_serialization"):
        load(str(folder)).load_backbone()
    index = folder / "model_index.json"
    index.write_text(json.dumps({**json.loads(index.read_text()), "_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(PresetError, match="StableDiffusionXLPipeline"):
        load(str(folder))


def test_backbone_config_round_trip(model):
    backbone = model.backbone
    again = StableDiffusionBackbone.from_config(backbone.get_config())
    assert [v.shape for v in again.weights] == [v.shape for v in backbone.weights]
    assert again.scaling_factor == backbone.scaling_factor


@pytest.mark.parametrize("shape", [(2, 4, 5, 8), (1, 3, 12)])
def test_group_normalization_matches_torch_and_keeps_keras_weights(shape):
    """The blocks' GroupNormalization (one fused kernel on torch) against torch's ``group_norm`` on
    channels-first inputs; same weights (names, shapes) and config as keras' layer."""
    from kcookbook.components.diffusion_blocks import GroupNormalization

    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 3 + 1).astype("float32")
    gamma, beta = (rng.standard_normal(shape[-1]).astype("float32") for _ in range(2))
    layer, plain = GroupNormalization(4, epsilon=1e-5), keras.layers.GroupNormalization(4, epsilon=1e-5)
    layer.build(shape), plain.build(shape)
    assert [(w.path.split("/")[-1], w.shape) for w in layer.weights] == \
        [(w.path.split("/")[-1], w.shape) for w in plain.weights]
    assert {k: v for k, v in layer.get_config().items() if k != "name"} == \
        {k: v for k, v in plain.get_config().items() if k != "name"}
    layer.set_weights([gamma, beta])
    expected = torch.nn.functional.group_norm(torch.from_numpy(np.moveaxis(x, -1, 1)), 4, torch.from_numpy(gamma),
                                              torch.from_numpy(beta), 1e-5).movedim(1, -1).numpy()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), expected, atol=1e-5)
