"""The speed paths of eager (torch) decoding, in one module, passed down explicitly.

On jax and TensorFlow the generation loop is compiled whole (XLA): Keras' per-call bookkeeping is
paid once, while tracing. On torch the loop runs eagerly, and when it decodes one token at a time
Keras' per-call and per-op dispatch costs more than the arithmetic. Three paths remove most of it.
A task picks them by the backend's name (``keras.config.backend()``) where its loop starts and
passes them down as arguments; nothing is switched by a global:

* ``LayerCalls`` — how a component calls its sublayers. ``KERAS_CALLS`` is ``layer(x)`` (Keras'
  ``__call__``: input conversion, dtype autocasting, masks, name scopes, training-flag resolution
  and, on torch, ``nn.Module`` hooks); ``DIRECT_CALLS`` calls ``layer.call(x)`` on built layers.
  ``layer_calls()`` gives ``DIRECT_CALLS`` on torch. Direct calls are for inference only.
  ``INT8_KERNEL_CALLS`` (jax's inference loops) goes through Keras but runs int8 ``Dense`` layers'
  few-row products on kcookbook's CPU kernel (``kcookbook.kernels.int8_products``).
* ``write_key_value_in_place`` — new keys and values go into the cache with ``index_copy_``
  instead of a ``slice_update`` that copies the whole cache (``CausalSelfAttention.write_key_value``
  picks it by the backend's name); ``write_in_place`` is the same write along any axis
  (``EncoderDecoderAttention``'s heads-first caches).
* ``contiguous`` — a permuted view laid out in its axes' order once (cached cross-attention keys),
  so that torch's products do not copy it again at every step.
* ``compiled_block_step(run_block)`` — one ``torch.compile``d decoder block for every layer of a
  one-token step (``lm.jit_compile = True``).

* ``fused_attention_heads_first`` — torch's fused scaled-dot-product attention for the
  encoder–decoder attention (its caches are heads-first) and the decoders' cached grouped-query
  attention (strided views of the cache, no copies of grouped heads) instead of full-size score
  tensors.
* ``table_product`` — a tied output layer's product, on the transposed copy below.
* ``transposed_table`` — a tied output layer's ``(vocabulary, hidden)`` table transposed once into
  a ``(hidden, vocabulary)`` copy for inference: torch's CPU matrix-vector product reads the
  transposed view of the table at about half the speed of the copy (t5-small's 32,128 × 512
  table: ~12 vs ~6 ms per one-row product on this machine's AMD EPYC with MKL), and that product
  is the largest of a one-token step.

``inference_product`` is a product by the fastest CPU kernel for its rows (one row split over two
of torch's threads, more rows oneDNN's linear; ``dense_on_torch`` and ``table_product`` use it).

``int8_dense_on_torch`` runs an int8 ``Dense`` with Keras' numerics (W8A8 or weight-only): a few
rows in one call of kcookbook's int8 kernel, more W8A8 rows with torch's int8 product
(``DIRECT_CALLS`` takes it for int8 ``keras.layers.Dense`` layers on torch).

``dense_on_torch`` and ``fused_rms_normalization`` run a dense layer and an RMS norm as torch ops
(``DIRECT_CALLS`` takes the first for ``keras.layers.Dense``; ``RMSNormalization`` the second on torch).
``fused_group_norm_channels_last`` is a channels-last group norm in torch's one ``group_norm`` kernel
(the diffusion blocks' ``GroupNormalization`` on torch). ``conv2d_channels_last`` is a channels-last
convolution without Keras' copies of the input and kernel (``components.convolution.Conv2D`` on torch).

``reshape``, ``shape`` and ``transpose`` are the Keras ops without their dispatch on torch;
``dynamic_slice`` and ``dynamic_slice_update`` are ``ops.slice``/``ops.slice_update`` at a loop's
(tensor) position without Keras' slow path for tensor indices on torch. ``variable_tensor`` reads a
variable's tensor without the ``value`` property's checks; ``standard_dtype`` remembers
``standardize_dtype``.

``cast_if_needed`` skips a no-op cast (a Keras op's dispatch, ~20 µs on torch) on every backend.

    >>> dense = keras.layers.Dense(2)
    >>> x = ops.ones((1, 3))
    >>> bool(ops.all(DIRECT_CALLS(dense, x) == KERAS_CALLS(dense, x)))
    True
"""

import warnings

import keras
from keras import ops

from kcookbook.kernels.int8_products import MAX_INT8_ROWS, int8_dense, int8_product, scaled_product_on_torch

try:  # Keras internals, read for speed only (pyproject allows any keras>=3.15): where a later Keras
    # has moved them, variable_tensor takes the public ``variable.value`` instead of failing.
    from keras.src.backend.common.stateless_scope import in_stateless_scope
    from keras.src.backend.common.variables import get_autocast_scope
except ImportError:  # pragma: no cover - only on a Keras other than the pinned one
    in_stateless_scope = get_autocast_scope = None


class LayerCalls:
    """Calls a layer through Keras (``direct=False``) or, when it is built, its ``call`` directly.

    ``calls(layer, *args, **kwargs)`` calls any layer. ``calls.nested(layer, ...)`` calls one of
    kcookbook's components whose ``call`` takes ``calls=`` (decoder blocks, attention,
    feed-forward layers) and, when direct, hands itself on, so the component's sublayers are
    called the same way. ``int8_kernel=True`` runs int8 ``Dense`` layers through
    ``kernels.int8_products.int8_dense`` where it applies, and hands itself on through Keras too.
    """

    def __init__(self, direct, int8_kernel=False):
        self.direct = bool(direct)
        self.int8_kernel = bool(int8_kernel)

    def __call__(self, layer, *args, **kwargs):
        if self.int8_kernel and type(layer) is keras.layers.Dense and layer.built and not kwargs:
            outputs = int8_dense(layer, *args)  # None where the kernel does not apply
            if outputs is not None:
                return outputs
        if self.direct and layer.built:  # a quantised layer computes in quantized_call, not call
            kind = type(layer)
            if kind is keras.layers.Dropout and not kwargs.get("training"):
                return args[0]  # what its call returns outside training
            if kind is keras.layers.Dense and not kwargs and keras.config.backend() == "torch":
                if layer.quantization_mode is None:
                    return dense_on_torch(layer, *args)
                if layer.quantization_mode == "int8":
                    return int8_dense_on_torch(layer, *args)
            if layer.quantization_mode is not None:
                return layer.quantized_call(*args, **kwargs)
            return layer.call(*args, **kwargs)
        return layer(*args, **kwargs)

    def nested(self, layer, *args, **kwargs):
        if self.direct and layer.built:
            return layer.call(*args, calls=self, **kwargs)
        if self.int8_kernel:
            return layer(*args, calls=self, **kwargs)
        return layer(*args, **kwargs)

    def activation(self, function):
        """``function`` (a Keras activation), or when direct on torch the torch function Keras'
        torch backend runs for it (``torch_activation``), without the op's dispatch."""
        if self.direct and keras.config.backend() == "torch":
            return torch_activation(function)
        return function

    def __repr__(self):
        if self.int8_kernel:
            return "INT8_KERNEL_CALLS"
        return "DIRECT_CALLS" if self.direct else "KERAS_CALLS"


KERAS_CALLS = LayerCalls(direct=False)
DIRECT_CALLS = LayerCalls(direct=True)
INT8_KERNEL_CALLS = LayerCalls(direct=False, int8_kernel=True)


def variable_tensor(variable):
    """torch: ``variable.value``, read without the property's per-read work (~6 µs: the stateless
    and autocast scopes, then the device's name for the meta-device check) when neither scope is
    active, as in an eager generation loop: the variable's own tensor. A T5 step reads ~60."""
    tensor = getattr(variable, "_value", None)
    if tensor is None or in_stateless_scope is None or in_stateless_scope() or get_autocast_scope() is not None:
        return variable.value
    return tensor


TORCH_ACTIVATIONS = {}  # Keras activation → the torch function its torch backend runs (made on first use)


def torch_activation(function):
    """torch: the ``torch.nn.functional`` function that Keras' torch backend runs for the Keras
    activation ``function`` (``silu``, ``relu``, ``gelu`` exact or tanh-approximated — kcookbook's
    ``gelu_approximate`` — and ``linear``), without the Keras op's dispatch (~10 µs, once per
    feed-forward layer and token); ``function`` itself for any other."""
    if not TORCH_ACTIVATIONS:
        import torch

        from kcookbook.components.activations import gelu_approximate

        functional = torch.nn.functional
        TORCH_ACTIVATIONS.update({
            keras.activations.silu: functional.silu, keras.activations.relu: functional.relu,
            keras.activations.gelu: functional.gelu, keras.activations.linear: lambda x: x,
            gelu_approximate: lambda x: functional.gelu(x, approximate="tanh")})
    return TORCH_ACTIVATIONS.get(function, function)


def dense_on_torch(layer, inputs):
    """torch: a float, LoRA-free ``keras.layers.Dense``'s ``call`` as torch ops on its tensors —
    ``inputs @ kernel (+ bias)``, then its activation — without the Keras dispatch of
    ``ops.matmul``/``ops.add`` (symbolic-tensor check, conversion, dtype promotion) and the
    ``kernel`` property's quantisation checks: ~2-3x a one-row product's own time at t5-small's
    widths, for ~40 dense layers per decoded token. Any other case goes through ``layer.call``."""
    kernel = variable_tensor(layer._kernel)
    if layer.lora_enabled or inputs.dtype != kernel.dtype:
        return layer.call(inputs)
    return dense_bias_and_activation(layer, inference_product(inputs, kernel))


def dense_bias_and_activation(layer, x):
    """torch: what a ``keras.layers.Dense`` adds after its product — its bias, then its activation."""
    if layer.bias is not None:
        x = x + variable_tensor(layer.bias)
    return x if layer.activation is keras.activations.linear else torch_activation(layer.activation)(x)


def int8_dense_on_torch(layer, inputs):
    """torch: an int8 ``keras.layers.Dense``'s ``quantized_call`` with Keras' numerics — W8A8: each
    row of ``inputs`` quantised by its absolute maximum (``AbsMaxQuantizer``), int8 × int8 summed
    exactly, divided by the kernel's and the row's scales; weight-only: float rows times the int8
    kernel, divided by its scales; then bias and activation. A few rows (a decoding step) take one
    call of kcookbook's int8 kernel for all of it but bias and activation
    (``kernels.int8_products.scaled_product_on_torch``: one W8A8 576 × 1,536 layer ~25 µs against
    ~41 as separate torch ops around the kernel). More W8A8 rows use torch's int8 product
    (``torch._int_mm``) instead of Keras' torch ``matmul``, which multiplies int8 tensors as int32.
    Other cases (LoRA, another input quantizer, not float32 on the CPU, weight-only beyond the
    kernel's rows) go through ``layer.quantized_call``."""
    if layer.lora_enabled or layer.compute_dtype != "float32":
        return layer.quantized_call(inputs)
    quantizer = getattr(layer, "inputs_quantizer", None)
    # A few rows: kcookbook's int8 kernel, quantisation and scales included (one call)
    if quantizer is None or is_int8_absmax(quantizer):
        w8a8 = quantizer is not None
        outputs = scaled_product_on_torch(inputs.reshape(-1, inputs.shape[-1]), variable_tensor(layer._kernel),
                                          variable_tensor(layer.kernel_scale), quantizer.value_range if w8a8 else None,
                                          quantizer.epsilon if w8a8 else 0.0)
        if outputs is not None:
            return dense_bias_and_activation(layer, outputs.reshape(*inputs.shape[:-1], outputs.shape[-1]))
    if quantizer is None:  # weight-only int8 beyond the kernel's rows: Keras's ops
        return layer.quantized_call(inputs)
    product = int8_product_on_torch(inputs, quantizer, variable_tensor(layer._kernel))
    if product is None:
        return layer.quantized_call(inputs)
    sums, inputs_scale = product
    return dense_bias_and_activation(layer, sums / (variable_tensor(layer.kernel_scale) * inputs_scale))


def is_int8_absmax(quantizer):
    """Whether ``quantizer`` is Keras' default activation quantizer of int8 layers (each row to int8
    by its absolute maximum), whose numerics kcookbook's int8 kernels reproduce."""
    return type(quantizer) is keras.quantizers.AbsMaxQuantizer and quantizer.output_dtype == "int8"


def int8_product_on_torch(inputs, quantizer, matrix):
    """torch: the int8 half of Keras' W8A8 product of float32 ``inputs`` (..., k) and an int8
    ``matrix`` (k, m) — a tensor or a strided view such as a table's transpose: each row of
    ``inputs`` quantised by its absolute maximum with ``quantizer``'s settings (an
    ``AbsMaxQuantizer`` to int8), int8 × int8 summed exactly in int32 by ``torch._int_mm``.
    Returns ``(sums as float32 (..., m), the rows' scales (..., 1))``; the caller divides by both
    scales. A few rows go to kcookbook's int8 kernel instead (``kernels.int8_products``: the same
    sums, faster at batch 1). None where it cannot run (another quantizer, not float32 on the CPU,
    a torch without ``_int_mm``, no rows, not torch) and the caller goes through Keras' ops."""
    if keras.config.backend() != "torch":
        return None
    import torch

    if (not is_int8_absmax(quantizer) or inputs.dtype != torch.float32 or inputs.device.type != "cpu"
            or not hasattr(torch, "_int_mm") or inputs.numel() == 0):
        return None
    rows = inputs.reshape(-1, inputs.shape[-1])
    low, high = quantizer.value_range
    # torch.div, as Keras' quantizer divides: ``high / tensor`` would multiply by the reciprocal
    inputs_scale = torch.div(torch.tensor(float(high)), rows.abs().amax(-1, keepdim=True) + quantizer.epsilon)
    quantized = torch.clamp(torch.round(rows * inputs_scale), low, high)
    # A few rows: kcookbook's int8 kernel (exact sums), on the matrix or the table it is a view of
    sums = None
    if matrix.is_contiguous():
        sums = int8_product(quantized, matrix, "columns", MAX_INT8_ROWS)
    elif matrix.T.is_contiguous():
        sums = int8_product(quantized, matrix.T, "rows", MAX_INT8_ROWS)
    if sums is None:
        sums = torch._int_mm(quantized.to(torch.int8), matrix).to(torch.float32)
    return sums.reshape(*inputs.shape[:-1], sums.shape[-1]), inputs_scale.reshape(*inputs.shape[:-1], 1)


# ``inference_product`` splits a one-row product over torch's threads from this many weights (a
# 512 × 512 matrix, 1 MB: ~50 → ~34 µs from memory). With OMP_WAIT_POLICY=PASSIVE (sleeping
# threads, not torch's default) waking the second thread costs about what the split saves at this size.
ROW_PRODUCT_SPLIT_MIN_WEIGHTS = 2**18


def inference_product(inputs, matrix):
    """torch, for inference: ``inputs @ matrix`` for a contiguous 2-D ``matrix`` (k, m), by the kernel
    that runs it fastest on a CPU (measured on this machine's AMD EPYC, where torch's default, MKL,
    is slow for these shapes):

    * one row (a decoded token at batch 1): MKL's matrix-vector product runs on one thread (t5-small's
      512 × 2,048 ~180 µs from memory, about half the bandwidth two cores reach). The row's two halves
      multiply the matrix's two row halves — contiguous views, no copy — in one batched product, which
      torch splits over its threads, and the partial results are added (~125 µs); for matrices of at
      least ``ROW_PRODUCT_SPLIT_MIN_WEIGHTS`` weights when torch has two or more threads.
    * more rows (batch 8, a prefill): oneDNN's linear (``onednn_linear``) on the matrix's transposed
      view, no copy: 8 rows × t5-small's 512 × 32,128 output table ~1.4 ms against MKL's ~6 ms, and
      a ViT-sized 4,096 × 768 × 3,072 product ~42 ms against ~89.

    Anything else (other dtypes or devices, a torch without oneDNN, no rows, code being compiled by
    ``torch.compile``) is a plain ``torch.matmul``. The results round differently from MKL's
    (float32: ~1e-7 relative)."""
    import torch

    k, m = matrix.shape
    rows = inputs.numel() // k
    if rows == 0 or torch.compiler.is_compiling():  # compiled_block_step: the compiler picks kernels
        return torch.matmul(inputs, matrix)
    if rows == 1:
        if (k * m < ROW_PRODUCT_SPLIT_MIN_WEIGHTS or k % 2 or not matrix.is_contiguous()
                or torch.get_num_threads() < 2):
            return torch.matmul(inputs, matrix)
        partial = torch.bmm(inputs.reshape(2, 1, k // 2), matrix.view(2, k // 2, m))  # (2, 1, m)
        return (partial[0] + partial[1]).reshape(*inputs.shape[:-1], m)
    out = onednn_linear(inputs, matrix.t()) if inputs.dtype == torch.float32 else None
    return torch.matmul(inputs, matrix) if out is None else out


def onednn_linear(inputs, weight):
    """torch: ``inputs @ weightᵀ`` for a ``(out, in)`` ``weight`` (a tensor or a strided view) by
    oneDNN's linear kernel, the one ``torch.compile`` uses for frozen CPU models
    (``torch.ops.mkldnn._linear_pointwise``); None where it cannot run — a torch built without
    oneDNN or without that operator, tensors that are not both float32 or both bfloat16 on the
    CPU — and the caller uses torch's own product."""
    import torch

    if (inputs.dtype not in (torch.float32, torch.bfloat16) or weight.dtype != inputs.dtype
            or inputs.device.type != "cpu" or weight.device.type != "cpu"
            or not torch.backends.mkldnn.is_available()):
        return None
    try:
        linear = torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):  # pragma: no cover - a torch without the operator
        return None
    return linear(inputs, weight, None, "none", [], "")


def fused_rms_normalization(x, scale, epsilon):
    """torch: ``x / sqrt(mean(x², last axis) + epsilon) * scale`` in one ``rms_norm`` kernel (float32
    ``x`` and ``scale``) instead of six element-wise ops, each a Keras dispatch."""
    import torch

    return torch.nn.functional.rms_norm(x, (x.shape[-1],), scale, epsilon)


def fused_group_norm_channels_last(x, groups, gamma, beta, epsilon):
    """torch: group norm of a channels-last ``x`` (batch, ..., channels) in one ``group_norm``
    kernel. The channels-first view ``x.movedim(-1, 1)`` is in torch's channels-last memory format,
    which the CPU kernel reads as it is and writes its output in, so moving the channels back gives a
    contiguous tensor: no copy either way. Keras' ``GroupNormalization`` is eight dispatched ops
    (reshape, moments, rsqrt, scale, shift...): at a diffusion UNet's (2, 32, 32, 64) ~0.9 ms
    against ~0.13 ms (issue 18)."""
    import torch

    return torch.nn.functional.group_norm(x.movedim(-1, 1), groups, gamma, beta, epsilon).movedim(1, -1)


def conv2d_channels_last(owner, inputs, kernel, bias, strides, padding, dilation):
    """torch: a 2-D convolution of channels-last ``inputs`` (batch, h, w, c_in) with a Keras
    ``(kh, kw, c_in, c_out)`` ``kernel`` (and ``bias`` added in the same kernel), ``padding`` the
    pixels on each side. Keras' torch ``conv`` copies the input to channels-first and back to
    torch's channels-last memory format, and the kernel to it too, at every call (a diffusion UNet:
    ~20% of a step); here the channels-first view of the input already is that format, and the
    kernel is laid out once (``inference_layout``: for inference; with gradients on, every call)."""
    import torch

    kernel = inference_layout(owner, "_conv_kernel", kernel,
                              lambda k: k.permute(3, 0, 1, 2).contiguous().permute(0, 3, 1, 2))
    out = torch.nn.functional.conv2d(inputs.permute(0, 3, 1, 2), kernel, bias, strides, padding, dilation)
    return out.permute(0, 2, 3, 1)


def inference_layout(owner, name, variable, make, key=None):
    """torch: ``make(variable's tensor)`` (a cast, transposed or re-laid-out copy), made once and
    kept on ``owner`` as ``name`` until the variable's tensor changes (an ``assign`` bumps its version
    counter, a new tensor has another identity) or ``key`` does (e.g. the dtype ``make`` casts to),
    with gradients off (inference); with them on, or when ``variable`` is not a ``keras.Variable`` (a
    LoRA sum is a new tensor every call), made at every call. The kept copy costs the variable's
    memory once more."""
    import torch

    if not isinstance(variable, keras.Variable):
        return make(variable)
    source = variable.value
    if torch.is_grad_enabled():
        return make(source)
    kept = owner.__dict__.get(name)
    if kept is None or kept[0] is not source or kept[1] != source._version or kept[2] != key:
        kept = (source, source._version, key, make(source))
        object.__setattr__(owner, name, kept)  # not tracked: not a weight
    return kept[3]


def layer_calls(backend=None):
    """The layer calls of an inference loop on ``backend`` (default: Keras' backend): direct on
    torch, where the loop runs eagerly; through Keras elsewhere, where it is traced once, and on jax
    with int8 ``Dense`` layers' few-row products on kcookbook's CPU kernel (``kernels.int8_products``)."""
    backend = backend or keras.config.backend()
    if backend == "torch":
        return DIRECT_CALLS
    return INT8_KERNEL_CALLS if backend == "jax" else KERAS_CALLS


STANDARD_DTYPES = {}  # dtype object or name → Keras' name for it, as standardize_dtype found it


def standard_dtype(dtype):
    """``keras.backend.standardize_dtype(dtype)``, remembered per dtype object: the Keras function
    walks its cases for every call (~3 µs), and a T5 step asks ~70 times."""
    try:
        return STANDARD_DTYPES[dtype]
    except (KeyError, TypeError):  # not seen yet, or not hashable
        name = keras.backend.standardize_dtype(dtype)
        try:
            STANDARD_DTYPES[dtype] = name
        except TypeError:
            pass
        return name


def cast_if_needed(x, dtype):
    """``ops.cast(x, dtype)``, skipped when ``x`` already has that dtype: the same tensor, without a
    Keras op's dispatch (~20 µs on torch) in loops that run per layer and per token."""
    if standard_dtype(x.dtype) == standard_dtype(dtype):
        return x
    return ops.cast(x, dtype)


def shape(x):
    """``ops.shape(x)``; on torch, for a concrete tensor, its own shape (a ``torch.Size``, a tuple of
    ints) without the op's search for symbolic tensors (~4 µs, ~30 times a T5 step)."""
    if _is_torch_tensor(x):
        return x.shape
    return ops.shape(x)


def reshape(x, shape):
    """``ops.reshape(x, shape)``; on torch, for a concrete tensor, the tensor's own ``reshape``:
    Keras' op walks ``(x, shape)`` with its tree utilities to look for symbolic tensors, ~90 µs a
    call against ~8 on a loaded 2-core machine, and a T5 decoding step reshapes 30 times."""
    if keras.config.backend() == "torch" and not isinstance(x, keras.KerasTensor):
        return x.reshape(tuple(shape))
    return ops.reshape(x, shape)


def concatenate(xs, axis=0):
    """``ops.concatenate(xs, axis)``; on torch, for concrete tensors of one dtype, ``torch.cat``
    without the op's dtype resolution and conversion of each input (~15 µs)."""
    if all(_is_torch_tensor(x) for x in xs) and len({x.dtype for x in xs}) == 1:
        import torch

        return torch.cat(xs, dim=axis)
    return ops.concatenate(xs, axis=axis)


def transpose(x, axes):
    """``ops.transpose(x, axes)``; on torch, for a concrete tensor, its own ``permute`` (a view)."""
    if _is_torch_tensor(x):
        return x.permute(*axes)
    return ops.transpose(x, axes)


def _is_torch_tensor(x):
    if keras.config.backend() != "torch" or isinstance(x, keras.KerasTensor):
        return False
    import torch

    return isinstance(x, torch.Tensor)


def dynamic_slice(x, start, shape):
    """``ops.slice(x, start, shape)``, whose ``start`` may hold scalar tensors (a loop's position);
    on torch, for a concrete tensor, a view (``narrow``) at the indices' values: Keras' op stacks
    tensor indices into a new tensor and narrows by its elements, ~220 µs a call against ~5 on
    this machine, and a sampler's step slices three times."""
    if not _is_torch_tensor(x):
        return ops.slice(x, start, shape)
    for axis, (first, length) in enumerate(zip(start, shape)):
        if not (isinstance(first, int) and first == 0 and length == x.shape[axis]):
            x = x.narrow(axis, int(first), int(length))
    return x


def dynamic_slice_update(x, start, update):
    """``ops.slice_update(x, start, update)`` (a new tensor), whose ``start`` may hold scalar
    tensors; on torch, for concrete tensors, a copy of ``x`` with ``update`` copied into a view of
    it: Keras' op builds index grids for ``index_put_`` (~140 µs a call against ~10)."""
    if not (_is_torch_tensor(x) and _is_torch_tensor(update)):
        return ops.slice_update(x, start, update)
    out = x.clone()
    region = out
    for axis, first in enumerate(start):
        region = region.narrow(axis, int(first), update.shape[axis])
    region.copy_(update)
    return out


def contiguous(x):
    """torch: ``x`` laid out in memory in the order of its axes (``Tensor.contiguous``: a copy only
    when it is a permuted view), so that products reading it later need no copy of their own; the
    same tensor elsewhere (XLA picks its own layouts)."""
    return x.contiguous() if keras.config.backend() == "torch" else x


def write_in_place(cache, update, positions, axis):
    """torch: ``cache``'s entries at int64 ``positions`` along ``axis`` replaced by ``update``'s, in
    place (``index_copy_``: no copy of the whole cache)."""
    return cache.index_copy_(axis, positions, cast_if_needed(update, cache.dtype))


def write_slice_in_place(cache, update, start, axis):
    """torch: ``cache``'s entries ``start…start + n`` along ``axis`` replaced by ``update``'s (``n``
    of them), in place: a copy into a view (``narrow``), with ``start`` (an int or a scalar tensor,
    read on the host) instead of the int64 positions ``write_in_place`` builds (three more ops)."""
    cache.narrow(axis, int(start), update.shape[axis]).copy_(update)
    return cache


def write_key_value_in_place(cache, key, value, step):
    """torch: ``cache[:, 0/1, slots] = key/value`` in place (``index_copy_``: no copy of the
    whole cache; the slots ``step.cache_slots`` stay an int64 tensor, so ``torch.compile``
    traces it without a host sync or a recompile)."""
    write_in_place(cache[:, 0], key, step.cache_slots, axis=1)
    write_in_place(cache[:, 1], value, step.cache_slots, axis=1)
    return cache


def fused_attention_heads_first(query, key, value, scale, bias=None, first_query_position=None,
                                masked=-1e30):
    """torch: ``softmax(query·keyᵀ·scale + bias) · value`` in one fused kernel
    (``scaled_dot_product_attention``) instead of scores, scaling, bias, mask and softmax as
    separate full-size tensors (Whisper's encoder: (batch, heads, 1500, 1500) each; a decoding
    step's grouped-query attention over its cache: two einsums, a softmax and their copies of the
    keys, ~3x the kernel's time at SmolLM2's shape).

    ``query`` (batch, queries, heads, head_dim); ``key``/``value`` heads first (batch, kv_heads,
    keys, head_dim), a strided view is fine; ``kv_heads`` may divide ``heads`` (grouped-query
    attention: query head ``i`` reads key head ``i // (heads / kv_heads)``, with no copies of the
    keys); ``bias`` float32, broadcastable to (batch, heads, queries, keys); with
    ``first_query_position`` (the position of the first query), query ``i`` sees only keys at or
    before ``first_query_position + i`` (the others get ``masked`` added, like ``bias``'s padding).
    Returns (batch, queries, heads, head_dim)."""
    import torch

    mask = bias
    if first_query_position is not None:
        queries = torch.arange(query.shape[1], device=query.device) + first_query_position
        future = torch.arange(key.shape[2], device=query.device)[None, :] > queries[:, None]
        causal = torch.zeros(future.shape, dtype=query.dtype, device=query.device).masked_fill(future, masked)
        mask = causal if mask is None else mask + causal
    out = torch.nn.functional.scaled_dot_product_attention(
        query.transpose(1, 2), key, value, attn_mask=mask, scale=scale,
        enable_gqa=query.shape[2] != key.shape[1])
    return out.transpose(1, 2)


TRANSPOSED_TABLE_MAX_BYTES = 256 * 2**20


def table_product(owner, variable, inputs):
    """torch, with gradients off (generation runs under ``no_grad``): ``inputs @ variableᵀ`` for a
    ``(vocabulary, hidden)`` table (a tied output layer): ``inference_product`` on a ``(hidden,
    vocabulary)`` copy (``transposed_table``; MKL's one-row product reads the transposed view at half
    the copy's speed, and oneDNN's linear, for more rows, is faster on the copy too: t5-small's table
    at 8 rows ~1.4 ms against ~3 on the table as it is), or oneDNN's linear on the table as it is
    where no copy is kept (a table over ``TRANSPOSED_TABLE_MAX_BYTES``, or in bfloat16). None
    elsewhere — jax, TensorFlow, training, or a ``variable`` that is not a ``keras.Variable`` — and
    the caller multiplies by ``ops.transpose(variable)`` as usual."""
    if keras.config.backend() != "torch" or not isinstance(variable, keras.Variable):
        return None
    import torch

    if torch.is_grad_enabled():
        return None
    # bfloat16: oneDNN's linear on the table as it is (SmolLM2's, one row: ~1.7 ms against ~4 for
    # every product on a transposed copy), so no copy is made.
    table = transposed_table(owner, variable, inputs.dtype) if inputs.dtype != torch.bfloat16 else None
    if table is not None:
        return inference_product(inputs, table)
    table = cast_if_needed(variable_tensor(variable), inputs.dtype)
    out = onednn_linear(inputs, table)
    return torch.nn.functional.linear(inputs, table) if out is None else out


def transposed_table(owner, variable, dtype):
    """torch, with gradients off (generation runs under ``no_grad``): ``variable``'s 2-D table
    transposed, cast to ``dtype`` and laid out contiguously, made once and kept on ``owner``
    (``inference_layout``) until the variable's tensor or ``dtype`` changes; the copy costs the table's memory once more. None elsewhere — jax, TensorFlow
    (XLA picks its own layouts), training (the gradient must reach the variable), or when
    ``variable`` is not a ``keras.Variable`` (a LoRA sum is a new tensor every call) — and the caller
    multiplies by ``ops.transpose(variable)`` as usual. Nor for a table of more than
    ``TRANSPOSED_TABLE_MAX_BYTES`` (256 MiB): Gemma 3 270M's 262,144 × 640 float32 table would
    cost 671 MB more memory, for a product that is a smaller part of its step."""
    if keras.config.backend() != "torch" or not isinstance(variable, keras.Variable):
        return None
    import torch

    source = variable.value
    if torch.is_grad_enabled() or source.numel() * torch.finfo(source.dtype).bits // 8 > TRANSPOSED_TABLE_MAX_BYTES:
        return None
    dtype = standard_dtype(dtype)
    return inference_layout(owner, "_transposed_table", variable,
                            lambda table: ops.cast(ops.transpose(table), dtype).contiguous(), key=dtype)


# ----- torch: one compiled block for every layer of a one-token decoding step -----
# Eager torch spends more time in Python (Keras' per-op dispatch, ~40 ops per block) than in the
# arithmetic when it decodes one token at a time. torch.compile removes that, but compiling a whole
# 30-layer model takes minutes on a CPU. The blocks of a decoder are the same code on different
# weights, and torch.compile treats a module's weights as graph inputs (inline_inbuilt_nn_modules),
# so one block's compiled graph runs every block of the same configuration: one compilation
# (seconds), not one per layer. ``dynamic=True`` keeps the batch size and the cache length symbolic,
# so a new max_length does not compile again (batch size 1 and >1 are two graphs).
COMPILED_BLOCK_FUNCTIONS = {}  # run_block → its torch.compile, made on first use (once per process)


def compiled_block_step(run_block):
    """On torch, ``run_block`` (a function ``(block, x, cache, cache_index, decoding_step, calls)``,
    e.g. ``decoder_block.run_block_with_cache``) through ``torch.compile``, one graph for every
    block of the same configuration; None elsewhere (jax, TensorFlow: the whole loop is compiled
    already). Use it under ``torch.no_grad()`` with ``DIRECT_CALLS``, in inference.

    If the compiler cannot run here (inductor needs a C++ compiler), a warning says so and the
    blocks run eagerly from then on.
    """
    if keras.config.backend() != "torch":
        return None

    def step(*args):
        compiled = COMPILED_BLOCK_FUNCTIONS.get(run_block)
        if compiled is None:
            import torch

            compiled = COMPILED_BLOCK_FUNCTIONS[run_block] = torch.compile(run_block, dynamic=True)
        try:
            return compiled(*args)
        except Exception as error:  # the compiler toolchain, not the model: fall back to eager
            from torch._dynamo.exc import BackendCompilerFailed

            if not isinstance(error, BackendCompilerFailed):
                raise
            warnings.warn(f"torch.compile of the decoder block failed ({type(error).__name__}: "
                          f"{str(error).splitlines()[0][:200]}); decoding eagerly instead.")
            COMPILED_BLOCK_FUNCTIONS[run_block] = run_block
            return run_block(*args)
    return step
