"""TAESD (diffusers' ``AutoencoderTiny``) as Stable Diffusion's preview decoder, against diffusers.

Independent reference: diffusers 0.42.1. Tiny random ``AutoencoderTiny`` models (every parameter
randomised) are built from configs here, offline, and saved with ``save_pretrained`` (the layout of
``hf://madebyollin/taesd``); kcookbook converts them. Encoder and decoder are compared on the same
inputs, and a whole ``StableDiffusionPipeline`` whose ``vae`` is the AutoencoderTiny (diffusers
decodes ``latents / vae.config.scaling_factor`` with it) against ``TextToImage.generate(...,
decoder="tiny")`` from the same initial latents. The tiny pipeline is test_stable_diffusion's.
"""

import json
import shutil

import diffusers
import keras
import numpy as np
import pytest
import torch

from kcookbook.backbones import AutoencoderTiny, StableDiffusionBackbone, TinyVAEDecoder, TinyVAEEncoder
from kcookbook.formats.loaders import load
from kcookbook.presets.errors import PresetError
from kcookbook.tasks import TextToImage
from test_stable_diffusion import PIPELINE_TOLERANCE, PROMPTS, TOLERANCE, _close, _first, _last, _randomize, \
    _tiny_pipeline


def _tiny_autoencoder(folder, levels, seed, scaling_factor=1.0):
    """A random diffusers AutoencoderTiny with ``levels`` levels of width 8, saved to ``folder``."""
    model = _randomize(diffusers.AutoencoderTiny(
        encoder_block_out_channels=(8,) * levels, decoder_block_out_channels=(8,) * levels,
        num_encoder_blocks=(1,) + (2,) * (levels - 1), num_decoder_blocks=(2,) * (levels - 1) + (1,),
        latent_channels=4, scaling_factor=scaling_factor), seed)
    model.save_pretrained(str(folder), safe_serialization=True)
    return model


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("taesd")
    taesd = _tiny_autoencoder(root / "taesd", levels=3, seed=5)
    preview = _tiny_autoencoder(root / "preview", levels=2, seed=6)  # the tiny pipeline's latents: 1/2 of the image
    pipeline = _tiny_pipeline(root)
    return {"root": root, "taesd": (taesd, str(root / "taesd")), "preview": (preview, str(root / "preview")),
            "pipeline": (pipeline, str(root / "pipeline"))}


@pytest.fixture(scope="module")
def model(folders):
    model = TextToImage.from_preset(folders["pipeline"][1])
    model.backbone.set_tiny_decoder(folders["preview"][1])
    return model


def test_autoencoder_tiny_encode_and_decode_match_diffusers(folders):
    theirs, path = folders["taesd"]
    ours = AutoencoderTiny.from_preset(path)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (2, 16, 24, 3)).astype("float32")
    latents = (3 * rng.standard_normal((2, 4, 6, 4))).astype("float32")  # beyond the clamp's knee
    with torch.no_grad():
        _close(ours.encode(images), _last(theirs.encode(_first(images)).latents))
        _close(ours.decode(latents), _last(theirs.decode(_first(latents)).sample))
    reconstruction = ours(images)["images"]
    _close(reconstruction, keras.ops.convert_to_numpy(ours.decode(ours.encode(images))), 1e-6)


@pytest.mark.parametrize("scaling_factor", [1.0, 1.5])
def test_autoencoder_tiny_parameters_and_scaling_factor(tmp_path, scaling_factor):
    theirs = _tiny_autoencoder(tmp_path / "taesd", levels=2, seed=7, scaling_factor=scaling_factor)
    ours = AutoencoderTiny.from_preset(str(tmp_path / "taesd"))
    assert ours.scaling_factor == scaling_factor
    assert ours.count_params() == sum(p.numel() for p in theirs.parameters())


def test_pipeline_with_tiny_decoder_matches_diffusers(folders, model):
    reference, _ = folders["pipeline"]
    taesd, _ = folders["preview"]
    pipeline = diffusers.StableDiffusionPipeline(**{**reference.components, "vae": taesd})
    pipeline.set_progress_bar_config(disable=True)
    pipeline.scheduler = diffusers.DDIMScheduler.from_config(reference.scheduler.config)
    latents = np.random.default_rng(3).standard_normal((2, 8, 8, 4)).astype("float32")
    with torch.no_grad():
        expected = pipeline(PROMPTS, height=16, width=16, num_inference_steps=2, guidance_scale=1.0,
                            latents=_first(latents), output_type="np").images
    ours = model.generate(PROMPTS, num_steps=2, guidance_scale=1.0, latents=latents, decoder="tiny", output="float")
    _close(ours, expected, PIPELINE_TOLERANCE)
    # the same backbone still decodes with its VAE by default
    rng = np.random.default_rng(4)
    scaled = rng.standard_normal((1, 8, 8, 4)).astype("float32")
    with torch.no_grad():
        vae = reference.vae.decode(_first(scaled) / reference.vae.config.scaling_factor).sample
        tiny = taesd.decode(_first(scaled) / taesd.config.scaling_factor).sample
    _close(model.backbone.decode_latents(scaled), _last(vae), TOLERANCE)
    _close(model.backbone.decode_latents(scaled, "tiny"), _last(tiny), TOLERANCE)


def test_bad_decoders_and_shapes_name_the_culprit(folders, model):
    with pytest.raises(ValueError, match="decoder must be 'vae'.*'tiny'"):
        model.generate("a cube", num_steps=1, decoder="taesd", height=16, width=16)
    bare = TextToImage(StableDiffusionBackbone.from_config(
        {k: v for k, v in model.backbone.get_config().items() if not k.startswith("tiny_")}), model.preprocessor)
    with pytest.raises(ValueError, match="set_tiny_decoder"):
        bare.generate("a cube", num_steps=1, decoder="tiny", height=16, width=16)
    wrong_factor = AutoencoderTiny.from_preset(folders["taesd"][1])  # three levels: ×4, the pipeline is ×2
    with pytest.raises(ValueError, match="upsamples them ×4.*1/2 of the image"):
        model.backbone.set_tiny_decoder(wrong_factor)
    with pytest.raises(ValueError, match="AutoencoderTiny or a preset handle"):
        model.backbone.set_tiny_decoder(model.backbone.vae_decoder)
    with pytest.raises(ValueError, match=r"latents must be .* 4 channels \(channels last\), got shape \(1, 4, 8, 8\)"):
        wrong_factor.decode(np.zeros((1, 4, 8, 8), "float32"))  # channels first
    with pytest.raises(ValueError, match="images must be .* 3 channels"):
        wrong_factor.encode(np.zeros((1, 3, 16, 16), "float32"))
    with pytest.raises(ValueError, match="block_channels .* all equal"):
        TinyVAEDecoder(block_channels=[8, 16], blocks_per_level=[1, 1])


@pytest.mark.backend_independent
def test_wrong_folders_are_refused(folders, tmp_path):
    pipeline_path = folders["pipeline"][1]
    with pytest.raises(TypeError, match="holds a StableDiffusionBackbone, not a AutoencoderTiny"):
        AutoencoderTiny.from_preset(pipeline_path)
    with pytest.raises(PresetError, match="AutoencoderKL.*only for AutoencoderTiny.*model_index.json"):
        load(f"{pipeline_path}/vae")
    folder = tmp_path / "taesd"
    shutil.copytree(folders["taesd"][1], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "act_fn": "silu"}))
    with pytest.raises(PresetError, match="act_fn='silu'"):
        AutoencoderTiny.from_preset(str(folder))
    (folder / "config.json").write_text(json.dumps({**config, "decoder_block_out_channels": [8, 8, 16]}))
    with pytest.raises(PresetError, match="config.json does not describe a TAESD.*all equal"):
        AutoencoderTiny.from_preset(str(folder))
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(PresetError, match="No diffusion_pytorch_model.safetensors.*safe_serialization"):
        AutoencoderTiny.from_preset(str(folder))
    # a pipeline saved with TAESD as its vae: kcookbook needs the AutoencoderKL there
    pipeline = tmp_path / "pipeline"
    shutil.copytree(pipeline_path, pipeline)
    shutil.rmtree(pipeline / "vae")
    shutil.copytree(folders["preview"][1], pipeline / "vae")
    with pytest.raises(PresetError, match="vae is an AutoencoderTiny.*set_tiny_decoder"):
        load(str(pipeline)).load_backbone()


def test_config_round_trips(folders, model):
    taesd = AutoencoderTiny.from_preset(folders["taesd"][1])
    again = AutoencoderTiny.from_config(taesd.get_config())
    assert again.get_config() == taesd.get_config()
    assert [v.shape for v in again.weights] == [v.shape for v in taesd.weights]
    backbone = StableDiffusionBackbone.from_config(model.backbone.get_config())
    assert isinstance(backbone.tiny_decoder, TinyVAEDecoder) and not backbone.tiny_decoder.trainable
    assert backbone.tiny_scaling_factor == model.backbone.tiny_scaling_factor
    assert [v.shape for v in backbone.weights] == [v.shape for v in model.backbone.weights]
    assert isinstance(TinyVAEEncoder.from_config(taesd.encoder.get_config()), TinyVAEEncoder)


@pytest.mark.one_backend  # saving and loading a preset; every backend's numerics are checked above
def test_preset_round_trip_keeps_the_tiny_decoder(model, tmp_path):
    model.save_to_preset(str(tmp_path / "preset"))
    again = TextToImage.from_preset(str(tmp_path / "preset"))
    latents = np.random.default_rng(5).standard_normal((1, 8, 8, 4)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(again.backbone.decode_latents(latents, "tiny")),
                               keras.ops.convert_to_numpy(model.backbone.decode_latents(latents, "tiny")), atol=1e-6)
