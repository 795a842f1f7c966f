"""Every backbone family runs in bfloat16 (``dtype="bfloat16"``) and stays close to float32.

Each tiny random family is built in float32, rebuilt from its config with ``dtype="bfloat16"`` (what
``from_preset(handle, dtype="bfloat16")`` does with a preset's config) and given the same weights;
both run on the same inputs. Norms, softmax, rotary angles, SAM's Fourier features and losses run
in float32 inside (bfloat16 keeps 8 significant bits: 0.4% per rounding).

Tolerance, per output: the largest difference is at most 8% of the float32 output's largest
magnitude and the mean difference at most 3% of its mean magnitude. Measured on torch: decoders
0.6-1.5% / 0.3-1.1%, T5 3.1% / 1.6%, SAM's mask logits 5.7% / 2.2% (the worst) — 2-3 times the error
of rounding the weights alone to bfloat16 and computing in float32 (SAM's masks: 1.2% / 0.8%), the
cost of rounding activations between layers, not of one operation left in bfloat16.
``from_preset`` itself is exercised on a Hugging Face Llama folder (generation) and a kcookbook
preset (a saved bfloat16 model reloads as bfloat16).
"""

import keras
import numpy as np
import pytest

from helpers import randomize_keras_batch_norm
from kcookbook.backbones import (
    Backbone, BertBackbone, CLIPBackbone, EfficientNetBackbone, Gemma2Backbone, Gemma3Backbone,
    GemmaBackbone, GPT2Backbone, LlamaBackbone, MistralBackbone, MixtralBackbone, ResNetBackbone,
    SAMBackbone, T5Backbone, ViTBackbone, YOLOv8Backbone)
from kcookbook.tasks import CausalLM, TextClassifier

from test_decoder_hf_parity import VOCAB, save_tiny_hf_model

MAX_ERROR = 0.08  # of the largest float32 magnitude of the output
MEAN_ERROR = 0.03  # of the mean float32 magnitude of the output

V = 64
DECODER = dict(vocabulary_size=V, num_layers=2, num_heads=4, num_key_value_heads=2, hidden_dim=16,
               intermediate_dim=32, max_sequence_length=32)
TRANSFORMER = dict(num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32)


def token_inputs(rng, length=8):
    ids = rng.integers(1, V, (2, length)).astype("int32")
    return {"token_ids": ids, "padding_mask": np.ones_like(ids)}


def images(rng, size=32):
    return rng.uniform(0, 1, (2, size, size, 3)).astype("float32")


FAMILIES = {  # name: (tiny float32 backbone, its inputs)
    "bert": (lambda: BertBackbone(vocabulary_size=V, max_sequence_length=16, **TRANSFORMER),
             lambda rng: {**token_inputs(rng), "segment_ids": np.zeros((2, 8), "int32")}),
    "gpt2": (lambda: GPT2Backbone(vocabulary_size=V, max_sequence_length=16, **TRANSFORMER), token_inputs),
    "llama": (lambda: LlamaBackbone(**DECODER), token_inputs),
    "mistral": (lambda: MistralBackbone(**DECODER, sliding_window=4), token_inputs),
    "gemma": (lambda: GemmaBackbone(**DECODER, head_dim=8), token_inputs),
    "gemma2": (lambda: Gemma2Backbone(**DECODER, sliding_window=4, query_pre_attn_scalar=8), token_inputs),
    "gemma3": (lambda: Gemma3Backbone(**DECODER, sliding_window=4, query_pre_attn_scalar=8), token_inputs),
    "mixtral": (lambda: MixtralBackbone(**DECODER, num_experts=4), token_inputs),
    "t5": (lambda: T5Backbone(vocabulary_size=V, **TRANSFORMER, activation="gelu", use_gated_activation=True,
                              dropout=0.0),
           lambda rng: {"encoder_token_ids": token_inputs(rng)["token_ids"],
                        "encoder_padding_mask": np.ones((2, 8), "int32"),
                        "decoder_token_ids": token_inputs(rng, 5)["token_ids"],
                        "decoder_padding_mask": np.ones((2, 5), "int32")}),
    "clip": (lambda: CLIPBackbone(
        vision_encoder=dict(image_shape=(32, 32, 3), patch_size=8, **TRANSFORMER),
        text_encoder=dict(vocabulary_size=V, max_sequence_length=16, end_token_id=V - 1, **TRANSFORMER),
        projection_dim=8),
        lambda rng: {"images": images(rng), "token_ids": token_inputs(rng)["token_ids"]}),
    "vit": (lambda: ViTBackbone(image_shape=(32, 32, 3), patch_size=8, **TRANSFORMER), images),
    "resnet": (lambda: ResNetBackbone(stackwise_num_filters=[8, 16], stackwise_num_blocks=[1, 1],
                                      stackwise_num_strides=[1, 2], stem_filters=8, image_shape=(32, 32, 3)),
               images),
    "efficientnet": (lambda: EfficientNetBackbone(
        stackwise_num_blocks=[1, 2], stackwise_kernel_sizes=[3, 5], stackwise_strides=[1, 2],
        stackwise_expansion_ratios=[1, 6], stackwise_output_filters=[8, 16],
        stackwise_squeeze_excite_ratios=[0.25, 0.25], stem_filters=16, head_filters=32), images),
    "yolov8": (lambda: YOLOv8Backbone(depth_coefficient=0.33, width_coefficient=0.0625), images),
    "sam": (lambda: SAMBackbone(
        image_encoder=dict(type="vit_det", patch_size=8, hidden_dim=16, num_layers=2, num_heads=2,
                           intermediate_dim=32, window_size=2, global_attention_layers=[1]),
        image_size=32, embedding_dim=16, decoder_num_heads=2, decoder_intermediate_dim=16,
        iou_head_hidden_dim=8, mask_input_channels=4),
        lambda rng: {"images": images(rng), "points": rng.uniform(0, 32, (2, 2, 2)).astype("float32"),
                     "labels": np.ones((2, 2), "float32"), "boxes": rng.uniform(0, 32, (2, 1, 4)).astype("float32"),
                     "masks": np.zeros((2, 16, 16, 1), "float32"), "has_mask": np.zeros((2,), "float32")}),
}
# Variables kept in float32 whatever the policy, on purpose.
KEPT_FLOAT32 = {"sam": ["gaussian_matrix"]}  # a fixed projection to angles of tens of radians


def _numpy(x):
    return keras.ops.convert_to_numpy(keras.ops.cast(x, "float32"))


def _relative_errors(ours, reference):
    difference = np.abs(ours - reference)
    return difference.max() / np.abs(reference).max(), difference.mean() / np.abs(reference).mean()


# Every family runs on torch; these three also on jax and tensorflow (rotary + grouped-query attention,
# soft caps + sliding windows, experts). The others' eager calls take 20-47 s each on jax
# (one XLA compile per operation): CI's time, for the same dtype-policy code. KCOOKBOOK_ALL_BACKENDS=1
# runs all of them everywhere (measured on jax: SAM's mask logits 6.4% / 4.9%, inside its own bound).
EVERY_BACKEND = ("llama", "gemma2", "mixtral")
# SAM's mask logits pass through ~20 bfloat16 layers of two towers: mean error measured 2.2% on torch and
# 4.9% on jax, so its mean bound is 6%; the largest-difference bound is the common one.
MEAN_ERROR_OF = {"sam": 0.06}


def _family_param(name):
    marks = [] if name in EVERY_BACKEND else [pytest.mark.one_backend]
    if name == "yolov8":
        marks.append(pytest.mark.slow)  # YOLOv8's ~200 layers: 7 s to build twice
    return pytest.param(name, marks=marks)


@pytest.mark.parametrize("family", [_family_param(name) for name in FAMILIES])
def test_family_runs_in_bfloat16_close_to_float32(family):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    build, make_inputs = FAMILIES[family]
    reference = build()
    randomize_keras_batch_norm(reference, rng)  # running statistics away from 0 / 1
    inputs = make_inputs(rng)
    expected = keras.tree.map_structure(_numpy, reference(inputs))

    model = type(reference).from_config({**reference.get_config(), "dtype": "bfloat16"})
    model.set_weights(reference.get_weights())
    assert model.dtype_policy.name == "bfloat16"
    assert keras.dtype_policies.get(model.get_config()["dtype"]).name == "bfloat16"  # a saved preset keeps it
    kept = sorted(v.name for v in model.weights if v.dtype != "bfloat16")
    assert kept == KEPT_FLOAT32.get(family, []), kept

    outputs = model(inputs)
    for ours, theirs in zip(keras.tree.flatten(outputs), keras.tree.flatten(expected)):
        assert keras.backend.standardize_dtype(ours.dtype) == "bfloat16"
        largest, mean = _relative_errors(_numpy(ours), theirs)
        assert largest > 0  # bfloat16 arithmetic ran
        assert largest <= MAX_ERROR and mean <= MEAN_ERROR_OF.get(family, MEAN_ERROR), (family, largest, mean)


@pytest.mark.slow  # two generation loops compiled: ~8 s
def test_causal_lm_from_hugging_face_folder_in_bfloat16_generates_like_float32(tmp_path):
    save_tiny_hf_model("llama", str(tmp_path / "llama"))
    reference = CausalLM.from_preset(str(tmp_path / "llama"))
    lm = CausalLM.from_preset(str(tmp_path / "llama"), dtype="bfloat16")
    assert lm.backbone.dtype_policy.name == "bfloat16"
    assert {v.dtype for v in lm.backbone.weights} == {"bfloat16"}
    prompts = np.random.default_rng(3).integers(3, VOCAB, (4, 6)).astype("int32")
    inputs = {"token_ids": prompts, "padding_mask": np.ones_like(prompts)}
    largest, mean = _relative_errors(_numpy(lm(inputs)), _numpy(reference(inputs)))
    assert largest <= MAX_ERROR and mean <= MEAN_ERROR, (largest, mean)
    ours = lm.generate(prompts, max_length=14)["token_ids"]
    theirs = reference.generate(prompts, max_length=14)["token_ids"]
    # Greedy decoding follows the float32 tokens until a near-tie flips; the first new token agrees.
    np.testing.assert_array_equal(ours[:, :7], theirs[:, :7])
    assert (ours == theirs).mean() >= 0.8


def test_bfloat16_preset_saves_and_reloads_as_bfloat16(tmp_path):
    BertBackbone(vocabulary_size=V, max_sequence_length=16, **TRANSFORMER).save_to_preset(str(tmp_path / "fp32"))
    backbone = Backbone.from_preset(str(tmp_path / "fp32"), dtype="bfloat16")
    assert {v.dtype for v in backbone.weights} == {"bfloat16"}
    backbone.save_to_preset(str(tmp_path / "bf16"))
    again = Backbone.from_preset(str(tmp_path / "bf16"))
    assert again.dtype_policy.name == "bfloat16" and {v.dtype for v in again.weights} == {"bfloat16"}
    inputs = {"token_ids": np.array([[5, 6, 7]], "int32"), "padding_mask": np.ones((1, 3), "int32"),
              "segment_ids": np.zeros((1, 3), "int32")}
    for key, value in backbone(inputs).items():
        np.testing.assert_array_equal(_numpy(again(inputs)[key]), _numpy(value))


def test_task_from_preset_dtype_builds_the_backbone_in_that_dtype_and_keeps_the_saved_head(tmp_path):
    backbone = BertBackbone(vocabulary_size=V, max_sequence_length=16, **TRANSFORMER)
    classifier = TextClassifier(backbone, num_classes=3)
    head = {v.path: _numpy(v) for v in _head_weights(classifier)}
    classifier.save_to_preset(str(tmp_path / "classifier"))
    loaded = TextClassifier.from_preset(str(tmp_path / "classifier"), dtype="bfloat16")
    assert {v.dtype for v in loaded.backbone.weights} == {"bfloat16"}
    loaded_head = {v.path: _numpy(v) for v in _head_weights(loaded)}
    assert {v.dtype for v in _head_weights(loaded)} == {"float32"}
    assert head and loaded_head.keys() == head.keys()  # the saved head, not a fresh one
    for path, value in head.items():
        np.testing.assert_array_equal(loaded_head[path], value)


def _head_weights(task):
    backbone = {id(v) for v in task.backbone.weights}
    return [v for v in task.weights if id(v) not in backbone]
