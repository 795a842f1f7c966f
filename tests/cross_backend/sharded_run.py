"""Run on JAX with 8 virtual CPU devices: the same tiny models unsharded, data parallel and model
parallel (kcookbook.distribution's layout), saving outputs, losses and where each weight lives.

    python sharded_run.py OUT.npz        (sets KERAS_BACKEND=jax and the device count itself)
"""

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "jax"  # Keras' distribution API runs on JAX
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from kcookbook.backbones import BertBackbone, LlamaBackbone  # noqa: E402
from kcookbook.distribution import transformer_layout_map  # noqa: E402
from kcookbook.tasks import CausalLM  # noqa: E402

BERT = dict(vocabulary_size=64, num_layers=2, num_heads=4, hidden_dim=16, intermediate_dim=32,
            max_sequence_length=16)
MIXTRAL = dict(vocabulary_size=64, num_layers=2, num_heads=4, num_key_value_heads=2, hidden_dim=16,
               intermediate_dim=32, num_experts=4, num_experts_per_token=2)
LLAMA = dict(vocabulary_size=64, num_layers=2, num_heads=4, num_key_value_heads=2, hidden_dim=16,
             intermediate_dim=32)
BATCH, LENGTH, STEPS = 8, 12, 4


def distributions():
    devices = keras.distribution.list_devices()
    assert len(devices) == 8, devices
    data_mesh = keras.distribution.DeviceMesh((8,), ("batch",), devices)
    model_mesh = keras.distribution.DeviceMesh((2, 4), ("batch", "model"), devices)
    return {
        "data_parallel": keras.distribution.DataParallel(device_mesh=data_mesh),
        "model_parallel": keras.distribution.ModelParallel(
            layout_map=transformer_layout_map(model_mesh), batch_dim_name="batch"),
    }


def inputs(seed):
    rng = np.random.default_rng(seed)
    token_ids = rng.integers(1, 64, (BATCH, LENGTH)).astype("int32")
    padding_mask = np.ones((BATCH, LENGTH), "int32")
    padding_mask[::3, LENGTH - 4:] = 0  # some padded rows
    return {"token_ids": token_ids, "padding_mask": padding_mask}


def build(kind, weights=None):
    model = BertBackbone(**BERT) if kind == "bert" else LlamaBackbone(**(MIXTRAL if kind == "mixtral" else LLAMA))
    if weights is not None:
        model.set_weights(weights)
    return model


def placements(model):
    """{weight path: [shape each device holds, number of devices]} read from the JAX arrays."""
    return {v.path: [list(v.value.sharding.shard_shape(v.value.shape)), len(v.value.sharding.device_set)]
            for v in model.weights}


def train_losses(weights, x, labels, weight_mask):
    lm = CausalLM(build("llama", weights))
    lm.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = lm.fit(x, labels, sample_weight=weight_mask, batch_size=BATCH, epochs=STEPS,
                     shuffle=False, verbose=0)
    return np.array(history.history["loss"]), [np.asarray(w) for w in lm.backbone.get_weights()]


def main(out_path):
    results, layout = {}, {}
    for kind in ("bert", "mixtral"):
        keras.utils.set_random_seed(0)
        reference = build(kind)
        weights = reference.get_weights()
        x = inputs(1)
        if kind == "bert":
            x["segment_ids"] = np.zeros_like(x["token_ids"])
        expected = reference.predict(x, batch_size=BATCH, verbose=0)
        expected = expected["sequence_output"] if isinstance(expected, dict) else expected
        results[f"{kind}/unsharded"] = expected
        for name, distribution in distributions().items():
            with distribution.scope():
                model = build(kind, weights)
                out = model.predict(x, batch_size=BATCH, verbose=0)
            results[f"{kind}/{name}"] = out["sequence_output"] if isinstance(out, dict) else out
            layout[f"{kind}/{name}"] = placements(model)

    keras.utils.set_random_seed(0)
    weights = build("llama").get_weights()
    x = inputs(2)
    labels = np.roll(x["token_ids"], -1, axis=1)
    weight_mask = x["padding_mask"].astype("float32")
    results["train/unsharded"], final = train_losses(weights, x, labels, weight_mask)
    results["train/unsharded/final_weight"] = final[1]
    for name, distribution in distributions().items():
        with distribution.scope():
            results[f"train/{name}"], final = train_losses(weights, x, labels, weight_mask)
        results[f"train/{name}/final_weight"] = final[1]
    np.savez(out_path, **results)
    with open(out_path + ".layout.json", "w") as f:
        json.dump(layout, f)


if __name__ == "__main__":
    main(sys.argv[1])
