"""The Backbone contract: a Keras functional model from token ids (or pixels) to features.

A backbone is built from its config alone (``get_config``/``from_config`` round-trip), knows nothing
about the task on top, and loads from any preset handle with ``from_preset``.
"""

import contextlib
import functools
import gc
import inspect
import warnings

import keras

import numpy as np

from kcookbook.components.embeddings import PositionEmbedding, ReversibleEmbedding
from kcookbook.components.mixture_of_experts import MixtureOfExperts
from kcookbook.components.validation import (
    check_divisible,
    check_finite,
    check_float,
    check_float_list,
    check_ids_in_range,
    check_int,
    check_int_list,
    eager_array,
)
from kcookbook.components.preset_entry import export_to_transformers, load_preset
from kcookbook.presets import save_preset

# Bounds of every backbone config field, by name: generous for every real checkpoint (Gemma 3's
# 262,144-token vocabulary, Llama 3.1 405B's 126 layers × 16,384 wide × 128 heads, Llama 4's 10M-token
# context, ResNet-152's 36-block stack) and tight enough that a typo cannot allocate the machine away
# (``vocabulary_size=10**12`` aborts a jax process; ``num_layers=10**6`` builds for minutes).
# Keras's int8 layers that quantise their inputs at each call (``inputs_quantizer``; the token
# embedding's for its reverse projection, the output layer).
_INT8_ACTIVATION_LAYERS = (keras.layers.Dense, keras.layers.EinsumDense, ReversibleEmbedding)
MAX_WIDTH = 65_536
_INT_FIELDS = {  # name: (low, high, None allowed)
    "vocabulary_size": (1, 2**20, False),
    "num_layers": (1, 512, False),
    "num_heads": (1, 1024, False),
    "num_key_value_heads": (1, 1024, True),
    "head_dim": (1, 4096, True),
    "hidden_dim": (1, MAX_WIDTH, False),
    "intermediate_dim": (1, 4 * MAX_WIDTH, False),
    "max_sequence_length": (1, 2**24, False),
    "num_segments": (1, 1024, False),
    "sliding_window": (1, 2**24, True),
    "num_experts": (1, 1024, True),
    "num_experts_per_token": (1, 1024, False),
    "patch_size": (1, 1024, False),
    "stem_filters": (1, MAX_WIDTH, False),
    "head_filters": (1, MAX_WIDTH, False),
    "num_decoder_layers": (1, 512, True),
    "relative_attention_num_buckets": (4, 4096, False),
    "relative_attention_max_distance": (2, 2**24, False),
    "decoder_start_token_id": (0, 2**20, False),
    "projection_dim": (1, MAX_WIDTH, False),
    "end_token_id": (0, 2**20, True),
    "max_channels": (8, MAX_WIDTH, False),
    "layers_per_block": (1, 64, False),
    "latent_channels": (1, 1024, False),
    "image_channels": (1, 1024, False),
}
_INT_LIST_FIELDS = {  # name: (low, high) of each entry
    "stackwise_num_filters": (1, MAX_WIDTH),
    "stackwise_num_blocks": (1, 1000),
    "stackwise_num_strides": (1, 16),
    "stackwise_strides": (1, 16),
    "stackwise_kernel_sizes": (1, 31),
    "stackwise_output_filters": (1, MAX_WIDTH),
    "stem_kernel_sizes": (1, 31),
    "blocks_per_level": (0, 64),
}
_FLOAT_FIELDS = {  # name: (low, high, low open, high open)
    "dropout": (0.0, 1.0, False, True),
    "drop_connect_rate": (0.0, 1.0, False, True),
    "layer_norm_epsilon": (0.0, 1.0, True, False),
    "batch_norm_epsilon": (0.0, 1.0, True, False),
    "batch_norm_momentum": (0.0, 1.0, False, False),
    "rope_max_wavelength": (0.0, 1e12, True, False),
    "rope_scaling_factor": (0.0, 1e4, True, False),
    "router_aux_loss_coefficient": (0.0, 1e3, False, False),
    "width_coefficient": (0.0, 16.0, True, False),
    "depth_coefficient": (0.0, 16.0, True, False),
    "scaling_factor": (0.0, 1e4, True, False),
}
_FLOAT_LIST_FIELDS = {
    "stackwise_expansion_ratios": (1.0, 64.0),
    "stackwise_squeeze_excite_ratios": (0.0, 1.0),
}
_BOOL_FIELDS = ("norm_unit_offset", "tie_word_embeddings", "scale_embeddings", "attention_bias",
                "preactivation", "avg_pool_shortcut", "use_class_token")
_BOOL_FIELDS += ("use_gated_activation",)
# Largest embedding table (vocabulary_size × hidden_dim entries): 4× Llama 3.1 405B's.
MAX_EMBEDDING_ENTRIES = 2**33


def check_backbone_config(owner, arguments):
    """Refuse a backbone config field of the wrong type, sign or size before anything is built.

    ``arguments`` maps constructor argument names to values (a backbone passes ``locals()`` first
    thing in ``__init__``); fields named in the tables above are checked, with the rules that tie
    fields together (heads divide the width, an image holds whole patches…). The ``ValueError``
    names ``owner``, the field, its value and the allowed range.

    >>> check_backbone_config("BertBackbone", {"num_layers": 0})
    Traceback (most recent call last):
    ...
    ValueError: BertBackbone: num_layers must be an integer in [1, 512], got 0.
    """
    owner = owner if isinstance(owner, str) else type(owner).__name__
    for name, (low, high, allow_none) in _INT_FIELDS.items():
        if name in arguments and not (name == "stem_filters" and isinstance(arguments[name], (list, tuple))):
            check_int(name, arguments[name], low, high, owner, allow_none)
    for name, (low, high) in _INT_LIST_FIELDS.items():
        if name in arguments:
            check_int_list(name, arguments[name], low, high, owner)
    if isinstance(arguments.get("stem_filters"), (list, tuple)):
        check_int_list("stem_filters", arguments["stem_filters"], 1, MAX_WIDTH, owner)
    for name, (low, high, low_open, high_open) in _FLOAT_FIELDS.items():
        if name in arguments:
            check_float(name, arguments[name], low, high, owner, low_open, high_open)
    for name, (low, high) in _FLOAT_LIST_FIELDS.items():
        if arguments.get(name) is not None:
            check_float_list(name, arguments[name], low, high, owner)
    for name in _BOOL_FIELDS:
        if name in arguments and not isinstance(arguments[name], (bool, np.bool_)):
            raise ValueError(f"{owner}: {name} must be True or False, got {arguments[name]!r:.60} "
                             f"({type(arguments[name]).__name__}).")
    _check_related_fields(owner, arguments)


def _check_related_fields(owner, arguments):
    get = arguments.get
    if get("hidden_dim") is not None and get("num_heads") is not None and get("head_dim") is None:
        check_divisible("hidden_dim", get("hidden_dim"), "num_heads", get("num_heads"), owner)
    if get("num_key_value_heads") is not None and get("num_heads") is not None:
        check_divisible("num_heads", get("num_heads"), "num_key_value_heads", get("num_key_value_heads"),
                        owner)
    if get("num_experts") is not None and get("num_experts_per_token", 0) > get("num_experts"):
        raise ValueError(f"{owner}: num_experts_per_token={get('num_experts_per_token')} must be at most "
                         f"num_experts={get('num_experts')}.")
    if get("vocabulary_size") is not None and get("hidden_dim") is not None and \
            get("vocabulary_size") * get("hidden_dim") > MAX_EMBEDDING_ENTRIES:
        raise ValueError(f"{owner}: vocabulary_size × hidden_dim = {get('vocabulary_size')} × "
                         f"{get('hidden_dim')} is an embedding table of more than {MAX_EMBEDDING_ENTRIES:.3g} "
                         "entries; check both fields.")
    if "image_shape" in arguments:
        _check_image_shape(owner, get("image_shape"))


def _check_image_shape(owner, image_shape):
    """(height, width, channels); height and width may be None (any resolution)."""
    if not (isinstance(image_shape, (list, tuple)) and len(image_shape) == 3):
        raise ValueError(f"{owner}: image_shape must be (height, width, channels), got {image_shape!r}.")
    for i, size in enumerate(image_shape):
        if size is not None or i == 2:
            check_int(f"image_shape[{i}]", size, 1, 16384 if i < 2 else 1024, owner)


@contextlib.contextmanager
def default_dtype_policy(dtype):
    """Keras's default dtype policy is ``dtype`` inside (a ``DTypePolicyMap``'s default policy; None
    changes nothing): layers created without a ``dtype`` of their own take it."""
    if dtype is None:
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(_model_policy(dtype))
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _model_policy(dtype):
    """The policy of a whole model from a ``dtype`` argument: a ``DTypePolicyMap`` (the per-layer
    policies of a quantised preset) gives its default policy."""
    policy = keras.dtype_policies.get(dtype)
    return policy.default_policy if isinstance(policy, keras.dtype_policies.DTypePolicyMap) else policy


def layers_in_backbone_dtype(init):
    """Decorates a backbone's ``__init__`` whose graph is made of plain Keras layers built by helper
    functions (convolutions, batch norms, activations): every layer created without a ``dtype`` of its
    own takes the constructor's ``dtype`` (``"bfloat16"``…) instead of Keras's global default."""
    @functools.wraps(init)
    def wrapper(self, *args, dtype=None, **kwargs):
        with default_dtype_policy(dtype):
            init(self, *args, dtype=dtype, **kwargs)
    wrapper.__signature__ = inspect.signature(init)  # Keras reads it to record the arguments
    return wrapper


class Backbone(keras.Model):
    """Base class of every backbone.

    Subclasses build a functional graph in ``__init__`` and call
    ``super().__init__(inputs=..., outputs=..., name=..., dtype=...)``, then record the constructor
    arguments that ``get_config`` returns. ``dtype`` (``"bfloat16"``, ``"mixed_bfloat16"``…) is the
    policy of every layer: a subclass passes it to the layers it creates (or builds them under
    ``layers_in_backbone_dtype``); this class records it, so ``get_config`` and a saved preset carry it.

    Text backbones set ``vocabulary_size`` (the rows of their token embedding) and
    ``max_sequence_length``; both stay None on backbones without them (vision).
    """

    vocabulary_size = None
    max_sequence_length = None

    def __init__(self, *args, dtype=None, int8_activation_quantizers=None, **kwargs):
        super().__init__(*args, **kwargs)  # a functional model ignores its own dtype: set it below
        if dtype is not None:
            self.dtype_policy = _model_policy(dtype)
        if int8_activation_quantizers:
            self._restore_int8_activation_quantizers(int8_activation_quantizers)

    @property
    def position_table_length(self):
        """Rows of the learned position table (BERT, GPT-2): the longest sequence the model can
        read at all. None where positions are computed (rotary: Llama) or absent (vision)."""
        tables = [layer for layer in self._flatten_layers(include_self=False)
                  if isinstance(layer, PositionEmbedding)]
        return min(table.sequence_length for table in tables) if tables else None

    def check_inputs(self, inputs):
        """Refuse, in numpy and before any compiled function runs, inputs the graph would misread.

        ``inputs`` are this backbone's inputs as arrays (a dict for text backbones). Checked: every
        input is present with the rank and fixed sizes of its ``keras.Input``; integer inputs hold
        whole numbers, float inputs finite values; ``token_ids`` lie in ``[0, vocabulary_size)``
        (an id past the table is NaN on jax, an IndexError on torch); ``padding_mask`` holds 0/1;
        sequences fit the position table. Symbolic tensors (inside ``tf.data``) are not checked.
        """
        specs = self.input if isinstance(self.input, dict) else {"images" if len(self.input.shape) == 4
                                                                  else "inputs": self.input}
        if not isinstance(inputs, dict):
            if len(specs) != 1:
                raise ValueError(f"{self.name} takes a dict of arrays with keys {sorted(specs)}, got "
                                 f"{type(inputs).__name__}.")
            inputs = {next(iter(specs)): inputs}
        missing = sorted(set(specs) - set(inputs))
        if missing:
            raise ValueError(f"{self.name} needs inputs {sorted(specs)}; missing {missing}.")
        for name, spec in specs.items():
            _check_input(self, name, inputs[name], spec)

    def get_config(self):
        config = {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self._dtype_policy_with_quantized_layers()),
        }
        quantizers = self._int8_activation_quantizers()
        if quantizers:
            config["int8_activation_quantizers"] = quantizers
        return config

    def quantize(self, mode=None, config=None, filters=None, **kwargs):
        """Keras's ``Model.quantize`` (``"int8"``: projections, and token embeddings with their tied or
        untied output table) plus the expert weights of mixture-of-experts layers (per expert and
        output channel), which Keras skips because they hold a sublayer, the router. Routers stay
        float on purpose (see ``components.mixture_of_experts.Router``); Keras warns for each layer
        type without a quantised form in ``mode``.

        Keras's default int8 also quantises each token's activations (W8A8). Weight-only int8 keeps
        activations float and loses less (SmolLM2-135M perplexity +1% against +6%,
        ``benchmarks/README.md``); it saves and reloads as weight-only:

        >>> backbone.quantize("int8", config=keras.quantizers.Int8QuantizationConfig(
        ...     activation_quantizer=None))  # doctest: +SKIP

        Decoder backbones can first move activation outliers into the weights with
        ``smooth_activations(calibration_ids)`` (SmoothQuant), which keeps W8A8's int8 products and
        loses less (SmolLM2-135M: +2.7 % perplexity; ``DecoderBackbone.smooth_activations``).

        Speed on a CPU (``benchmarks/README.md``, SmolLM2-135M): decoding's few-row products run on
        kcookbook's C++ int8 kernel on jax and torch (``kcookbook.kernels.int8_products``, compiled
        on first use). On jax W8A8 and weight-only int8 generate 2.3–2.7× float32's tokens/s at batch
        1 (batch 8: 1.5× and 1.1×); on torch W8A8 1.4–1.7× (``torch._int_mm`` beyond 4 rows) and
        weight-only 1.4–2.2×. ``filters`` leaves layers float, e.g. the token table and the LM head
        tied to it:

        >>> backbone.quantize("int8", filters=lambda layer: not isinstance(
        ...     layer, keras.layers.Embedding))  # doctest: +SKIP

        Keras runs a full ``gc.collect()`` after deleting each float kernel; with the heap frozen
        (``gc.freeze``) each of those scans only new objects (SmolLM2-135M's 121 layers on torch:
        minutes to seconds). Objects alive before the call are collected again after it."""
        gc.freeze()
        try:
            self._quantize_layers(mode, config=config, filters=filters, **kwargs)
        finally:
            gc.unfreeze()

    def _quantize_layers(self, mode, config, filters, **kwargs):
        super().quantize(mode, config=config, filters=filters, **kwargs)
        from keras.src.quantizers.utils import should_quantize_layer  # the rule Model.quantize applies

        experts = [layer for layer in self._flatten_layers(include_self=False)
                   if isinstance(layer, MixtureOfExperts) and should_quantize_layer(layer, filters)]
        for layer in experts:
            try:
                layer.quantize(mode, config=config)
            except NotImplementedError as error:
                warnings.warn(str(error))
        if experts:  # what Model.quantize does after changing variables (torch re-tracks them)
            self.train_function = self.test_function = self.predict_function = None
            self._post_quantize(mode)

    def _dtype_policy_with_quantized_layers(self):
        """The backbone's dtype policy, or after ``quantize`` a ``DTypePolicyMap`` naming each
        quantised layer's policy by path (as keras_hub saves it): built from that config, those
        layers create their int8 variables, so a quantised preset loads back quantised."""
        quantized = {layer.path: layer.dtype_policy for layer in self._flatten_layers(include_self=False)
                     if layer.quantization_mode is not None}
        if not quantized:
            return self.dtype_policy
        policy_map = keras.dtype_policies.DTypePolicyMap(default_policy=self.dtype_policy.name)
        for path, policy in quantized.items():
            policy_map[path] = policy
        return policy_map

    def _int8_activation_quantizers(self):
        """``{layer path: serialised quantizer or None}`` for the int8 ``Dense``/``EinsumDense`` and
        ``ReversibleEmbedding`` (output layer) layers whose activation quantizer is not Keras's
        default one (per-token absmax). A layer rebuilt from the config alone gets the default
        (``Dense._int8_build``): this is what it needs to compute as it was quantised, e.g. ``None``
        for weight-only int8."""
        default = keras.saving.serialize_keras_object(keras.quantizers.AbsMaxQuantizer())
        quantizers = {}
        for layer in self._flatten_layers(include_self=False):
            if isinstance(layer, _INT8_ACTIVATION_LAYERS) and layer.quantization_mode == "int8":
                quantizer = keras.saving.serialize_keras_object(layer.inputs_quantizer)
                if quantizer != default:
                    quantizers[layer.path] = quantizer
        return quantizers

    def _restore_int8_activation_quantizers(self, quantizers):
        if not isinstance(quantizers, dict):
            raise ValueError(f"{self.name}: int8_activation_quantizers must map layer paths to "
                             f"quantizers, got {type(quantizers).__name__}.")
        layers = {layer.path: layer for layer in self._flatten_layers(include_self=False)
                  if isinstance(layer, _INT8_ACTIVATION_LAYERS) and layer.quantization_mode == "int8"}
        unknown = sorted(set(quantizers) - set(layers))
        if unknown:
            raise ValueError(f"{self.name}: int8_activation_quantizers names {unknown[:3]}, which are not "
                             "int8 Dense/EinsumDense/ReversibleEmbedding layers of this backbone (known e.g. "
                             f"{sorted(layers)[:3]}). The config was edited or written for another model.")
        for path, quantizer in quantizers.items():
            quantizer = keras.saving.deserialize_keras_object(quantizer)
            layers[path].inputs_quantizer = quantizer  # what Dense._int8_build sets from a config
            layers[path].quantization_config = keras.quantizers.Int8QuantizationConfig(
                activation_quantizer=quantizer)

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)

    @classmethod
    def from_preset(cls, handle, load_weights=True, **kwargs):
        """Build the backbone of a preset: a built-in name, a directory, ``kaggle://…`` or ``hf://…``.

        >>> backbone = Backbone.from_preset("all_minilm_l6_v2")  # doctest: +SKIP
        >>> sorted(backbone.input)  # doctest: +SKIP
        ['padding_mask', 'segment_ids', 'token_ids']

        Args:
            handle: where the preset is.
            load_weights: False builds the architecture with random weights.
            **kwargs: override config entries (e.g. ``dropout=0.0``, ``dtype="bfloat16"``).
        """
        backbone = load_preset(handle).load_backbone(load_weights=load_weights, **kwargs)
        if not isinstance(backbone, cls):
            raise TypeError(
                f"Preset {handle!r} holds a {type(backbone).__name__}, not a {cls.__name__}. "
                f"Use Backbone.from_preset or {type(backbone).__name__}.from_preset."
            )
        return backbone

    def first_token_outputs(self, inputs):
        """Symbolic outputs for a task that reads only the first token (``[CLS]``), computed without
        the work no other token needs; None where a backbone has no such path (the default), and
        tasks then call the backbone. :class:`BertBackbone` returns ``first_token_output`` (=
        ``sequence_output[:, 0]``) and ``pooled_output``."""
        return None

    def save_to_preset(self, directory, metadata=None):
        """Write ``config.json``, ``model.weights.h5`` and ``metadata.json`` (KerasHub layout), atomically."""
        save_preset(directory, backbone=self, metadata=metadata)

    def export_to_transformers(self, directory, dtype="float32"):
        """Write a Hugging Face transformers folder (``config.json``, ``model.safetensors``) that
        ``transformers.AutoModel.from_pretrained(directory)`` loads with no kcookbook code (decoder
        families as ``…ForCausalLM``). LoRA updates are folded in and int8 kernels dequantised;
        ``dtype`` is ``"float32"``, ``"float16"`` or ``"bfloat16"``."""
        export_to_transformers(self, directory, dtype=dtype)

    # ----- LoRA (see kcookbook.components.lora) -----
    def enable_lora(self, rank, target_names=None, lora_alpha=None):
        """Add rank-``rank`` LoRA weights to the attention projections and freeze everything else.

        ``target_names`` are layer names; the default adapts the query/key/value projections
        (``"qkv"`` in kcookbook's attention). Afterwards only the LoRA matrices are trainable.

        >>> backbone.enable_lora(4)  # doctest: +SKIP
        >>> backbone.fit(...)  # doctest: +SKIP
        >>> backbone.save_lora_weights("adapter.lora.h5")  # doctest: +SKIP
        """
        from kcookbook.components import lora

        return lora.enable_lora(self, rank, target_names or lora.DEFAULT_LORA_TARGETS, lora_alpha)

    def save_lora_weights(self, path):
        """Write only the LoRA matrices (a few hundred KB for a small model) to ``path`` (.h5)."""
        from kcookbook.components import lora

        lora.save_lora_weights(self, path)

    def load_lora_weights(self, path):
        """Load LoRA matrices saved by ``save_lora_weights``; enables LoRA on the same layers if needed."""
        from kcookbook.components import lora

        lora.load_lora_weights(self, path)

    def merge_lora(self):
        """Fold the LoRA updates into the kernels and remove the LoRA weights (same outputs)."""
        from kcookbook.components import lora

        lora.merge_lora(self)


def _check_input(backbone, name, value, spec):
    array = eager_array(value)
    if array is None:
        return
    expected = tuple(spec.shape)
    if array.ndim != len(expected) or any(e is not None and e != a for e, a in zip(expected, array.shape)):
        shape = "(" + ", ".join("batch" if i == 0 else str(e) if e is not None else "any"
                                for i, e in enumerate(expected)) + ")"
        raise ValueError(f"{backbone.name} input {name!r} has shape {array.shape}; it takes {shape}.")
    integer_spec = "int" in str(spec.dtype)
    if integer_spec and not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        if array.dtype == object or not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"{backbone.name} input {name!r} must hold integers, got dtype {array.dtype}.")
        check_finite(f"{backbone.name} input {name!r}", array)
        if (array != np.round(array)).any():
            raise ValueError(f"{backbone.name} input {name!r} must hold whole numbers, got "
                             f"{array[array != np.round(array)].ravel()[0]}.")
    elif not integer_spec:
        check_finite(f"{backbone.name} input {name!r}", array)
    if name == "token_ids" and backbone.vocabulary_size is not None:
        check_ids_in_range(f"{backbone.name} input 'token_ids'", array, backbone.vocabulary_size,
                           "vocabulary_size", " Token ids index the embedding table; tokenize with the "
                           "backbone's own tokenizer.")
    if name == "padding_mask" and array.size and not np.isin(array, (0, 1)).all():
        raise ValueError(f"{backbone.name} input 'padding_mask' must hold 0 (padding) or 1 (token), got "
                         f"{array[~np.isin(array, (0, 1))].ravel()[0]}.")
    limit = backbone.position_table_length
    if limit is not None and array.ndim == 2 and name in ("token_ids", "padding_mask") and \
            array.shape[1] > limit:
        raise ValueError(f"{backbone.name} input {name!r} has {array.shape[1]} positions; the model has "
                         f"{limit} (max_sequence_length). Truncate the sequences to {limit}.")
