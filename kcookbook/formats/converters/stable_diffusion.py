"""Stable Diffusion 1.x / 2.x from diffusers pipeline folders (``StableDiffusionPipeline.save_pretrained``
and ``hf://stable-diffusion-v1-5/stable-diffusion-v1-5``-style repositories).

A pipeline folder holds ``model_index.json`` and one folder per part:

* ``unet/`` (``config.json`` + ``diffusion_pytorch_model.safetensors``): ``UNet2DConditionModel``;
  ``down_blocks.L.resnets.i`` / ``.attentions.i`` / ``.downsamplers.0``, ``mid_block``,
  ``up_blocks.U…``, ``time_embedding.linear_1/2``, ``conv_in``, ``conv_norm_out``, ``conv_out``.
  A transformer block is ``norm1 attn1 norm2 attn2 norm3 ff.net.0.proj ff.net.2`` with
  ``to_q/to_k/to_v`` (no biases) and ``to_out.0``.
* ``vae/``: ``AutoencoderKL``: ``encoder.*``, ``decoder.*``, ``quant_conv``, ``post_quant_conv``; the
  middle attention is ``group_norm to_q to_k to_v to_out.0`` (older files: ``query key value
  proj_attn``).
* ``text_encoder/`` (``CLIPTextModel``, ``model.safetensors``): the CLIP converter's text tower.
* ``tokenizer/`` (``vocab.json``, ``merges.txt``): CLIP's BPE tokenizer.
* ``scheduler/scheduler_config.json``: the noise schedule (betas, timestep spacing, prediction type).

TAESD comes as a single diffusers model folder (``AutoencoderTiny.save_pretrained``, the layout of
``hf://madebyollin/taesd``: ``config.json`` naming ``_class_name`` + ``diffusion_pytorch_model.safetensors``),
read by :class:`DiffusersModelLoader` into an :class:`AutoencoderTiny`. Its parts are ``nn.Sequential``:
``encoder.layers.K`` / ``decoder.layers.K`` numbered in build order (convs, ``AutoencoderTinyBlock``
with ``conv.0/2/4`` and an optional ``skip``; the decoder's ReLU and ``nn.Upsample`` take numbers too).

torch convolutions (out, in, kh, kw) become channels-last Keras kernels (kh, kw, in, out). Options
kcookbook's UNet or VAE do not implement (class embeddings, SDXL's added conditioning, other block
kinds…) are refused by name rather than ignored.
"""

import os

from kcookbook.backbones.stable_diffusion import (
    AutoencoderTiny,
    StableDiffusionBackbone,
    StableDiffusionUNet,
    TinyVAEDecoder,
    TinyVAEEncoder,
    VAEDecoder,
    VAEEncoder,
)
from kcookbook.formats.converters.base import Converter
from kcookbook.formats.converters.clip import CLIPConverter, text_encoder_from_hf, text_encoder_weights
from kcookbook.formats.converters.common import linear_kernel, take
from kcookbook.formats.converters.vit import conv_kernel
from kcookbook.formats.loaders import PresetLoader
from kcookbook.presets import files
from kcookbook.presets.errors import PresetError

PIPELINE_INDEX = "model_index.json"
PIPELINE_CLASSES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline")
DOWN_KINDS = {"CrossAttnDownBlock2D": "cross_attention", "DownBlock2D": "plain"}
UP_KINDS = {"CrossAttnUpBlock2D": "cross_attention", "UpBlock2D": "plain"}
# UNet / VAE config fields whose other values kcookbook does not implement: field → supported value.
UNET_FIXED = {
    "mid_block_type": "UNetMidBlock2DCrossAttn", "act_fn": "silu", "center_input_sample": False,
    "only_cross_attention": False, "dual_cross_attention": False, "class_embed_type": None,
    "addition_embed_type": None, "time_cond_proj_dim": None, "encoder_hid_dim": None,
    "num_class_embeds": None, "resnet_time_scale_shift": "default", "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0, "time_embedding_type": "positional", "time_embedding_dim": None,
    "time_embedding_act_fn": None, "timestep_post_act": None, "conv_in_kernel": 3, "conv_out_kernel": 3,
    "attention_type": "default", "downsample_padding": 1, "mid_block_scale_factor": 1,
    "cross_attention_norm": None,
}
# AutoencoderTiny config fields whose other values kcookbook's TAESD does not implement.
TINY_FIXED = {"act_fn": "relu", "upsample_fn": "nearest", "upsampling_scaling_factor": 2}
MODEL_FILE = "diffusion_pytorch_model.safetensors"
VAE_FIXED = {"act_fn": "silu", "shift_factor": None, "latents_mean": None, "latents_std": None,
             "use_quant_conv": True, "use_post_quant_conv": True, "mid_block_add_attention": True}
# Scheduler config fields kcookbook's schedulers read, with diffusers' defaults.
SCHEDULER_FIELDS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type",
                    "timestep_spacing", "steps_offset", "clip_sample", "clip_sample_range", "set_alpha_to_one")


def _check_fixed(config, fixed, path):
    for field, supported in fixed.items():
        value = config.get(field, supported)
        if value != supported and not (isinstance(supported, (int, float)) and value == float(supported)):
            raise PresetError(f"{path}: {field}={value!r} is not supported by kcookbook's Stable Diffusion "
                              f"(it implements {field}={supported!r}); this checkpoint is not SD 1.x/2.x.")


def _single(config, field, path):
    value = config[field]
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise PresetError(f"{path}: {field}={value} differs between levels; kcookbook's UNet takes one value.")
        value = value[0]
    return value


def unet_from_diffusers(config, path, dtype=None):
    """A :class:`StableDiffusionUNet` from ``unet/config.json`` (a dict)."""
    _check_fixed(config, UNET_FIXED, path)
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    unknown = [kind for kind in down if kind not in DOWN_KINDS] + [kind for kind in up if kind not in UP_KINDS]
    if unknown:
        raise PresetError(f"{path}: block types {unknown} are not supported; kcookbook's UNet has "
                          f"{sorted(DOWN_KINDS) + sorted(UP_KINDS)}.")
    kinds = [DOWN_KINDS[kind] for kind in down]
    if [UP_KINDS[kind] for kind in up] != kinds[::-1]:
        raise PresetError(f"{path}: up_block_types {up} do not mirror down_block_types {down}.")
    heads = config.get("num_attention_heads") or config.get("attention_head_dim", 8)
    return StableDiffusionUNet(
        block_channels=list(config["block_out_channels"]),
        layers_per_block=_single(config, "layers_per_block", path),
        attention_heads=list(heads) if isinstance(heads, (list, tuple)) else heads,
        context_dim=_single(config, "cross_attention_dim", path), down_block_kinds=kinds,
        in_channels=config.get("in_channels", 4), out_channels=config.get("out_channels", 4),
        groups=config.get("norm_num_groups", 32), norm_epsilon=config.get("norm_eps", 1e-5),
        transformer_layers=_single({"t": config.get("transformer_layers_per_block", 1)}, "t", path),
        linear_projection=bool(config.get("use_linear_projection", False)),
        frequency_shift=float(config.get("freq_shift", 0)), flip_sin_to_cos=bool(config.get("flip_sin_to_cos", True)),
        dtype=dtype)


def vae_from_diffusers(config, path, dtype=None):
    """``(encoder, decoder, scaling_factor)`` from ``vae/config.json`` (a dict)."""
    if config.get("_class_name") == "AutoencoderTiny":
        raise PresetError(f"{path}: this pipeline's vae is an AutoencoderTiny (TAESD). kcookbook's pipeline needs "
                          "its AutoencoderKL there: load the pipeline with its full VAE, then attach TAESD with "
                          f"model.backbone.set_tiny_decoder({os.path.dirname(path)!r}).")
    _check_fixed(config, VAE_FIXED, path)
    kinds = set(config.get("down_block_types", [])) | set(config.get("up_block_types", []))
    if kinds - {"DownEncoderBlock2D", "UpDecoderBlock2D"}:
        raise PresetError(f"{path}: block types {sorted(kinds)} are not supported; kcookbook's autoencoder has "
                          "DownEncoderBlock2D and UpDecoderBlock2D.")
    if config.get("in_channels", 3) != config.get("out_channels", 3):
        raise PresetError(f"{path}: in_channels and out_channels differ; kcookbook's autoencoder needs them equal.")
    part = {"block_channels": list(config["block_out_channels"]), "layers_per_block": config.get("layers_per_block", 1),
            "groups": config.get("norm_num_groups", 32), "latent_channels": config.get("latent_channels", 4),
            "image_channels": config.get("in_channels", 3), "dtype": dtype}
    return VAEEncoder(**part), VAEDecoder(**part), config.get("scaling_factor", 0.18215)


def autoencoder_tiny_from_diffusers(config, path, dtype=None):
    """An :class:`AutoencoderTiny` from an ``AutoencoderTiny`` ``config.json`` (a dict)."""
    _check_fixed(config, TINY_FIXED, path)
    if config.get("shift_factor") not in (None, 0, 0.0):
        raise PresetError(f"{path}: shift_factor={config['shift_factor']} (a TAESD for SD3/FLUX latents) is not "
                          "supported; kcookbook's Stable Diffusion 1.x/2.x pipeline does not shift latents.")
    try:  # the defaults are diffusers' (TAESD's)
        encoder = TinyVAEEncoder(
            list(config.get("encoder_block_out_channels", [64] * 4)),
            list(config.get("num_encoder_blocks", [1, 3, 3, 3])), config.get("latent_channels", 4),
            config.get("in_channels", 3), dtype=dtype)
        decoder = TinyVAEDecoder(
            list(config.get("decoder_block_out_channels", [64] * 4)),
            list(config.get("num_decoder_blocks", [3, 3, 3, 1])), config.get("latent_channels", 4),
            config.get("out_channels", 3), dtype=dtype)
        return AutoencoderTiny(encoder, decoder, config.get("scaling_factor", 1.0), dtype=dtype)
    except ValueError as e:
        raise PresetError(f"{path} does not describe a TAESD kcookbook can build: {e}") from e


# ----------------------------------------------------------------- weights
def _conv(t, theirs, ours, out):
    weight = take(t, theirs + ".weight")
    out[ours + "/kernel"] = conv_kernel(weight) if weight.ndim == 4 else linear_kernel(weight)
    out[ours + "/bias"] = take(t, theirs + ".bias")


def _dense(t, theirs, ours, out, bias=True):
    out[ours + "/kernel"] = linear_kernel(take(t, theirs + ".weight"))
    if bias or theirs + ".bias" in t:
        out[ours + "/bias"] = take(t, theirs + ".bias")


def _norm(t, theirs, ours, out):
    out[ours + "/gamma"] = take(t, theirs + ".weight")
    out[ours + "/beta"] = take(t, theirs + ".bias")


def _resnet(t, theirs, ours, out):
    for hf, name in (("norm1", "norm_1"), ("norm2", "norm_2")):
        _norm(t, f"{theirs}.{hf}", f"{ours}/{name}", out)
    for hf, name in (("conv1", "conv_1"), ("conv2", "conv_2")):
        _conv(t, f"{theirs}.{hf}", f"{ours}/{name}", out)
    if f"{theirs}.time_emb_proj.weight" in t:
        _dense(t, f"{theirs}.time_emb_proj", f"{ours}/embedding_projection", out)
    if f"{theirs}.conv_shortcut.weight" in t:
        _conv(t, f"{theirs}.conv_shortcut", f"{ours}/shortcut", out)


def _attention(t, theirs, ours, out, names=("to_q", "to_k", "to_v", "to_out.0")):
    for hf, name in zip(names, ("query", "key", "value")):
        _dense(t, f"{theirs}.{hf}", f"{ours}/{name}", out, bias=False)
    _dense(t, f"{theirs}.{names[3]}", f"{ours}/output", out)


def _transformer(t, theirs, ours, layers, out):
    _norm(t, f"{theirs}.norm", f"{ours}/norm", out)
    _conv(t, f"{theirs}.proj_in", f"{ours}/projection_in", out)
    _conv(t, f"{theirs}.proj_out", f"{ours}/projection_out", out)
    for j in range(layers):
        hf, block = f"{theirs}.transformer_blocks.{j}", f"{ours}/block_{j}"
        for k in (1, 2, 3):
            _norm(t, f"{hf}.norm{k}", f"{block}/norm_{k}", out)
        _attention(t, f"{hf}.attn1", f"{block}/self_attention", out)
        _attention(t, f"{hf}.attn2", f"{block}/cross_attention", out)
        _dense(t, f"{hf}.ff.net.0.proj", f"{block}/feed_forward/gated", out)
        _dense(t, f"{hf}.ff.net.2", f"{block}/feed_forward/output", out)


def unet_weights(t, unet):
    """``{variable.path: array}`` of ``unet`` from a ``UNet2DConditionModel`` state dict (popped from ``t``)."""
    config, p, out = unet.get_config(), unet.name, {}
    levels, layers = len(config["block_channels"]), config["layers_per_block"]
    depth = config["transformer_layers"]
    _dense(t, "time_embedding.linear_1", f"{p}/time_embedding/dense_1", out)
    _dense(t, "time_embedding.linear_2", f"{p}/time_embedding/dense_2", out)
    _conv(t, "conv_in", f"{p}/conv_in", out)
    for level, kind in enumerate(config["down_block_kinds"]):
        for i in range(layers):
            _resnet(t, f"down_blocks.{level}.resnets.{i}", f"{p}/down_{level}_resnet_{i}", out)
            if kind == "cross_attention":
                _transformer(t, f"down_blocks.{level}.attentions.{i}", f"{p}/down_{level}_transformer_{i}", depth, out)
        if level < levels - 1:
            _conv(t, f"down_blocks.{level}.downsamplers.0.conv", f"{p}/down_{level}_downsample/conv", out)
    for i in (0, 1):
        _resnet(t, f"mid_block.resnets.{i}", f"{p}/mid_resnet_{i}", out)
    _transformer(t, "mid_block.attentions.0", f"{p}/mid_transformer", depth, out)
    for up, kind in enumerate(config["down_block_kinds"][::-1]):
        for i in range(layers + 1):
            _resnet(t, f"up_blocks.{up}.resnets.{i}", f"{p}/up_{up}_resnet_{i}", out)
            if kind == "cross_attention":
                _transformer(t, f"up_blocks.{up}.attentions.{i}", f"{p}/up_{up}_transformer_{i}", depth, out)
        if up < levels - 1:
            _conv(t, f"up_blocks.{up}.upsamplers.0.conv", f"{p}/up_{up}_upsample/conv", out)
    _norm(t, "conv_norm_out", f"{p}/norm_out", out)
    _conv(t, "conv_out", f"{p}/conv_out", out)
    return out


def _vae_middle(t, theirs, ours, out):
    for i in (0, 1):
        _resnet(t, f"{theirs}.mid_block.resnets.{i}", f"{ours}/mid_resnet_{i}", out)
    hf, attention = f"{theirs}.mid_block.attentions.0", f"{ours}/mid_attention"
    _norm(t, f"{hf}.group_norm", f"{attention}/norm", out)
    old = f"{hf}.query.weight" in t  # files written before diffusers 0.14 renamed them
    for name, (new_name, old_name) in zip(("query", "key", "value", "output"), (
            ("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn"))):
        weight = take(t, f"{hf}.{old_name if old else new_name}.weight")
        out[f"{attention}/attention/{name}/kernel"] = linear_kernel(weight.reshape(weight.shape[:2]))
        out[f"{attention}/attention/{name}/bias"] = take(t, f"{hf}.{old_name if old else new_name}.bias")


def vae_weights(t, encoder, decoder):
    """``{variable.path: array}`` of both autoencoder parts from an ``AutoencoderKL`` state dict."""
    config, out = encoder.get_config(), {}
    levels, layers = len(config["block_channels"]), config["layers_per_block"]
    e, d = encoder.name, decoder.name
    _conv(t, "encoder.conv_in", f"{e}/conv_in", out)
    for level in range(levels):
        for i in range(layers):
            _resnet(t, f"encoder.down_blocks.{level}.resnets.{i}", f"{e}/down_{level}_resnet_{i}", out)
        if level < levels - 1:
            _conv(t, f"encoder.down_blocks.{level}.downsamplers.0.conv", f"{e}/down_{level}_downsample/conv", out)
    _vae_middle(t, "encoder", e, out)
    _norm(t, "encoder.conv_norm_out", f"{e}/norm_out", out)
    _conv(t, "encoder.conv_out", f"{e}/conv_out", out)
    _conv(t, "quant_conv", f"{e}/quant_conv", out)
    _conv(t, "post_quant_conv", f"{d}/post_quant_conv", out)
    _conv(t, "decoder.conv_in", f"{d}/conv_in", out)
    _vae_middle(t, "decoder", d, out)
    for up in range(levels):
        for i in range(layers + 1):
            _resnet(t, f"decoder.up_blocks.{up}.resnets.{i}", f"{d}/up_{up}_resnet_{i}", out)
        if up < levels - 1:
            _conv(t, f"decoder.up_blocks.{up}.upsamplers.0.conv", f"{d}/up_{up}_upsample/conv", out)
    _norm(t, "decoder.conv_norm_out", f"{d}/norm_out", out)
    _conv(t, "decoder.conv_out", f"{d}/conv_out", out)
    return out


def _tiny_block(t, theirs, ours, out):
    for k, name in ((0, "conv_1"), (2, "conv_2"), (4, "conv_3")):
        _conv(t, f"{theirs}.conv.{k}", f"{ours}/{name}", out)
    if f"{theirs}.skip.weight" in t:
        out[f"{ours}/shortcut/kernel"] = conv_kernel(take(t, f"{theirs}.skip.weight"))


def autoencoder_tiny_weights(t, autoencoder):
    """``{variable.path: array}`` of an :class:`AutoencoderTiny` from diffusers' state dict (popped from ``t``)."""
    e, d, out = autoencoder.encoder.name, autoencoder.decoder.name, {}
    index = 0
    for level, blocks in enumerate(autoencoder.encoder.get_config()["blocks_per_level"]):
        if level == 0:
            _conv(t, "encoder.layers.0", f"{e}/conv_in", out)
        else:  # the stride-2 conv has no bias
            out[f"{e}/down_{level}/conv/kernel"] = conv_kernel(take(t, f"encoder.layers.{index}.weight"))
        index += 1
        for i in range(blocks):
            _tiny_block(t, f"encoder.layers.{index}", f"{e}/level_{level}_block_{i}", out)
            index += 1
    _conv(t, f"encoder.layers.{index}", f"{e}/conv_out", out)
    _conv(t, "decoder.layers.0", f"{d}/conv_in", out)
    index = 2  # decoder.layers.1 is the ReLU
    blocks_per_level = autoencoder.decoder.get_config()["blocks_per_level"]
    for level, blocks in enumerate(blocks_per_level):
        for i in range(blocks):
            _tiny_block(t, f"decoder.layers.{index}", f"{d}/level_{level}_block_{i}", out)
            index += 1
        if level < len(blocks_per_level) - 1:  # nn.Upsample, then a conv without a bias
            out[f"{d}/up_{level}/conv/kernel"] = conv_kernel(take(t, f"decoder.layers.{index + 1}.weight"))
            index += 2
        else:
            _conv(t, f"decoder.layers.{index}", f"{d}/conv_out", out)
    return out


def _text_model(t):
    """transformers 5 writes a ``CLIPTextModel`` without its ``text_model.`` prefix; older files have it."""
    if any(k.startswith("text_model.") for k in t):
        return t
    return {f"text_model.{k}": v for k, v in t.items()}


def _leftover(t, path):
    if t:
        raise PresetError(f"{path} has tensors kcookbook's Stable Diffusion does not use: {sorted(t)[:5]}. "
                          "It may be a variant with extra parts; it is not converted.")


class StableDiffusionConverter(Converter):
    """Stable Diffusion 1.x/2.x: the parts of a diffusers pipeline folder (read by
    :class:`DiffusersPipelineLoader`; a pipeline has no single ``config.json``)."""

    family = "stable_diffusion"


class DiffusersPipelineLoader(PresetLoader):
    """A diffusers ``StableDiffusionPipeline`` folder (``model_index.json`` + one folder per part)."""

    format = "diffusers_pipeline"

    @staticmethod
    def detect(path):
        return os.path.isdir(path) and os.path.exists(os.path.join(path, PIPELINE_INDEX))

    def __init__(self, path, handle, info=None):
        super().__init__(path, handle, info)
        files.check_links(path, recursive=True)
        self.index = files.read_json(self.file(PIPELINE_INDEX), "diffusers pipeline index")
        name = self.index.get("_class_name")
        if name not in PIPELINE_CLASSES:
            raise PresetError(f"{self.file(PIPELINE_INDEX)} describes a {name!r}; kcookbook reads Stable "
                              f"Diffusion 1.x/2.x pipelines ({', '.join(PIPELINE_CLASSES)}).")
        self.converter = StableDiffusionConverter()

    def _config(self, part, file="config.json"):
        path = self.file(os.path.join(part, file))
        if not os.path.exists(path):
            raise PresetError(f"The diffusers pipeline {self.path} has no {part}/{file}; save the whole pipeline "
                              "with StableDiffusionPipeline.save_pretrained.")
        return files.read_json(path, f"{part} config"), path

    def _tensors(self, part, name):
        path = self.file(os.path.join(part, name))
        if not os.path.exists(path):
            raise PresetError(f"No {part}/{name} in {self.path}. Save the pipeline with "
                              "save_pretrained(..., safe_serialization=True); pickled .bin files are not loaded.")
        return files.read_safetensors(path), path

    def load_backbone(self, load_weights=True, **overrides):
        dtype = overrides.pop("dtype", None)
        if overrides:
            raise PresetError(f"A diffusers pipeline takes no config overrides but dtype; got {sorted(overrides)}.")
        unet_config, unet_path = self._config("unet")
        vae_config, vae_path = self._config("vae")
        text_config, _ = self._config("text_encoder")
        unet = unet_from_diffusers(unet_config, unet_path, dtype)
        encoder, decoder, scaling_factor = vae_from_diffusers(vae_config, vae_path, dtype)
        text_encoder = text_encoder_from_hf(text_config, dtype=dtype)
        backbone = StableDiffusionBackbone(text_encoder, unet, vae_encoder=encoder, vae_decoder=decoder,
                                           scaling_factor=scaling_factor, dtype=dtype)
        if load_weights:
            arrays = {}
            for part, file, read in (
                    ("unet", "diffusion_pytorch_model.safetensors", lambda t: unet_weights(t, unet)),
                    ("vae", "diffusion_pytorch_model.safetensors", lambda t: vae_weights(t, encoder, decoder)),
                    ("text_encoder", "model.safetensors", lambda t: text_encoder_weights(t, text_encoder))):
                tensors, path = self._tensors(part, file)
                tensors = {k: v for k, v in tensors.items() if not k.endswith("position_ids")}
                tensors = _text_model(tensors) if part == "text_encoder" else tensors
                arrays.update(read(tensors))
                _leftover(tensors, path)
            files.assign_weights(backbone, arrays, self.path)
        return backbone

    def load_tokenizer(self, **kwargs):
        folder = self.file("tokenizer")
        return CLIPConverter().tokenizer_from_hf(folder, **kwargs) if os.path.isdir(folder) else None

    def preprocessor_defaults(self):
        path = self.file(os.path.join("tokenizer", "tokenizer_config.json"))
        length = files.read_json(path, "tokenizer config").get("model_max_length") if os.path.exists(path) else None
        if not isinstance(length, int) or length > 4096:
            length = self._config("text_encoder")[0].get("max_position_embeddings", 77)
        return {"sequence_length": length}

    def task_defaults(self):
        """The pipeline's noise schedule and default image size (the UNet's ``sample_size`` in pixels)."""
        unet, _ = self._config("unet")
        factor = 2 ** (len(self._config("vae")[0]["block_out_channels"]) - 1)
        size = unet.get("sample_size", 64)
        height, width = (size, size) if isinstance(size, int) else size
        return {"scheduler_config": self.scheduler_config(), "image_size": (height * factor, width * factor)}

    def scheduler_config(self):
        """The noise schedule's fields from ``scheduler/scheduler_config.json`` (absent ones keep the
        schedulers' defaults)."""
        config, path = self._config("scheduler", "scheduler_config.json")
        if config.get("thresholding") or config.get("rescale_betas_zero_snr"):
            raise PresetError(f"{path}: thresholding and rescale_betas_zero_snr are not supported.")
        return {k: config[k] for k in SCHEDULER_FIELDS if k in config}



class DiffusersModelLoader(PresetLoader):
    """One diffusers model folder (``ModelMixin.save_pretrained``: ``config.json`` with ``_class_name``,
    ``diffusion_pytorch_model.safetensors``). kcookbook reads ``AutoencoderTiny`` (TAESD) this way;
    other diffusers models are parts of a pipeline folder and are refused with a pointer to it."""

    format = "diffusers_model"

    @staticmethod
    def detect(path):
        config = os.path.join(path, "config.json")
        if not (os.path.isdir(path) and os.path.exists(config)):
            return False
        try:
            data = files.read_json(config)
        except PresetError:
            return False
        return isinstance(data, dict) and "_class_name" in data and "_diffusers_version" in data

    def __init__(self, path, handle, info=None):
        super().__init__(path, handle, info)
        files.check_links(path)
        self.config = files.read_json(self.file("config.json"), "diffusers model config")
        name = self.config.get("_class_name")
        if name != "AutoencoderTiny":
            raise PresetError(f"{self.file('config.json')} describes a diffusers {name!r}; kcookbook reads a single "
                              "diffusers model folder only for AutoencoderTiny (TAESD). A Stable Diffusion part "
                              "loads with its whole pipeline folder (the one with model_index.json).")

    def load_backbone(self, load_weights=True, **overrides):
        dtype = overrides.pop("dtype", None)
        if overrides:
            raise PresetError(f"A diffusers AutoencoderTiny takes no config overrides but dtype; got "
                              f"{sorted(overrides)}.")
        autoencoder = autoencoder_tiny_from_diffusers(self.config, self.file("config.json"), dtype)
        if load_weights:
            path = self.file(MODEL_FILE)
            if not os.path.exists(path):
                raise PresetError(f"No {MODEL_FILE} in {self.path}. Save the model with "
                                  "save_pretrained(..., safe_serialization=True); pickled .bin files are not loaded.")
            tensors = files.read_safetensors(path)
            arrays = autoencoder_tiny_weights(tensors, autoencoder)
            _leftover(tensors, path)
            files.assign_weights(autoencoder, arrays, self.path)
        return autoencoder
