"""kcookbook.distribution's layout rules name the right weights of every transformer backbone.

The sharded runs themselves (8 virtual devices, outputs and losses equal to one device) are in
tests/cross_backend/test_distribution.py; this file checks the rules and the errors on each backend.
"""

import doctest

import keras
import pytest

from kcookbook import distribution
from kcookbook.backbones import BertBackbone, GPT2Backbone, LlamaBackbone, ViTBackbone

TINY = {
    "bert": lambda: BertBackbone(vocabulary_size=32, num_layers=1, num_heads=2, hidden_dim=8,
                                 intermediate_dim=16, max_sequence_length=8),
    "gpt2": lambda: GPT2Backbone(vocabulary_size=32, num_layers=1, num_heads=2, hidden_dim=8,
                                 intermediate_dim=16, max_sequence_length=8),
    "mixtral": lambda: LlamaBackbone(vocabulary_size=32, num_layers=1, num_heads=2, num_key_value_heads=1,
                                     hidden_dim=8, intermediate_dim=16, num_experts=4),
    "vit": lambda: ViTBackbone(image_shape=(8, 8, 3), patch_size=4, num_layers=1, num_heads=2, hidden_dim=8,
                               intermediate_dim=16),
}

# What each weight should be split along, by what the weight is (written out here, not derived from
# the module's rules): projections into the wider space by column, back by row, tables by row.
EXPECTED = {
    "attention/qkv/kernel": (None, "model"),
    "ffn_intermediate/kernel": (None, "model"),
    "feed_forward/intermediate/kernel": (None, "model"),
    "feed_forward/gate_up/kernel": (None, "model"),
    "attention/output/kernel": ("model", None),
    "ffn_output/kernel": ("model", None),
    "feed_forward/output/kernel": ("model", None),
    "token_embedding/embeddings": ("model", None),
    "token_embedding/reverse_embeddings": (None, "model"),
    "feed_forward/expert_gate_up": ("model", None, None),
    "feed_forward/expert_output": ("model", None, None),
}


def _mesh(axis_names=("batch", "model")):
    devices = keras.distribution.list_devices()[:1]
    return keras.distribution.DeviceMesh((1,) * len(axis_names), axis_names, devices)


@pytest.mark.parametrize("family", sorted(TINY))
def test_every_big_weight_gets_its_split_and_the_rest_stay_whole(family):
    model = TINY[family]()
    if keras.backend.backend() != "jax":
        with pytest.raises(RuntimeError, match="runs on the JAX backend.*KERAS_BACKEND=jax"):
            distribution.transformer_layout_map(None)
        return
    layout_map = distribution.transformer_layout_map(_mesh())
    sharded = 0
    for variable in model.weights:
        layout = layout_map[variable.path]
        rule = [v for k, v in EXPECTED.items() if variable.path.endswith(k)]
        if rule:
            assert layout is not None and layout.axes == rule[0], variable.path
            sharded += 1
        else:
            assert layout is None, f"{variable.path} should stay whole, got {layout.axes}"
    assert sharded >= 4


def test_mesh_without_the_model_axis_and_the_docstring_example():
    if keras.backend.backend() != "jax":
        with pytest.raises(RuntimeError, match="KERAS_BACKEND=jax"):
            distribution.sharding_table(TINY["gpt2"]())
        return
    with pytest.raises(ValueError, match="none called 'model'"):
        distribution.transformer_layout_map(_mesh(("batch",)))
    assert distribution.transformer_layout_map(_mesh(("data", "tp")), model_axis="tp")[
        "transformer_layer_0/ffn_output/kernel"].axes == ("tp", None)
    runner = doctest.DocTestRunner()
    for test in doctest.DocTestFinder().find(distribution, "kcookbook.distribution"):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0 and result.failed == 0
