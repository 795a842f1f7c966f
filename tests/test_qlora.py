"""QLoRA: LoRA on an int8 backbone trains, saves the adapter alone, reloads and merges.

(keras-hub #2162, int8 + LoRA training to 1% where float + LoRA reached 46%, still needs its measurement
on a real task: float32 + LoRA against int8 + LoRA on the same data.)
"""

import keras
import numpy as np
import pytest

from kcookbook.tasks import CausalLM

from test_decoder_hf_parity import VOCAB, save_tiny_hf_model


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


# A compiled train step of an int8 model: 35 s on jax, 22 s on tensorflow; the int8 numerics of every
# backend are checked in test_quantize.py, so the LoRA-on-int8 mechanics run in the torch run only.
@pytest.mark.one_backend
def test_lora_on_int8_decoder_trains_saves_alone_reloads_and_merges(tmp_path):
    save_tiny_hf_model("llama", str(tmp_path / "source"))
    keras.utils.set_random_seed(0)
    lm = CausalLM.from_preset(str(tmp_path / "source"), preprocessor=None)
    lm.backbone.quantize("int8")
    lm.backbone.enable_lora(rank=4)
    assert {v.name for v in lm.backbone.trainable_weights} == {"lora_kernel_a", "lora_kernel_b"}
    rng = np.random.default_rng(0)
    ids = rng.integers(3, VOCAB, (8, 12)).astype("int32")
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones_like(ids[:, :-1])}
    lm.compile(optimizer=keras.optimizers.Adam(1e-2), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = lm.fit(x, ids[:, 1:], epochs=8, batch_size=8, verbose=0).history["loss"]
    assert history[-1] < 0.9 * history[0]  # the int8 model learns through its LoRA matrices
    assert lm.backbone.get_layer("transformer_layer_0").attention.qkv._kernel.dtype == "int8"  # untouched
    tuned = _numpy(lm(x))

    lm.backbone.save_lora_weights(tmp_path / "adapter.lora.h5")
    fresh = CausalLM.from_preset(str(tmp_path / "source"), preprocessor=None)
    fresh.backbone.quantize("int8")
    fresh.backbone.load_lora_weights(tmp_path / "adapter.lora.h5")
    np.testing.assert_allclose(_numpy(fresh(x)), tuned, atol=1e-5)

    lm.backbone.merge_lora()
    qkv = lm.backbone.get_layer("transformer_layer_0").attention.qkv
    assert not qkv.lora_enabled and qkv._kernel.dtype == "int8"  # merged and requantised
    merged = _numpy(lm(x))
    # Requantising W + A·B rounds every weight once more: the int8 error of a tiny random model again
    # (measured 7.0% of the largest logit; see test_quantize), the same next-token choices mostly.
    assert np.abs(merged - tuned).max() < 0.1 * np.abs(tuned).max()
    assert (merged.argmax(-1) == tuned.argmax(-1)).mean() > 0.8
