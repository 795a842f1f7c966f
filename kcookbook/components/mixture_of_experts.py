"""Mixture-of-experts feed-forward (Shazeer et al., 2017; Fedus et al., 2021): a router sends each
token to its top-k experts, each a gated feed-forward network; their outputs are mixed by the
router's renormalised probabilities.

Training adds the load-balancing auxiliary loss of Switch Transformer,
``num_experts · Σ_e share_of_tokens_routed_to(e) · mean_router_probability(e)``, times
``aux_loss_coefficient`` (``top_k`` when every expert gets the same share, more when routing
collapses onto a few experts).

With many tokens (training, prefill) every expert runs on every token and the unselected ones are
weighted by zero: simple and compiler-friendly, at ``num_experts / top_k`` times the FLOPs of a
sparse dispatch. With few tokens (``tokens × top_k < num_experts``, e.g. a decoding step) each token
gathers its ``top_k`` experts' weights and runs only those: a decoding step reads ``top_k /
num_experts`` of the expert weights (a quarter for Mixtral's top-2 of 8). Both give the same outputs.

``parameter_counts(model)`` gives a model's total parameters and those active per token (the router and
``top_k`` of the ``num_experts`` experts of each such layer).

``quantize("int8")`` stores each expert's two matrices as int8 with one scale per expert and output
channel (the router stays float: see ``Router``); the experts a call uses are dequantised on the fly
(a decoding step reads only its ``top_k`` experts' int8 weights), and activations stay float.

To see where tokens go, call a model eagerly inside ``record_routing()``: every
``MixtureOfExperts`` layer appends the experts it chose. ``expert_load`` does that for a whole
model and returns, per layer, the share of token→expert assignments each expert received.

    >>> moe = MixtureOfExperts(num_experts=4, top_k=2, intermediate_dim=16)
    >>> tuple(moe(ops.ones((2, 3, 8))).shape)
    (2, 3, 8)
    >>> with record_routing() as records:
    ...     _ = moe(np.random.default_rng(0).normal(size=(2, 3, 8)))
    >>> records[moe][0].shape  # (batch, length, top_k) expert ids
    (2, 3, 2)
"""

import collections
import contextlib
import contextvars

import keras
import numpy as np
from keras import ops

from kcookbook.components.activations import get_activation
from kcookbook.components.torch_speedups import KERAS_CALLS


# {layer: [selected expert ids, one array per call]} while record_routing() is active.
_ROUTING_RECORDS = contextvars.ContextVar("kcookbook_routing_records", default=None)


@contextlib.contextmanager
def record_routing():
    """Collect the experts each ``MixtureOfExperts`` layer picks while models are called eagerly.

    Yields a dict ``{layer: [array (batch, length, top_k) of expert ids, one per call]}`` in the
    order the layers ran (a backbone's blocks in order). Inside a compiled function (``fit``,
    ``predict``, ``generate``) nothing is recorded: call the model directly.
    """
    records = {}
    token = _ROUTING_RECORDS.set(records)
    try:
        yield records
    finally:
        _ROUTING_RECORDS.reset(token)


def expert_load(model, inputs):
    """Share of token→expert assignments per expert in each mixture-of-experts layer.

    Runs ``model(inputs)`` eagerly (inference) and counts, for every ``MixtureOfExperts`` layer, how
    many of the ``tokens × top_k`` assignments went to each expert; positions where
    ``inputs["padding_mask"]`` is 0 are not counted. Returns an array ``(layers, experts)`` whose
    rows sum to 1; a perfectly balanced router gives ``1 / num_experts`` everywhere.
    """
    mask = inputs.get("padding_mask") if isinstance(inputs, dict) else None
    with record_routing() as records:
        model(inputs, training=False)
    if not records:
        raise ValueError(f"{getattr(model, 'name', model)!r} has no MixtureOfExperts layer (or ran in a "
                         "compiled function, where routing is not recorded): nothing to count.")
    loads = []
    for layer, calls in records.items():
        counts = np.zeros(layer.num_experts)
        for selected in calls:
            keep = np.ones(selected.shape[:-1], bool) if mask is None else np.asarray(mask).astype(bool)
            counts += np.bincount(selected[keep].reshape(-1), minlength=layer.num_experts)
        loads.append(counts / counts.sum())
    return np.stack(loads)


ParameterCounts = collections.namedtuple("ParameterCounts", ["total", "active"])


def parameter_counts(model):
    """``(total, active)`` parameters of a built model or layer: ``active`` counts, in every
    ``MixtureOfExperts`` inside it, the router and only the ``top_k`` of ``num_experts`` experts one
    token goes through. A model without experts has ``active == total``.

        >>> total, active = parameter_counts(backbone)  # doctest: +SKIP
    """
    total = model.count_params()
    layers = model._flatten_layers(include_self=True, recursive=True)
    inactive = sum(layer.count_params() - layer.count_params(active=True)
                   for layer in layers if isinstance(layer, MixtureOfExperts))
    return ParameterCounts(total, total - inactive)


def load_balancing_loss(router_logits, top_k):
    """Switch Transformer's auxiliary loss from ``(tokens, num_experts)`` router logits."""
    num_experts = router_logits.shape[-1]
    probabilities = ops.softmax(ops.cast(router_logits, "float32"), axis=-1)
    _, selected = ops.top_k(probabilities, top_k)
    routed = ops.sum(ops.one_hot(selected, num_experts), axis=1)  # (tokens, experts), 0/1
    return num_experts * ops.sum(ops.mean(routed, axis=0) * ops.mean(probabilities, axis=0))


@keras.saving.register_keras_serializable(package="kcookbook")
class Router(keras.layers.Dense):
    """The router's projection: a ``Dense`` that stays in float when the model is quantised.

    Which ``top_k`` experts a token goes to is a discontinuous choice: int8 rounding of a
    ``(hidden, experts)`` matrix (a few thousand numbers) flips it for tokens near a tie and changes the
    output far more than the same rounding anywhere else, to save almost nothing. llama.cpp keeps it
    in float for the same reason."""

    def quantize(self, mode=None, **kwargs):
        return None


def float_policy(policy):
    """``policy`` without its quantisation (``int8_from_bfloat16`` → ``bfloat16``)."""
    if policy.quantization_mode is None:
        return policy
    return keras.dtype_policies.get(policy.name.split("_from_", 1)[1])


EXPERT_WEIGHTS = ("expert_gate_up", "expert_output")


class MixtureOfExperts(keras.layers.Layer):
    """Top-k routed gated feed-forward experts.

    Args:
        num_experts: experts per layer.
        top_k: experts each token is sent to.
        intermediate_dim: hidden width of each expert.
        activation: the experts' gate activation (``"silu"``: SwiGLU experts).
        aux_loss_coefficient: weight of the load-balancing loss added in training (0 disables it).
        kernel_initializer: initializer of the router and the experts.

    Weights: ``router/kernel (hidden, experts)``, ``expert_gate_up (experts, hidden, 2·intermediate)``
    (gate columns first), ``expert_output (experts, intermediate, hidden)``; once int8, each of the
    two also has ``…_scale (experts, 1, columns)`` (``float = int8 / scale``, Keras's convention).
    """

    def __init__(self, num_experts, top_k, intermediate_dim, activation="silu",
                 aux_loss_coefficient=0.0, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        if not 0 < top_k <= num_experts:
            raise ValueError(f"top_k={top_k} must be between 1 and num_experts={num_experts}.")
        self.num_experts = num_experts
        self.top_k = top_k
        self.intermediate_dim = intermediate_dim
        self.activation = activation
        self.aux_loss_coefficient = aux_loss_coefficient
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        hidden = input_shape[-1]
        self.router = Router(
            self.num_experts, use_bias=False, kernel_initializer=self.kernel_initializer,
            dtype=float_policy(self.dtype_policy), name="router")
        self.router.build(input_shape)
        self._activation_fn = get_activation(self.activation)
        if self.quantization_mode is not None:  # a quantised preset loads into int8 variables
            self.quantized_build(input_shape, self.quantization_mode)
            return
        for name, shape in self._expert_shapes(hidden).items():
            setattr(self, name, self.add_weight(name=name, shape=shape, initializer=self.kernel_initializer))

    def _expert_shapes(self, hidden):
        return {"expert_gate_up": (self.num_experts, hidden, 2 * self.intermediate_dim),
                "expert_output": (self.num_experts, self.intermediate_dim, hidden)}

    def quantized_build(self, input_shape, mode, config=None):
        if mode != "int8":
            raise NotImplementedError(f"{type(self).__name__} {self.name!r} quantises to 'int8', not {mode!r}.")
        for name, shape in self._expert_shapes(input_shape[-1]).items():
            setattr(self, name, self.add_weight(name=name, shape=shape, initializer="zeros", dtype="int8",
                                                trainable=False))
            setattr(self, f"{name}_scale", self.add_weight(name=f"{name}_scale", shape=(shape[0], 1, shape[2]),
                                                           initializer="ones", trainable=False))
        self._is_quantized = True

    def quantize(self, mode=None, type_check=True, config=None):
        """int8 expert weights, one scale per expert and output column (absmax over the input
        axis); other modes raise NotImplementedError naming the layer. ``Model.quantize`` skips
        layers with sublayers (this one holds its router): ``Backbone.quantize`` calls it."""
        if mode != "int8":
            raise NotImplementedError(f"{type(self).__name__} {self.name!r} quantises to 'int8', not {mode!r}.")
        self._check_quantize_args(mode, self.compute_dtype)
        hidden = self.expert_gate_up.shape[1]
        quantized = {name: keras.quantizers.abs_max_quantize(getattr(self, name), axis=1, to_numpy=True)
                     for name in EXPERT_WEIGHTS}
        for name in EXPERT_WEIGHTS:
            delattr(self, name)  # untracks the float variable
        self.quantized_build((None, hidden), mode)
        for name, (values, scale) in quantized.items():
            getattr(self, name).assign(values)
            getattr(self, f"{name}_scale").assign(scale)
        self.dtype_policy = keras.dtype_policies.get(f"{mode}_from_{self.dtype_policy.name}")

    def expert_kernel(self, name, dtype="float32", selected=None):
        """The experts' ``name`` matrices (``"expert_gate_up"``, ``"expert_output"``) in ``dtype``,
        dequantised when int8; with ``selected`` (expert ids), only those experts', gathered."""
        kernel = getattr(self, name)
        if selected is not None:
            kernel = ops.take(kernel, selected, axis=0)
        kernel = ops.cast(kernel, dtype)
        if self.quantization_mode is None:
            return kernel
        scale = getattr(self, f"{name}_scale")
        if selected is not None:
            scale = ops.take(scale, selected, axis=0)
        return kernel / ops.cast(scale, dtype)

    def count_params(self, active=False):
        """Parameters of the layer; ``active=True``: those one token goes through (the router and
        ``top_k`` of the ``num_experts`` experts)."""
        total = super().count_params()
        if not active:
            return total
        experts = int(np.prod(self.expert_gate_up.shape)) + int(np.prod(self.expert_output.shape))
        return total - experts + experts * self.top_k // self.num_experts

    def _int8_call(self, x, training=None, calls=KERAS_CALLS):
        """What Keras calls instead of ``call`` once the layer is int8: ``call`` dequantises."""
        return self.call(x, training=training, calls=calls)

    def call(self, x, training=None, calls=KERAS_CALLS):
        router_logits = calls(self.router, x)  # (batch, length, experts)
        probabilities = ops.softmax(ops.cast(router_logits, "float32"), axis=-1)
        top_probabilities, selected = ops.top_k(probabilities, self.top_k)
        top_probabilities = top_probabilities / ops.sum(top_probabilities, axis=-1, keepdims=True)
        records = _ROUTING_RECORDS.get()
        if records is not None:  # inside record_routing(): keep the choices (eager calls only)
            records.setdefault(self, []).append(ops.convert_to_numpy(selected))
        if self._few_tokens(x):
            out = self._selected_experts(x, selected, top_probabilities)
        else:
            # (batch, length, experts): the renormalised weight of each selected expert, 0 elsewhere.
            weights = ops.sum(ops.one_hot(selected, self.num_experts) * top_probabilities[..., None],
                              axis=-2)
            gate_up = ops.einsum("blh,ehi->blei", x, self.expert_kernel("expert_gate_up", x.dtype))
            gate, up = ops.split(gate_up, 2, axis=-1)
            expert_outputs = ops.einsum("blei,eih->bleh", self._activation_fn(gate) * up,
                                        self.expert_kernel("expert_output", x.dtype))
            out = ops.einsum("bleh,ble->blh", expert_outputs, ops.cast(weights, x.dtype))
        if training and self.aux_loss_coefficient:
            flat_logits = ops.reshape(router_logits, (-1, self.num_experts))
            self.add_loss(self.aux_loss_coefficient * load_balancing_loss(flat_logits, self.top_k))
        return out

    def _few_tokens(self, x):
        """True when gathering each token's experts reads less than running all of them (static
        shapes only: a traced batch dimension of unknown size takes the dense path)."""
        batch, length = x.shape[0], x.shape[1]
        return (isinstance(batch, int) and isinstance(length, int)
                and batch * length * self.top_k < self.num_experts)

    def _selected_experts(self, x, selected, top_probabilities):
        """Each token through its own ``top_k`` experts only (their weights gathered)."""
        gate_up_kernels = self.expert_kernel("expert_gate_up", x.dtype, selected)
        gate, up = ops.split(ops.einsum("blh,blkhi->blki", x, gate_up_kernels), 2, axis=-1)
        output_kernels = self.expert_kernel("expert_output", x.dtype, selected)
        expert_outputs = ops.einsum("blki,blkih->blkh", self._activation_fn(gate) * up,
                                    output_kernels)
        return ops.einsum("blkh,blk->blh", expert_outputs, ops.cast(top_probabilities, x.dtype))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_experts": self.num_experts, "top_k": self.top_k,
            "intermediate_dim": self.intermediate_dim, "activation": self.activation,
            "aux_loss_coefficient": self.aux_loss_coefficient,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        })
        return config
