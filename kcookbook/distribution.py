"""Sharding kcookbook models across devices with Keras' own distribution API.

Keras 3 already knows how to spread a model over many accelerators (``keras.distribution``, on the
JAX backend): a ``DeviceMesh`` names the axes of a grid of devices, a ``LayoutMap`` says, per
weight, which of its dimensions is split along which mesh axis, and ``ModelParallel`` /
``DataParallel`` apply that to every variable created inside their scope and to every batch fed
to ``fit``/``predict``. XLA's SPMD partitioner then inserts the communication. kcookbook adds no
parallelism of its own; this module only writes the ``LayoutMap`` for its backbones, whose weight
names it knows, and describes where each weight ended up.

The layout is Megatron-style tensor parallelism on the ``model`` axis:

- projections *into* a wider space (fused ``qkv``, ``gate_up``, ``ffn_intermediate``) are split by
  output column; projections *back* (attention ``output``, ``ffn_output``, feed-forward ``output``)
  by input row, so each device holds a slice of every layer's heads and hidden units;
- the token embedding is split by vocabulary row (its untied output table by column);
- mixture-of-experts tables are split by expert (expert parallelism);
- norms, biases and everything else small stay whole on every device.

Fused projections (q, k and v side by side) are split across the fused axis as one array; the
result is exact either way, XLA moves what it must. On real accelerators prefer mesh sizes that
divide the number of heads.

    >>> import keras
    >>> mesh = keras.distribution.DeviceMesh((1, 1), ("batch", "model"),
    ...                                      keras.distribution.list_devices()[:1])
    >>> layout = transformer_layout_map(mesh)
    >>> layout["transformer_layer_0/attention/qkv/kernel"].axes
    (None, 'model')
"""

import keras
import numpy as np

# (regex on the variable path, how its dimensions are split). "model" is replaced by the mesh axis
# name given to transformer_layout_map. Keras matches each whole variable path against these
# (re.fullmatch) and fails if two rules match one variable, so the rules must not overlap.
TRANSFORMER_SHARDING_RULES = (
    # vocabulary rows of the embedding; vocabulary columns of an untied LM head
    (r".*token_embedding/embeddings", ("model", None)),
    (r".*token_embedding/reverse_embeddings", (None, "model")),
    # column parallel: into the wider space
    (r".*(attention/qkv|gate_up|ffn_intermediate|feed_forward/intermediate)/kernel", (None, "model")),
    # row parallel: back to the hidden size
    (r".*(attention/output|ffn_output|feed_forward/output)/kernel", ("model", None)),
    # expert parallel: each device holds whole experts
    (r".*feed_forward/expert_(gate_up|output)", ("model", None, None)),
)


def _require_jax(what):
    if keras.backend.backend() != "jax":
        raise RuntimeError(
            f"{what}: Keras' distribution API (DeviceMesh, LayoutMap, ModelParallel) runs on the JAX "
            f"backend, and this process uses {keras.backend.backend()!r}. Set KERAS_BACKEND=jax before "
            "importing keras (a new process or notebook kernel).")


def transformer_layout_map(device_mesh, model_axis="model"):
    """A ``keras.distribution.LayoutMap`` that shards kcookbook's transformer backbones.

    Works for every backbone whose blocks are built from kcookbook's attention, feed-forward and
    mixture-of-experts components (BERT, GPT-2, Llama/Mistral/Gemma/Mixtral, ViT). Variables no
    rule names are replicated.

    Args:
        device_mesh: a ``keras.distribution.DeviceMesh`` that has an axis called ``model_axis``.
        model_axis: the mesh axis the weights are split along.
    """
    _require_jax("transformer_layout_map")
    if model_axis not in device_mesh.axis_names:
        raise ValueError(f"The device mesh has axes {list(device_mesh.axis_names)}, none called "
                         f"{model_axis!r}; pass model_axis= one of them or build the mesh with it.")
    layout_map = keras.distribution.LayoutMap(device_mesh)
    for pattern, axes in TRANSFORMER_SHARDING_RULES:
        layout_map[pattern] = tuple(model_axis if a == "model" else a for a in axes)
    return layout_map


def sharding_table(model):
    """One row per weight: its path, full shape, mesh axes and the shape each device holds.

    Reads the placement from the arrays themselves (JAX ``sharding``), so it shows what happened,
    not what was asked for. Returns a list of dicts (``pandas.DataFrame(rows)`` prints it well).
    """
    _require_jax("sharding_table")
    rows = []
    for variable in model.weights:
        value = variable.value
        sharding = value.sharding
        spec = getattr(sharding, "spec", None)
        shard_shape = sharding.shard_shape(value.shape)
        rows.append({
            "weight": variable.path,
            "shape": tuple(value.shape),
            "split along": tuple(spec) + (None,) * (len(value.shape) - len(spec)) if spec is not None
            else (None,) * len(value.shape),
            "per-device shape": tuple(shard_shape),
            "devices": len(sharding.device_set),
            "share per device": float(np.prod(shard_shape) / max(np.prod(value.shape), 1)),
        })
    return rows
