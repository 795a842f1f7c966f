"""OpenCLIP checkpoints: a tensor-only state dict next to OpenCLIP's model config.

The format is the one OpenCLIP's Hugging Face repositories ship (``hf://timm/…``, ``hf://laion/…``):
a folder holding ``open_clip_config.json`` and ``open_clip_model.safetensors`` (or
``open_clip_pytorch_model.bin``, read with ``torch.load(weights_only=True)``). The config is
``{"model_cfg": {...}, "preprocess_cfg": {...}}`` or the bare model config of
``open_clip/model_configs/*.json``::

    {"embed_dim": 512, "quick_gelu": true,
     "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
     "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}}

The model is the CLIP that :class:`~kcookbook.backbones.CLIPBackbone` is (the ViT + causal text
transformer towers); the names map as

    visual.conv1 (no bias) / class_embedding / positional_embedding → the patch embedding
    visual.ln_pre / ln_post                    → pre_layrnorm / post_layernorm
    visual.proj, text_projection (in, out)     → visual_projection, text_projection (x @ proj)
    token_embedding / positional_embedding / ln_final → the text tower's embeddings, final norm
    *.transformer.resblocks.N.attn.in_proj_{weight,bias} → q, k, v (stacked in that order)
    *.resblocks.N.attn.out_proj / ln_1 / ln_2 / mlp.c_fc / mlp.c_proj → out_proj / layer_norm1 /
        layer_norm2 / fc1 / fc2
    logit_scale (a scalar or a 1-vector)       → logit_scale

after which :class:`~kcookbook.formats.converters.clip.CLIPConverter` reads them as a Hugging Face
``CLIPModel``. ``CustomTextCLIP`` checkpoints (``custom_text``) keep the text tower under ``text.``.
OpenCLIP's other models (ResNet or timm image towers, Hugging Face text towers, CoCa, SigLIP's
``logit_bias``, layer scale, attentional pooling…) are refused, naming the config field.

Full training checkpoints (``epoch_N.pt``: ``{"state_dict": ..., "optimizer": ...}``, names under
``module.``) load too when ``torch.load(weights_only=True)`` can read them; a pickled model object is
refused (:data:`EXPORT_HINT`).
"""

import importlib.util
import os

import numpy as np

from kcookbook.backbones.clip import CLIPBackbone, CLIPTextEncoder, CLIPVisionEncoder
from kcookbook.formats.converters.base import Converter
from kcookbook.formats.converters.clip import PIL_RESAMPLE, CLIPConverter, tokenizer_from_bpe_file
from kcookbook.formats.converters.efficientnet_lite import load_torch_file, state_dict_arrays
from kcookbook.formats.loaders import PresetLoader
from kcookbook.presets import files
from kcookbook.presets.errors import PresetError

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
OPENAI_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
OPENAI_VOCABULARY = 49408
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
EXPORT_HINT = ("Save a tensor-only state dict where open_clip is installed: model, _, _ = "
               "open_clip.create_model_and_transforms(name, pretrained=...); "
               "safetensors.torch.save_file(model.state_dict(), 'open_clip_model.safetensors'), next to the "
               f"model's config as {CONFIG_FILE}.")
# Config fields that make a model kcookbook's CLIP is not, unless they hold one of these values (absent
# is the first); OFF: absent, None, False, 0 or {}.
OFF = (None, False, 0, {})
_CUSTOM_BLOCKS = {"block_type": (None, "default"), "qk_norm": OFF, "scaled_cosine_attn": OFF, "scale_heads": OFF,
                  "scale_attn_inner": OFF, "scale_attn": OFF, "scale_fc": OFF, "ls_init_value": OFF,
                  "act_kwargs": OFF}
ACCEPTED = {
    "model": {"multimodal_cfg": OFF, "init_logit_bias": OFF},
    "vision": {"timm_model_name": OFF, "attentional_pool": OFF, "no_ln_pre": OFF, "pool_type": ("tok",),
               **_CUSTOM_BLOCKS},
    "text": {"hf_model_name": OFF, "embed_cls": OFF, "no_causal_mask": OFF, "proj_bias": OFF,
             "proj_type": ("linear",), **_CUSTOM_BLOCKS},
}


def model_config(config, source):
    """The model config of ``open_clip_config.json`` (its ``model_cfg``, or the file itself)."""
    model = config.get("model_cfg", config)
    kinds = {"embed_dim": int, "vision_cfg": dict, "text_cfg": dict}
    missing = [k for k, kind in kinds.items() if not isinstance(model, dict) or not isinstance(model.get(k), kind)]
    if missing:
        raise PresetError(f"{source} is not an OpenCLIP model config: it lacks {missing} (expected "
                          "an integer embed_dim and vision_cfg and text_cfg objects, as in "
                          "open_clip/model_configs/*.json).")
    return model


def _check_supported(fields, part, source):
    for name, accepted in ACCEPTED[part].items():
        if fields.get(name, accepted[0]) not in accepted:
            raise PresetError(
                f"{source} sets {part + '_cfg.' if part != 'model' else ''}{name}={fields[name]!r}: an OpenCLIP "
                "model that kcookbook's CLIP (ViT image tower, causal text transformer, CLS and end-of-text "
                "pooling, linear projections) does not build.")


def _epsilon(fields):
    return float((fields.get("norm_kwargs") or {}).get("eps", 1e-5))


def _int(fields, name, part, source, default=None):
    value = fields.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise PresetError(f"{source}: {part}_cfg.{name} must be a positive integer, got {value!r}.")
    return value


def backbone_from_open_clip(config, source, **overrides):
    """A :class:`CLIPBackbone` for OpenCLIP's model config (a dict), with ``overrides`` applied."""
    _check_supported(config, "model", source)
    vision, text = config["vision_cfg"], config["text_cfg"]
    _check_supported(vision, "vision", source)
    _check_supported(text, "text", source)
    if isinstance(vision.get("layers"), (list, tuple)):
        raise PresetError(f"{source} sets vision_cfg.layers={vision['layers']!r}: a ModifiedResNet image tower "
                          "(OpenAI's RN50…), which kcookbook's CLIP does not build; it reads ViT towers.")
    activation = "quick_gelu" if config.get("quick_gelu", False) else "gelu"
    dtype = overrides.get("dtype")

    size, patch = vision.get("image_size", 224), vision.get("patch_size", 16)
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if not isinstance(patch, int):
        raise PresetError(f"{source}: vision_cfg.patch_size={patch!r}; kcookbook's CLIP needs square patches "
                          "(one integer).")
    hidden = _int(vision, "width", "vision", source, 768)
    head_width = _int(vision, "head_width", "vision", source, 64)
    if hidden % head_width:
        raise PresetError(f"{source}: vision_cfg.width={hidden} is not a multiple of head_width={head_width}.")
    vision_encoder = CLIPVisionEncoder(
        image_shape=(height, width, 3), patch_size=patch, num_layers=_int(vision, "layers", "vision", source, 12),
        num_heads=hidden // head_width, hidden_dim=hidden,
        intermediate_dim=int(hidden * vision.get("mlp_ratio", 4.0)), activation=activation,
        layer_norm_epsilon=_epsilon(vision), dtype=dtype)

    pool = text.get("pool_type", "argmax")
    if pool not in ("argmax", "eos"):
        raise PresetError(f"{source} sets text_cfg.pool_type={pool!r}; kcookbook's CLIP pools the end-of-text "
                          "token ('argmax': the largest id, or 'eos': the first text_cfg.eos_id).")
    text_width = _int(text, "width", "text", source, 512)
    text_encoder = CLIPTextEncoder(
        vocabulary_size=_int(text, "vocab_size", "text", source, 49408),
        max_sequence_length=_int(text, "context_length", "text", source, 77),
        num_layers=_int(text, "layers", "text", source, 12), num_heads=_int(text, "heads", "text", source, 8),
        hidden_dim=text_width, intermediate_dim=int(text_width * text.get("mlp_ratio", 4.0)),
        activation=activation, layer_norm_epsilon=_epsilon(text),
        end_token_id=text.get("eos_id", 2) if pool == "eos" else None, dtype=dtype)
    options = {"projection_dim": _int(config, "embed_dim", "model", source), **overrides}
    return CLIPBackbone(vision_encoder, text_encoder, **options)


def _layer(state, theirs, hf, out):
    """One OpenCLIP ``ResidualAttentionBlock`` as a Hugging Face ``CLIPEncoderLayer``'s tensors."""
    weight, bias = state.pop(theirs + "attn.in_proj_weight"), state.pop(theirs + "attn.in_proj_bias")
    for i, name in enumerate(("q", "k", "v")):
        rows = slice(i * weight.shape[0] // 3, (i + 1) * weight.shape[0] // 3)
        out[f"{hf}self_attn.{name}_proj.weight"], out[f"{hf}self_attn.{name}_proj.bias"] = weight[rows], bias[rows]
    for ours, hf_name in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                          ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
        for kind in ("weight", "bias"):
            out[f"{hf}{hf_name}.{kind}"] = state.pop(f"{theirs}{ours}.{kind}")


def _norm(state, theirs, hf, out):
    out[hf + ".weight"], out[hf + ".bias"] = state.pop(theirs + ".weight"), state.pop(theirs + ".bias")


def hf_clip_tensors(state, backbone, source):
    """OpenCLIP's ``{name: array}`` (popped from ``state``) as Hugging Face ``CLIPModel`` tensors."""
    state.pop("attn_mask", None)  # the causal mask, a buffer some older checkpoints kept
    state = {(k[len("text."):] if k.startswith("text.") else k): v for k, v in state.items()}  # CustomTextCLIP
    t = {}
    try:
        t["vision_model.embeddings.class_embedding"] = state.pop("visual.class_embedding")
        t["vision_model.embeddings.patch_embedding.weight"] = state.pop("visual.conv1.weight")
        t["vision_model.embeddings.position_embedding.weight"] = state.pop("visual.positional_embedding")
        _norm(state, "visual.ln_pre", "vision_model.pre_layrnorm", t)
        _norm(state, "visual.ln_post", "vision_model.post_layernorm", t)
        for i in range(backbone.vision_encoder.num_layers):
            _layer(state, f"visual.transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}.", t)
        t["visual_projection.weight"] = np.asarray(state.pop("visual.proj")).T
        t["text_model.embeddings.token_embedding.weight"] = state.pop("token_embedding.weight")
        t["text_model.embeddings.position_embedding.weight"] = state.pop("positional_embedding")
        _norm(state, "ln_final", "text_model.final_layer_norm", t)
        for i in range(backbone.text_encoder.num_layers):
            _layer(state, f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}.", t)
        t["text_projection.weight"] = np.asarray(state.pop("text_projection")).T
        t["logit_scale"] = np.asarray(state.pop("logit_scale")).reshape(())
    except KeyError as e:
        raise PresetError(f"{source} has no tensor {e.args[0]!r}: it is not the state dict of the OpenCLIP "
                          f"model its {CONFIG_FILE} describes (are the layer counts right?).") from None
    if state:
        raise PresetError(f"{source} has tensors the OpenCLIP model its {CONFIG_FILE} describes does not use: "
                          f"{sorted(state)[:5]}. The config and the weights disagree, or the model has parts "
                          "kcookbook's CLIP lacks.")
    return t


class OpenCLIPConverter(Converter):
    """OpenCLIP state dicts (``OpenCLIPLoader`` reads the folder)."""

    family = "open_clip"

    def weights_from_state_dict(self, state, backbone, source="the OpenCLIP state dict"):
        return CLIPConverter().weights_from_hf(hf_clip_tensors(state, backbone, source), backbone)


def read_weights(path):
    """``{name: array}`` of an OpenCLIP safetensors file or a tensor-only torch file (a bare state dict,
    or a training checkpoint's ``state_dict``); names under ``module.`` lose the prefix."""
    if path.endswith(".safetensors"):
        return files.read_safetensors(path)
    try:
        state = load_torch_file(path)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        state = state_dict_arrays(state, path)
    except PresetError as e:
        raise PresetError(f"{e} A checkpoint saved with torch.save(model) is a pickle of open_clip's classes "
                          f"and is never unpickled here. {EXPORT_HINT}") from e
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def find_weights(path):
    """The weights file of an OpenCLIP folder: ``open_clip_model.safetensors`` first, else the ``.bin``."""
    for name in WEIGHTS_FILES:
        if os.path.exists(os.path.join(path, name)):
            return files.safe_path(path, name)
    raise PresetError(f"{path} holds {CONFIG_FILE} but no weights: expected {' or '.join(WEIGHTS_FILES)}. "
                      f"{EXPORT_HINT}")


class OpenCLIPLoader(PresetLoader):
    """A folder with ``open_clip_config.json`` and OpenCLIP's state dict (OpenCLIP's hf-hub layout)."""

    format = "open_clip_state_dict"

    @staticmethod
    def detect(path):
        return os.path.isdir(path) and os.path.exists(os.path.join(path, CONFIG_FILE))

    def __init__(self, path, handle, info=None):
        super().__init__(path, handle, info)
        files.check_links(path)
        self.config_file = self.file(CONFIG_FILE)
        self.config = files.read_json(self.config_file, "OpenCLIP config")
        self.model_config = model_config(self.config, self.config_file)
        self.converter = OpenCLIPConverter()

    def load_backbone(self, load_weights=True, **overrides):
        backbone = backbone_from_open_clip(self.model_config, self.config_file, **overrides)
        if load_weights:
            path = find_weights(self.path)
            arrays = self.converter.weights_from_state_dict(read_weights(path), backbone, path)
            files.assign_weights(backbone, arrays, path)
        return backbone

    def load_tokenizer(self, **kwargs):
        """CLIP's BPE tokenizer from ``vocab.json`` + ``merges.txt`` (or ``tokenizer.json``) when the
        folder has them (LAION's repositories do); else, for OpenAI's 49,408-token vocabulary, from
        the ``bpe_simple_vocab_16e6.txt.gz`` that open-clip-torch ships, when it is installed (OpenCLIP's
        own tokenizer reads that file); None otherwise."""
        text = self.model_config["text_cfg"]
        if text.get("hf_tokenizer_name"):
            raise PresetError(f"{self.config_file} names the Hugging Face tokenizer {text['hf_tokenizer_name']!r}, "
                              "which kcookbook does not load from an OpenCLIP folder.")
        tokenizer = CLIPConverter().tokenizer_from_hf(self.path, **kwargs)
        if tokenizer is not None or text.get("vocab_size", OPENAI_VOCABULARY) != OPENAI_VOCABULARY:
            return tokenizer
        spec = importlib.util.find_spec("open_clip")  # found, not imported (it imports torchvision)
        if spec is None or not spec.submodule_search_locations:
            return None
        path = os.path.join(list(spec.submodule_search_locations)[0], OPENAI_BPE_FILE)
        return tokenizer_from_bpe_file(path, **kwargs) if os.path.exists(path) else None

    def preprocessor_defaults(self):
        return {"sequence_length": self.model_config["text_cfg"].get("context_length", 77)}

    def load_image_converter(self, **kwargs):
        """OpenCLIP's eval transform (``preprocess_cfg``): short side resized to the image size with
        Pillow's filter, torchvision's centre crop, mean/std."""
        from kcookbook.components.image_converter import ImageConverter

        cfg = self.config.get("preprocess_cfg") or {}
        size = cfg.get("size", self.model_config["vision_cfg"].get("image_size", 224))
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        interpolation = cfg.get("interpolation", "bicubic")
        if cfg.get("resize_mode", "shortest") != "shortest" or interpolation not in PIL_RESAMPLE.values() \
                or height != width:
            raise PresetError(f"{self.config_file}: kcookbook reads OpenCLIP preprocess_cfg with resize_mode "
                              "'shortest', a square size and bicubic or bilinear interpolation; this one has "
                              f"{ {k: cfg.get(k) for k in ('size', 'resize_mode', 'interpolation')} }.")
        settings = {"image_size": (height, width), "shortest_edge": height, "resampling": "pillow",
                    "interpolation": interpolation, "crop_rounding": "round", "scale": 1 / 255,
                    "mean": cfg.get("mean", OPENAI_MEAN), "std": cfg.get("std", OPENAI_STD)}
        return ImageConverter.from_processor_settings(**{**settings, **kwargs})
