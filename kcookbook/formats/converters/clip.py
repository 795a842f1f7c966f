"""CLIP checkpoints: Hugging Face ``CLIPModel`` folders (``openai/clip-vit-base-patch32`` and kin).

Hugging Face keeps CLIP in two towers, ``text_model.*`` and ``vision_model.*``, plus
``visual_projection``, ``text_projection`` (no biases) and ``logit_scale``. Per layer:
``encoder.layers.N.self_attn.{q,k,v,out}_proj``, ``layer_norm1`` (before attention),
``mlp.fc1``/``fc2`` and ``layer_norm2`` (before the MLP): the pre-norm block kcookbook's
``TransformerEncoderBlock`` is, with query, key and value fused into one kernel here. The vision
tower's class token is ``embeddings.class_embedding``, its patch convolution (no bias)
``embeddings.patch_embedding`` (torch layout, transposed to channels-last), and its extra norms
``pre_layrnorm`` (sic) and ``post_layernorm``.

The tokenizer is CLIP's byte-level BPE (``vocab.json`` + ``merges.txt``, words ending in ``</w>``,
``BytePairTokenizer(pre_tokenizer="clip")``); the image processor's settings (short side resized
with Pillow's bicubic filter, centre crop, mean/std) become an ``ImageConverter`` with
``resampling="pillow"``. OpenAI's own BPE file (``bpe_simple_vocab_16e6.txt.gz``, shipped by
open-clip-torch) becomes the same tokenizer through :func:`tokenizer_from_bpe_file`.
"""

import gzip
import os

import numpy as np

from kcookbook.backbones.clip import CLIPBackbone, CLIPTextEncoder, CLIPVisionEncoder
from kcookbook.components.byte_pair import BytePairTokenizer, end_of_word_vocabulary
from kcookbook.formats.converters.base import Converter
from kcookbook.formats.converters.common import linear_kernel, take
from kcookbook.formats.converters.vit import conv_kernel
from kcookbook.presets import files
from kcookbook.presets.errors import PresetError

START_TOKEN, END_TOKEN = "<|startoftext|>", "<|endoftext|>"
HF_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_new": "gelu_approximate",
                  "gelu_pytorch_tanh": "gelu_approximate"}
# Hugging Face's CLIPTextConfig / CLIPVisionConfig defaults (ViT-B/32), for configs that omit a field.
TEXT_DEFAULTS = {"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
                 "num_attention_heads": 8, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                 "layer_norm_eps": 1e-5, "eos_token_id": 49407}
VISION_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                   "num_attention_heads": 12, "num_channels": 3, "image_size": 224, "patch_size": 32,
                   "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
PIL_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL.Image.Resampling values
OPENAI_MERGES = 49152 - 256 - 2  # OpenAI's CLIP uses the first 48,894 merges of its BPE file


def _activation(config, tower):
    name = config["hidden_act"]
    if name not in HF_ACTIVATIONS:
        raise PresetError(f"The CLIP {tower} uses hidden_act={name!r}; kcookbook's CLIP supports "
                          f"{', '.join(sorted(HF_ACTIVATIONS))}.")
    return HF_ACTIVATIONS[name]


def tokenizer_from_bpe_file(path, **kwargs):
    """CLIP's tokenizer from OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` (a version line, then merges).

    The vocabulary is built as OpenAI's code builds it: the 256 byte symbols, the same with ``</w>``,
    the first 48,894 merges, then ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407).
    """
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise PresetError(f"{path} is not a gzipped BPE merges file ({e}); expected OpenAI's "
                          "bpe_simple_vocab_16e6.txt.gz.") from e
    merges = lines[1:OPENAI_MERGES + 1]
    if len(merges) < OPENAI_MERGES or any(len(m.split(" ")) != 2 for m in merges):
        raise PresetError(f"{path} holds {len(merges)} merge lines (or lines that are not 'left right' "
                          f"pairs); OpenAI's CLIP vocabulary needs {OPENAI_MERGES}.")
    vocabulary = end_of_word_vocabulary(merges, [START_TOKEN, END_TOKEN])
    return clip_tokenizer(vocabulary, merges, **kwargs)


def clip_tokenizer(vocabulary, merges, pad_token=END_TOKEN, **kwargs):
    """A ``BytePairTokenizer`` with CLIP's rules and special tokens."""
    return BytePairTokenizer(vocabulary, merges, special_tokens=[START_TOKEN, END_TOKEN], pre_tokenizer="clip",
                             start_token=START_TOKEN, end_token=END_TOKEN, pad_token=pad_token,
                             add_start_token=True, **kwargs)


def _attention_layer(t, hf_prefix, our_prefix):
    """One Hugging Face CLIP encoder layer → our fused-QKV pre-norm ``TransformerEncoderBlock``."""
    projections = [f"{hf_prefix}self_attn.{n}_proj" for n in ("q", "k", "v")]
    out = {
        our_prefix + "attention/qkv/kernel": np.concatenate(
            [linear_kernel(take(t, p + ".weight")) for p in projections], axis=1),
        our_prefix + "attention/qkv/bias": np.concatenate([take(t, p + ".bias") for p in projections]),
    }
    for ours, theirs in {"attention/output": "self_attn.out_proj", "ffn_intermediate": "mlp.fc1",
                         "ffn_output": "mlp.fc2"}.items():
        out[f"{our_prefix}{ours}/kernel"] = linear_kernel(take(t, f"{hf_prefix}{theirs}.weight"))
        out[f"{our_prefix}{ours}/bias"] = take(t, f"{hf_prefix}{theirs}.bias")
    for ours, theirs in {"attention_norm": "layer_norm1", "ffn_norm": "layer_norm2"}.items():
        out.update(_norm(t, f"{hf_prefix}{theirs}", f"{our_prefix}{ours}"))
    return out


def _norm(t, hf_name, our_name):
    return {our_name + "/gamma": take(t, hf_name + ".weight"), our_name + "/beta": take(t, hf_name + ".bias")}


def text_encoder_from_hf(text_config, dtype=None):
    """A :class:`CLIPTextEncoder` from a ``CLIPTextConfig`` dict (a ``CLIPModel``'s ``text_config``,
    or a ``CLIPTextModel``'s own ``config.json``: Stable Diffusion's text encoder)."""
    text = {**TEXT_DEFAULTS, **text_config}
    eos = text.get("eos_token_id")
    return CLIPTextEncoder(
        vocabulary_size=text["vocab_size"], max_sequence_length=text["max_position_embeddings"],
        num_layers=text["num_hidden_layers"], num_heads=text["num_attention_heads"],
        hidden_dim=text["hidden_size"], intermediate_dim=text["intermediate_size"],
        activation=_activation(text, "text tower"), layer_norm_epsilon=text["layer_norm_eps"],
        end_token_id=None if eos == 2 else eos, dtype=dtype)


def text_encoder_weights(t, text_encoder):
    """``{variable.path: array}`` of ``text_encoder`` from Hugging Face's ``text_model.*`` tensors,
    popped from ``t``."""
    tp = f"{text_encoder.name}/"
    out = {
        tp + "embeddings/token_embedding/embeddings": take(t, "text_model.embeddings.token_embedding.weight"),
        tp + "embeddings/position_embedding/embeddings": take(t, "text_model.embeddings.position_embedding.weight"),
    }
    out.update(_norm(t, "text_model.final_layer_norm", tp + "final_layer_norm"))
    for i in range(text_encoder.num_layers):
        out.update(_attention_layer(t, f"text_model.encoder.layers.{i}.", f"{tp}transformer_layer_{i}/"))
    return out


def _bpe_from_tokenizer_json(folder):
    """``(vocabulary, merges)`` of the BPE model in ``tokenizer.json``, or ``(None, None)``."""
    path = os.path.join(folder, "tokenizer.json")
    model = files.read_json(path, "tokenizer").get("model", {}) if os.path.exists(path) else {}
    if model.get("type") != "BPE":
        return None, None
    return model["vocab"], [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]


class CLIPConverter(Converter):
    """CLIP: Hugging Face ``clip`` folders (both towers, projections, tokenizer, image processor)."""

    family = "clip"
    hf_model_types = ("clip",)
    keras_hub_classes = ("CLIPBackbone", "CLIPTokenizer", "CLIPImageConverter")

    def backbone_from_hf(self, hf_config, **overrides):
        vision = {**VISION_DEFAULTS, **(hf_config.get("vision_config") or {})}
        size = vision["image_size"]
        height, width = (size, size) if isinstance(size, int) else size
        text_encoder = text_encoder_from_hf(hf_config.get("text_config") or {}, dtype=overrides.get("dtype"))
        vision_encoder = CLIPVisionEncoder(
            image_shape=(height, width, vision["num_channels"]), patch_size=vision["patch_size"],
            num_layers=vision["num_hidden_layers"], num_heads=vision["num_attention_heads"],
            hidden_dim=vision["hidden_size"], intermediate_dim=vision["intermediate_size"],
            activation=_activation(vision, "vision tower"), layer_norm_epsilon=vision["layer_norm_eps"],
            dtype=overrides.get("dtype"))
        config = {"projection_dim": hf_config.get("projection_dim", 512),
                  "logit_scale_init": hf_config.get("logit_scale_init_value", 2.6592)}
        config.update(overrides)
        return CLIPBackbone(vision_encoder, text_encoder, **config)

    def weights_from_hf(self, tensors, backbone):
        t = {k: v for k, v in tensors.items() if not k.endswith("position_ids")}
        text, vision = backbone.text_encoder, backbone.vision_encoder
        vp = f"{vision.name}/"
        hidden = vision.hidden_dim
        out = text_encoder_weights(t, text)
        out.update({
            vp + "patch_embedding/class_token":
                take(t, "vision_model.embeddings.class_embedding").reshape(1, 1, hidden),
            vp + "patch_embedding/projection/kernel":
                conv_kernel(take(t, "vision_model.embeddings.patch_embedding.weight")),
            vp + "patch_embedding/position_embedding/embeddings":
                take(t, "vision_model.embeddings.position_embedding.weight"),
            "vision_projection/kernel": linear_kernel(take(t, "visual_projection.weight")),
            "text_projection/kernel": linear_kernel(take(t, "text_projection.weight")),
            "logits/logit_scale": np.asarray(take(t, "logit_scale")).reshape(()),
        })
        out.update(_norm(t, "vision_model.pre_layrnorm", vp + "pre_layer_norm"))
        out.update(_norm(t, "vision_model.post_layernorm", vp + "post_layer_norm"))
        for i in range(vision.num_layers):
            out.update(_attention_layer(t, f"vision_model.encoder.layers.{i}.", f"{vp}transformer_layer_{i}/"))
        if t:
            raise PresetError(f"The CLIP checkpoint has tensors kcookbook's CLIP does not use: {sorted(t)[:5]}. "
                              "It may be a CLIP variant with extra parts; it is not converted.")
        return out

    def tokenizer_from_hf(self, folder, **kwargs):
        vocab, merges = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
        if not (os.path.exists(vocab) and os.path.exists(merges)):
            vocab, merges = _bpe_from_tokenizer_json(folder)  # transformers 5 writes tokenizer.json only
            if vocab is None:
                return None
        pad = END_TOKEN
        config_path = os.path.join(folder, "tokenizer_config.json")
        if os.path.exists(config_path):
            pad = files.read_json(config_path, "tokenizer config").get("pad_token") or END_TOKEN
            pad = pad.get("content", END_TOKEN) if isinstance(pad, dict) else pad
        return clip_tokenizer(vocab, merges, pad_token=pad, **kwargs)

    def image_converter_from_hf(self, folder):
        """``preprocessor_config.json``: short side to ``size.shortest_edge`` with Pillow's filter,
        centre crop ``crop_size``, rescale, mean/std."""
        path = os.path.join(folder, "preprocessor_config.json")
        if not os.path.exists(path):
            return None
        config = files.read_json(path, "image processor config")
        size, crop = config.get("size", {"shortest_edge": 224}), config.get("crop_size", 224)
        crop = (crop.get("height"), crop.get("width")) if isinstance(crop, dict) else (crop, crop)
        if config.get("do_center_crop", True) is False or not isinstance(size, (dict, int)):
            raise PresetError(f"{path}: kcookbook reads CLIP image processors that resize the short side and "
                              "centre-crop (do_center_crop true); this one does not.")
        shortest = size.get("shortest_edge") if isinstance(size, dict) else size
        resample = config.get("resample", 3)
        if resample not in PIL_RESAMPLE:
            raise PresetError(f"{path}: resample={resample!r} is not bilinear (2) or bicubic (3).")
        normalize = config.get("do_normalize", True)
        return {"image_size": crop, "shortest_edge": shortest, "resampling": "pillow",
                "interpolation": PIL_RESAMPLE[resample],
                "scale": config.get("rescale_factor", 1 / 255) if config.get("do_rescale", True) else 1.0,
                "mean": config.get("image_mean") if normalize else None,
                "std": config.get("image_std") if normalize else None}

    # ----- keras_hub presets: CLIPBackbone (CLIPVisionEncoder + CLIPTextEncoder) -----
    def backbone_from_keras_hub(self, config, **overrides):
        towers = {}
        for name, class_name in (("vision_encoder", "CLIPVisionEncoder"), ("text_encoder", "CLIPTextEncoder")):
            part = config.get(name) or {}
            if part.get("class_name") != class_name:
                raise PresetError(f"This keras_hub CLIPBackbone's {name} is {part.get('class_name')!r}; "
                                  f"kcookbook reads CLIP presets whose {name} is keras_hub's {class_name}.")
            tower = part["config"]
            activation = tower.get("intermediate_activation", "quick_gelu")
            if activation not in ("quick_gelu", "gelu"):
                raise PresetError(f"This keras_hub CLIPBackbone's {name} sets intermediate_activation="
                                  f"{activation!r}; kcookbook's CLIP reads 'quick_gelu' and 'gelu'.")
            if tower.get("intermediate_output_index") is not None:
                raise PresetError(f"This keras_hub CLIPBackbone's {name} sets intermediate_output_index="
                                  f"{tower['intermediate_output_index']!r} (an extra output); kcookbook's CLIP "
                                  "towers have none.")
            towers[name] = {"num_layers": tower["num_layers"], "num_heads": tower["num_heads"],
                            "hidden_dim": tower["hidden_dim"], "intermediate_dim": tower["intermediate_dim"],
                            "activation": activation, "dtype": overrides.get("dtype")}
        vision, text = config["vision_encoder"]["config"], config["text_encoder"]["config"]
        if text["embedding_dim"] != text["hidden_dim"]:
            raise PresetError(f"This keras_hub CLIPBackbone's text_encoder sets embedding_dim={text['embedding_dim']} "
                              f"and hidden_dim={text['hidden_dim']}; kcookbook's CLIP needs them equal.")
        vision_encoder = CLIPVisionEncoder(image_shape=tuple(vision.get("image_shape", (224, 224, 3))),
                                           patch_size=vision["patch_size"], **towers["vision_encoder"])
        # keras_hub pools the position of the largest id (end_token_id None), as OpenAI's CLIP does.
        text_encoder = CLIPTextEncoder(vocabulary_size=text["vocabulary_size"],
                                       max_sequence_length=text.get("max_sequence_length", 77),
                                       **towers["text_encoder"])
        options = {"projection_dim": config["projection_dim"], **overrides}
        return CLIPBackbone(vision_encoder, text_encoder, **options)

    def weights_from_keras_hub(self, arrays, backbone):
        t = keras_hub_clip_tensors(arrays, backbone)
        return self.weights_from_hf(t, backbone)

    def tokenizer_from_keras_hub(self, config, assets_dir, **kwargs):
        """keras_hub's ``CLIPTokenizer``: ``assets/tokenizer/vocabulary.json`` and ``merges.txt``;
        it pads with id 0 unless ``pad_with_end_token``."""
        vocab, merges = os.path.join(assets_dir, "vocabulary.json"), os.path.join(assets_dir, "merges.txt")
        for path in (vocab, merges):
            if not os.path.exists(path):
                raise PresetError(f"keras_hub CLIP tokenizer without {path} (keras_hub writes it with "
                                  "save_to_preset).")
        pad = END_TOKEN
        if not config.get("pad_with_end_token", False):
            vocabulary = files.read_json(vocab, "CLIP vocabulary")
            pad = next(token for token, i in vocabulary.items() if i == 0)
        return clip_tokenizer(vocab, merges, pad_token=pad, **kwargs)

    def image_converter_from_keras_hub(self, config, **kwargs):
        from kcookbook.formats.converters.common import image_converter_from_keras_hub

        return image_converter_from_keras_hub(config, **kwargs)


def keras_hub_clip_tensors(arrays, backbone):
    """keras_hub's CLIP ``model.weights.h5`` arrays as ``{Hugging Face CLIPModel name: array}`` (torch
    layouts), so the Hugging Face mapping reads them."""
    from kcookbook.formats.converters.common import keras_hub_layer_suffix, keras_hub_reader

    var, t = keras_hub_reader(arrays), {}

    def layer(theirs, hf):
        for name, hf_name in (("query", "q"), ("key", "k"), ("value", "v")):
            kernel = var(f"{theirs}attention/{name}_dense/vars/0")  # (hidden, heads, head_dim)
            t[f"{hf}self_attn.{hf_name}_proj.weight"] = kernel.reshape(kernel.shape[0], -1).T
            t[f"{hf}self_attn.{hf_name}_proj.bias"] = var(f"{theirs}attention/{name}_dense/vars/1").reshape(-1)
        kernel = var(theirs + "attention/output_dense/vars/0")  # (heads, head_dim, hidden)
        t[hf + "self_attn.out_proj.weight"] = kernel.reshape(-1, kernel.shape[-1]).T
        t[hf + "self_attn.out_proj.bias"] = var(theirs + "attention/output_dense/vars/1")
        for name, hf_name in (("dense_1", "mlp.fc1"), ("dense_2", "mlp.fc2")):
            t[f"{hf}{hf_name}.weight"] = var(f"{theirs}{name}/vars/0").T
            t[f"{hf}{hf_name}.bias"] = var(f"{theirs}{name}/vars/1")
        for name, hf_name in (("layer_norm_1", "layer_norm1"), ("layer_norm_2", "layer_norm2")):
            norm(theirs + name, hf + hf_name)

    def norm(theirs, hf):
        t[hf + ".weight"], t[hf + ".bias"] = var(theirs + "/vars/0"), var(theirs + "/vars/1")

    text, vision = "layers/clip_text_encoder/layers/", "layers/clip_vision_encoder/layers/"
    t["text_model.embeddings.token_embedding.weight"] = var(text + "token_and_position_embedding/token_embedding/vars/0")
    t["text_model.embeddings.position_embedding.weight"] = var(
        text + "token_and_position_embedding/position_embedding/vars/0")
    norm(text + "layer_normalization", "text_model.final_layer_norm")
    for i in range(backbone.text_encoder.num_layers):
        layer(f"{text}clip_encoder_layer{keras_hub_layer_suffix(i)}/", f"text_model.encoder.layers.{i}.")
    t["vision_model.embeddings.class_embedding"] = var(vision + "clip_vision_embedding/vars/0")
    t["vision_model.embeddings.patch_embedding.weight"] = np.transpose(
        var(vision + "clip_vision_embedding/patch_embedding/vars/0"), (3, 2, 0, 1))
    # keras_hub looks its position table up at the stored position_ids (arange in its Kaggle presets,
    # zeros in a freshly built model); ours at 0, 1, 2…: the rows it reads, in order, are the same.
    table = var(vision + "clip_vision_embedding/position_embedding/vars/0")
    position_ids = np.asarray(var(vision + "clip_vision_embedding/vars/1")).reshape(-1)
    t["vision_model.embeddings.position_embedding.weight"] = table[position_ids]
    norm(vision + "layer_normalization", "vision_model.pre_layrnorm")
    norm(vision + "layer_normalization_1", "vision_model.post_layernorm")
    for i in range(backbone.vision_encoder.num_layers):
        layer(f"{vision}clip_encoder_layer{keras_hub_layer_suffix(i)}/", f"vision_model.encoder.layers.{i}.")
    t["visual_projection.weight"] = var("layers/dense/vars/0").T
    t["text_projection.weight"] = var("layers/dense_1/vars/0").T
    t["logit_scale"] = var("layers/clip_head/vars/0")
    return t
