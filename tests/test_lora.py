"""LoRA on a backbone: only the LoRA matrices train, merging keeps the outputs, a saved LoRA file
reloads into a fresh model, presets and configs stay sensible, mismatches are reported."""

import h5py
import keras
import numpy as np
import pytest

from helpers import tiny_llama_config
from kcookbook.backbones import Backbone
from kcookbook.backbones.bert import BertBackbone


def _inputs(rng, vocabulary_size, batch=4, length=12):
    ids = rng.integers(5, vocabulary_size, size=(batch, length)).astype("int32")
    mask = np.ones((batch, length), "int32")
    mask[0, 8:] = 0
    return {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": mask}


def _outputs(backbone, x):
    out = backbone.predict(x, verbose=0)
    return np.concatenate([np.asarray(out["sequence_output"]).reshape(len(x["token_ids"]), -1),
                           np.asarray(out["pooled_output"])], axis=1)


def _values(model):
    return {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.weights}


def _train_one_step(backbone, x, rng):
    model = keras.Model(backbone.input, backbone.output["pooled_output"])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5), loss="mse")
    targets = rng.normal(size=(len(x["token_ids"]), backbone.output["pooled_output"].shape[-1]))
    model.fit(x, targets.astype("float32"), batch_size=len(targets), epochs=1, verbose=0)


@pytest.fixture
def trained(tiny_bert_config, seeded):
    """A tiny BERT with rank-2 LoRA after one SGD step and then random LoRA matrices (a clearly
    visible update), its base weights, inputs and pre-LoRA outputs."""
    backbone = BertBackbone(**tiny_bert_config)
    base = backbone.get_weights()
    x = _inputs(seeded, tiny_bert_config["vocabulary_size"])
    before = _outputs(backbone, x)
    backbone.enable_lora(2)
    np.testing.assert_allclose(_outputs(backbone, x), before, atol=1e-6)  # B starts at zero
    _train_one_step(backbone, x, seeded)
    for variable in backbone.trainable_weights:
        variable.assign(seeded.normal(scale=0.3, size=variable.shape).astype("float32"))
    return backbone, base, x, before


def test_only_lora_weights_are_trainable_and_change(tiny_bert_config, seeded):
    backbone = BertBackbone(**tiny_bert_config)
    layers = backbone.enable_lora(2)
    assert [layer.name for layer in layers] == ["qkv"] * tiny_bert_config["num_layers"]
    trainable = [v.path for v in backbone.trainable_weights]
    assert len(trainable) == 2 * tiny_bert_config["num_layers"]
    assert all(p.endswith(("lora_kernel_a", "lora_kernel_b")) for p in trainable)
    start = _values(backbone)
    x = _inputs(seeded, tiny_bert_config["vocabulary_size"])
    _train_one_step(backbone, x, seeded)
    end = _values(backbone)
    changed = {p for p in start if not np.array_equal(start[p], end[p])}
    assert changed, "the fit step changed nothing"
    assert changed <= set(trainable), f"frozen weights moved: {sorted(changed - set(trainable))[:3]}"
    assert any(p.endswith("lora_kernel_b") for p in changed)


def test_merged_model_gives_the_same_outputs(trained):
    backbone, _, x, before = trained
    adapted = _outputs(backbone, x)
    assert np.abs(adapted - before).max() > 1e-2  # LoRA changes the function
    backbone.merge_lora()
    assert not any("lora" in v.path for v in backbone.weights)
    np.testing.assert_allclose(_outputs(backbone, x), adapted, rtol=1e-5, atol=1e-5)
    assert len(backbone.trainable_weights) == len(backbone.weights)
    backbone.enable_lora(3)  # a new adaptation can start after merging
    assert len(backbone.trainable_weights) == 2 * len([w for w in backbone.weights if "lora_kernel_a" in w.path])


def test_saved_lora_file_reloads_into_a_fresh_model(trained, tiny_bert_config, tmp_path):
    backbone, base, x, _ = trained
    adapted = _outputs(backbone, x)
    path = tmp_path / "adapter.lora.h5"
    backbone.save_lora_weights(path)
    with h5py.File(path) as f:
        names = []
        f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        assert f.attrs["rank"] == 2
    assert len(names) == 2 * tiny_bert_config["num_layers"]
    assert all(n.endswith(("lora_kernel_a", "lora_kernel_b")) for n in names)

    fresh = BertBackbone(**tiny_bert_config)
    fresh.set_weights(base)
    fresh.load_lora_weights(path)
    np.testing.assert_allclose(_outputs(fresh, x), adapted, rtol=1e-5, atol=1e-6)
    assert sorted(v.path for v in fresh.trainable_weights) == sorted(v.path for v in backbone.trainable_weights)


def test_lora_model_round_trips_config_and_preset(trained, tmp_path):
    backbone, _, x, _ = trained
    adapted = _outputs(backbone, x)
    config = backbone.get_config()
    assert "lora" not in str(config)  # LoRA is a training state, not architecture
    assert BertBackbone.from_config(config).get_config() == config
    backbone.save_to_preset(tmp_path / "preset")
    # Keras writes each adapted kernel with its LoRA update folded in: the preset is the merged model.
    loaded = Backbone.from_preset(str(tmp_path / "preset"))
    assert not any("lora" in v.path for v in loaded.weights)
    np.testing.assert_allclose(_outputs(loaded, x), adapted, rtol=1e-5, atol=1e-5)


def test_mismatches_are_reported(trained, tiny_bert_config, tmp_path):
    backbone, base, _, _ = trained
    path = tmp_path / "adapter.lora.h5"
    backbone.save_lora_weights(path)

    other_rank = BertBackbone(**tiny_bert_config)
    other_rank.enable_lora(3)
    with pytest.raises(ValueError, match="has shape .* another rank"):
        other_rank.load_lora_weights(path)

    other_layers = BertBackbone(**tiny_bert_config)
    other_layers.enable_lora(2, target_names=["output"])
    with pytest.raises(ValueError, match="Enable LoRA on the same layers"):
        other_layers.load_lora_weights(path)

    shallower = BertBackbone(**{**tiny_bert_config, "num_layers": 1})
    with pytest.raises(ValueError, match="layers this model does not have"):
        shallower.load_lora_weights(path)

    with pytest.raises(ValueError, match=r"named any of \['attention'\].*qkv"):
        BertBackbone(**tiny_bert_config).enable_lora(2, target_names=["attention"])
    with pytest.raises(ValueError, match="already has LoRA"):
        backbone.enable_lora(2)
    with pytest.raises(ValueError, match="no LoRA weights to save"):
        BertBackbone(**tiny_bert_config).save_lora_weights(tmp_path / "none.h5")


@pytest.mark.slow
def test_decoder_backbone_lora_trains_merges_and_reloads(seeded, tmp_path):
    from kcookbook.backbones.llama import LlamaBackbone

    config = tiny_llama_config(64)
    backbone = LlamaBackbone(**config)
    base = backbone.get_weights()
    x = {"token_ids": seeded.integers(0, 64, size=(3, 10)).astype("int32"),
         "padding_mask": np.ones((3, 10), "int32")}
    layers = backbone.enable_lora(4)
    assert [layer.name for layer in layers] == ["qkv", "qkv"]  # fused query/key/value of each block
    trainable = {v.path for v in backbone.trainable_weights}
    assert len(trainable) == 4 and all("lora_kernel" in p for p in trainable)

    start = _values(backbone)
    model = keras.Model(backbone.input, backbone.output)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5), loss="mse")
    model.fit(x, seeded.normal(size=(3, 10, 16)).astype("float32"), batch_size=3, epochs=1, verbose=0)
    end = _values(backbone)
    changed = {p for p in start if not np.array_equal(start[p], end[p])}
    assert changed and changed <= trainable

    for variable in backbone.trainable_weights:
        variable.assign(seeded.normal(scale=0.3, size=variable.shape).astype("float32"))
    adapted = np.asarray(backbone.predict(x, verbose=0))
    backbone.save_lora_weights(tmp_path / "decoder.lora.h5")

    fresh = LlamaBackbone(**config)
    fresh.set_weights(base)
    fresh.load_lora_weights(tmp_path / "decoder.lora.h5")
    np.testing.assert_allclose(np.asarray(fresh.predict(x, verbose=0)), adapted, rtol=1e-5, atol=1e-5)

    backbone.merge_lora()
    assert not any("lora" in v.path for v in backbone.weights)
    np.testing.assert_allclose(np.asarray(backbone.predict(x, verbose=0)), adapted, rtol=1e-5, atol=1e-5)
