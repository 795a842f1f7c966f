"""Helpers shared by the converters: array plumbing, and the keras_hub layouts several families use."""

import numpy as np

from kcookbook.formats.converters.base import Converter


def take(tensors, name, source="checkpoint"):
    """Pop ``name`` from a dict of arrays with a clear error when it is absent."""
    if name not in tensors:
        from kcookbook.presets.errors import PresetError

        close = [k for k in tensors if name.split(".")[-2] in k][:5] if "." in name else []
        raise PresetError(f"The {source} has no tensor {name!r}" + (f" (similar: {close})" if close else "")
                          + ".")
    return np.asarray(tensors.pop(name))


def linear_kernel(weight):
    """A torch ``nn.Linear`` weight (out, in) as a Keras Dense kernel (in, out)."""
    return np.ascontiguousarray(np.asarray(weight).T)


def strip_prefix(tensors, prefixes):
    """Drop a leading module prefix (``bert.``, ``model.``) so names match the bare backbone."""
    out = {}
    for name, value in tensors.items():
        for prefix in prefixes:
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        out[name] = value
    return out


# ---------------------------------------------------------------- Hugging Face encoder layers

def hf_encoder_layer(t, hf_prefix, our_prefix, self_attention, norm_names, missing_qkv_bias=None):
    """One Hugging Face BERT-style encoder layer → our fused-QKV ``TransformerEncoderBlock``.

    BERT and ViT layers share their layout (``{self_attention}.query/key/value``,
    ``attention.output.dense``, ``intermediate.dense``, ``output.dense``) and differ in where the
    self-attention projections live and what the two layer norms are called:

    Args:
        t: the checkpoint's tensors (names are popped as they are used).
        hf_prefix: e.g. ``"encoder.layer.3."``; our_prefix: e.g. ``"transformer_layer_3/"``.
        self_attention: the query/key/value module under the layer (``"attention.self"`` in BERT,
            ``"attention.attention"`` in ViT).
        norm_names: ``{"attention_norm": hf name, "ffn_norm": hf name}``.
        missing_qkv_bias: ``None`` to require q/k/v biases, or the hidden size to use zeros where a
            checkpoint has none (``qkv_bias=False`` ViTs): zeros are the same function.
    """
    qkv = [f"{hf_prefix}{self_attention}.{n}" for n in ("query", "key", "value")]

    def qkv_bias(name):
        if missing_qkv_bias is not None and name + ".bias" not in t:
            return np.zeros(missing_qkv_bias, "float32")
        return take(t, name + ".bias")

    out = {
        our_prefix + "attention/qkv/kernel": np.concatenate(
            [linear_kernel(take(t, n + ".weight")) for n in qkv], axis=1),
        our_prefix + "attention/qkv/bias": np.concatenate([qkv_bias(n) for n in qkv]),
    }
    for our_name, hf_name in {"attention/output": "attention.output.dense",
                              "ffn_intermediate": "intermediate.dense",
                              "ffn_output": "output.dense"}.items():
        out[our_prefix + our_name + "/kernel"] = linear_kernel(take(t, hf_prefix + hf_name + ".weight"))
        out[our_prefix + our_name + "/bias"] = take(t, hf_prefix + hf_name + ".bias")
    for our_name, hf_name in norm_names.items():
        out[our_prefix + our_name + "/gamma"] = take(t, hf_prefix + hf_name + ".weight")
        out[our_prefix + our_name + "/beta"] = take(t, hf_prefix + hf_name + ".bias")
    return out


def torch_linear(read, path):
    """``read(path)`` (a Keras kernel (in, out)) as a torch ``nn.Linear`` weight (out, in): the
    inverse of :func:`linear_kernel`, for exports."""
    return lambda: np.ascontiguousarray(read(path).T)


def column_block(read, path, start, stop, transpose=True):
    """Columns ``start:stop`` of the fused kernel (or bias) at ``path``, e.g. the query part of a
    ``qkv`` kernel, transposed to torch's (out, in) for kernels."""
    def compute():
        part = read(path)[..., start:stop]
        return np.ascontiguousarray(part.T if transpose and part.ndim == 2 else part)
    return compute


def hf_encoder_layer_tensors(read, hf_prefix, our_prefix, self_attention, norm_names, hidden):
    """The inverse of :func:`hf_encoder_layer`: our fused-QKV encoder block → a Hugging Face
    BERT-style layer's ``{tensor name: function}``, for exports."""
    out = {}
    for i, name in enumerate(("query", "key", "value")):
        span = (i * hidden, (i + 1) * hidden)
        out[f"{hf_prefix}{self_attention}.{name}.weight"] = column_block(read, our_prefix + "attention/qkv/kernel", *span)
        out[f"{hf_prefix}{self_attention}.{name}.bias"] = column_block(read, our_prefix + "attention/qkv/bias", *span)
    for our_name, hf_name in {"attention/output": "attention.output.dense",
                              "ffn_intermediate": "intermediate.dense",
                              "ffn_output": "output.dense"}.items():
        out[f"{hf_prefix}{hf_name}.weight"] = torch_linear(read, our_prefix + our_name + "/kernel")
        out[f"{hf_prefix}{hf_name}.bias"] = same(read, our_prefix + our_name + "/bias")
    for our_name, hf_name in norm_names.items():
        out[f"{hf_prefix}{hf_name}.weight"] = same(read, our_prefix + our_name + "/gamma")
        out[f"{hf_prefix}{hf_name}.bias"] = same(read, our_prefix + our_name + "/beta")
    return out


def same(read, path):
    """``read(path)`` unchanged, as a function (for exports)."""
    return lambda: read(path)


# ---------------------------------------------------------------- keras_hub transformer layers

def keras_hub_layer_suffix(i):
    """keras_hub's weight files name the i-th layer of a class ``name``, ``name_1``, ``name_2``…"""
    return "" if i == 0 else f"_{i}"


def keras_hub_reader(arrays):
    """``var(path)``: pops one array of keras_hub's ``model.weights.h5``, naming it when absent."""
    remaining = dict(arrays)
    return lambda path: take(remaining, path, "keras_hub weights file")


def keras_hub_blocks(layer_class, num_layers):
    """``(keras_hub prefix, our prefix)`` of each transformer block, e.g.
    ``("layers/transformer_decoder_2/", "transformer_layer_2/")``: keras_hub names blocks by class
    and order, kcookbook by position."""
    return [(f"layers/{layer_class}{keras_hub_layer_suffix(i)}/", f"transformer_layer_{i}/")
            for i in range(num_layers)]


def keras_hub_attention(var, keras_hub_prefix, our_prefix):
    """A Keras ``MultiHeadAttention`` in a keras_hub weights file (``query_dense``, ``key_dense``,
    ``value_dense``, ``output_dense`` under ``keras_hub_prefix``) → our fused ``qkv`` and ``output``."""
    kernels, biases = [], []
    for name in ("query", "key", "value"):
        kernel = var(f"{keras_hub_prefix}{name}_dense/vars/0")  # (hidden, heads, head_dim)
        kernels.append(kernel.reshape(kernel.shape[0], -1))
        biases.append(var(f"{keras_hub_prefix}{name}_dense/vars/1").reshape(-1))
    output_kernel = var(keras_hub_prefix + "output_dense/vars/0")  # (heads, head_dim, hidden)
    return {
        our_prefix + "qkv/kernel": np.concatenate(kernels, axis=1),
        our_prefix + "qkv/bias": np.concatenate(biases),
        our_prefix + "output/kernel": output_kernel.reshape(-1, output_kernel.shape[-1]),
        our_prefix + "output/bias": var(keras_hub_prefix + "output_dense/vars/1"),
    }


def keras_hub_transformer_layer(var, keras_hub_prefix, our_prefix, norm_names, feed_forward_names):
    """One keras_hub ``TransformerEncoder``/``TransformerDecoder`` layer → our fused-QKV block.

    ``var(path)`` reads one array of keras_hub's ``model.weights.h5``; ``norm_names`` and
    ``feed_forward_names`` map our sublayer names to the attention norm / feed-forward norm and the
    intermediate / output dense layers, which differ between our encoder and decoder blocks.
    """
    out = keras_hub_attention(var, keras_hub_prefix + "_self_attention_layer/", our_prefix + "attention/")
    attention_norm, feed_forward_norm = norm_names
    for our_name, theirs in {attention_norm: "_self_attention_layer_norm",
                             feed_forward_norm: "_feedforward_layer_norm"}.items():
        out[f"{our_prefix}{our_name}/gamma"] = var(f"{keras_hub_prefix}{theirs}/vars/0")
        out[f"{our_prefix}{our_name}/beta"] = var(f"{keras_hub_prefix}{theirs}/vars/1")
    intermediate, output = feed_forward_names
    for our_name, theirs in {intermediate: "_feedforward_intermediate_dense",
                             output: "_feedforward_output_dense"}.items():
        out[f"{our_prefix}{our_name}/kernel"] = var(f"{keras_hub_prefix}{theirs}/vars/0")
        out[f"{our_prefix}{our_name}/bias"] = var(f"{keras_hub_prefix}{theirs}/vars/1")
    return out


def keras_hub_sentencepiece(config, assets_dir, family, start_token, end_token, pad_token=None,
                            pad_token_id=None, **kwargs):
    """A keras_hub ``SentencePieceTokenizer`` subclass (``GemmaTokenizer``, ``MistralTokenizer``) as
    kcookbook's ``SentencePieceTokenizer``: the proto is ``assets/tokenizer/vocabulary.spm`` and the
    special tokens are the ones keras_hub's class names (not necessarily the proto's own bos/eos).

    ``pad_token_id``: for classes that pad with a fixed id rather than a named piece (keras_hub's
    ``MistralTokenizer`` pads with 0, which is ``<unk>`` in Mistral's vocabulary).
    """
    import os

    from kcookbook.presets.errors import PresetError

    proto = os.path.join(assets_dir, "vocabulary.spm")
    if not os.path.exists(proto):
        raise PresetError(f"keras_hub {family} tokenizer without its SentencePiece model: {proto} is "
                          "missing (keras_hub writes it with save_to_preset).")
    for flag in ("add_bos", "add_eos"):
        if config.get(flag):
            raise PresetError(
                f"This keras_hub {family} tokenizer sets {flag}=True (the tokenizer itself adds the "
                "special token); kcookbook's tokenizers leave that to the preprocessor "
                "(add_start_token / add_end_token). Save the preset with add_bos=add_eos=False.")
    from kcookbook.components.sentencepiece import SentencePieceTokenizer

    if pad_token_id is not None:
        import sentencepiece

        pad_token = sentencepiece.SentencePieceProcessor(model_file=proto).id_to_piece(pad_token_id)
    options = {"start_token": start_token, "end_token": end_token, "pad_token": pad_token,
               "add_start_token": True, **kwargs}
    try:
        return SentencePieceTokenizer(proto, **options)
    except ValueError as e:
        raise PresetError(f"keras_hub {family} tokenizer at {proto}: {e} keras_hub's {family} "
                          f"tokenizer needs the pieces {start_token!r} and {end_token!r}.") from e


# ---------------------------------------------------------------- keras_hub vision pieces

def image_converter_from_keras_hub(config, **kwargs):
    """keras_hub's ``ImageConverter`` subclasses (``ResNetImageConverter``, ``ViTImageConverter``…):
    the same ``resize * scale + offset`` contract as ours."""
    from kcookbook.components.image_converter import ImageConverter

    config = dict(config)
    if "height" in config and "width" in config:  # keras_hub's older argument names
        config["image_size"] = (config.pop("height"), config.pop("width"))
    scale, offset = config.get("scale"), config.get("offset")
    if "variance" in config and "mean" in config:
        std = np.sqrt(config["variance"])
        scale = (np.asarray(scale if scale is not None else 1.0) / std).tolist()
        offset = (-np.asarray(config["mean"]) / std).tolist()
    size = config.get("image_size") or (224, 224)
    options = {k: config[k] for k in ("interpolation", "crop_to_aspect_ratio", "antialias",
                                      "bounding_box_format") if config.get(k) is not None}
    return ImageConverter(tuple(size), scale=1.0 if scale is None else scale,
                          offset=0.0 if offset is None else offset, **{**options, **kwargs})


def keras_hub_weights_by_position(arrays, model, family):
    """A keras_hub functional backbone's ``model.weights.h5`` → ``{variable.path: array}`` of
    ``model``, for families whose graph has the same weighted layers as keras_hub's in the same order.

    Keras's weights file names layers by class and position (``layers/conv2d_3/vars/0``), not by
    layer name, so the n-th ``Conv2D`` of ``model`` takes the n-th ``Conv2D``'s arrays (shapes are
    checked when assigned). Entries left over are a PresetError naming ``family``.
    """
    from kcookbook.presets.errors import PresetError
    from kcookbook.presets.files import keras_snake_case

    a, out, seen = dict(arrays), {}, {}
    for layer in model.layers:
        if not layer.weights:
            continue
        base = keras_snake_case(type(layer).__name__)
        n = seen.get(base, 0)
        seen[base] = n + 1
        key = f"layers/{base}{keras_hub_layer_suffix(n)}"
        for i, weight in enumerate(layer.weights):
            out[weight.path] = take(a, f"{key}/vars/{i}", "keras_hub weights file")
    if a:
        raise PresetError(f"The keras_hub weights file has entries this {family} does not use: {sorted(a)[:5]}.")
    return out


def task_weights_from_keras_hub(arrays, task):
    """keras_hub's image classifier ``task.weights.h5`` (its one Dense layer, plus optimizer state
    that is not needed) → our ``predictions`` layer."""
    from kcookbook.presets.errors import PresetError

    a = {k: v for k, v in arrays.items() if not k.startswith("optimizer/")}
    head = task.get_layer("predictions")
    out = {head.kernel.path: take(a, "layers/dense/vars/0", "keras_hub task weights file"),
           head.bias.path: take(a, "layers/dense/vars/1", "keras_hub task weights file")}
    if a:
        raise PresetError(f"The keras_hub task weights file has entries kcookbook does not map: {sorted(a)[:5]}.")
    return out


def image_classifier_from_keras_hub(task_cls, config, backbone, pooling, **kwargs):
    """A keras_hub image classifier task (pooling → dropout → Dense ``predictions``) as ``task_cls``
    (an ``ImageClassifier``) with ``pooling`` in our names.

    None when ``task_cls`` is another task or ``kwargs`` ask for another head (e.g. num_classes).
    keras_hub stores no class names; its 1000-class presets are ImageNet-1k classifiers, so 1000
    classes get the ImageNet names.
    """
    from kcookbook.tasks.image_classifier import ImageClassifier
    from kcookbook.tasks.imagenet_classes import imagenet_class_names

    if not issubclass(task_cls, ImageClassifier):
        return None
    if any(k in config and config[k] != v for k, v in kwargs.items()):
        return None
    num_classes = config["num_classes"]
    head = {"pooling": pooling, "activation": config.get("activation"),
            "dropout": config.get("dropout") or 0.0,
            "class_names": imagenet_class_names() if num_classes == 1000 else None}
    return task_cls(backbone=backbone, num_classes=num_classes, **{**head, **kwargs})


class ImageClassifierConverter(Converter):
    """Hooks the vision families share: keras_hub's ``…ImageConverter`` classes and its image
    classifier heads have one layout for every family."""

    def image_converter_from_keras_hub(self, config, **kwargs):
        return image_converter_from_keras_hub(config, **kwargs)

    def task_weights_from_keras_hub(self, arrays, task):
        return task_weights_from_keras_hub(arrays, task)
