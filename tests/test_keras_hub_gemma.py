"""keras_hub 0.32's Gemma 2 and Gemma 3 presets load into kcookbook with keras_hub's outputs.

keras_hub writes Gemma 2 presets with its ``GemmaBackbone`` class (post-norms, soft caps, every
other layer sliding-window) and Gemma 3 text models with ``Gemma3Backbone`` (five local layers to
one global, QK-norm, two rotary bases). keras_hub itself builds tiny models of each, every weight
randomised (norm scales too, so a swapped norm shows), writes them with ``save_to_preset`` and
computes the expected hidden states and logits; kcookbook's ``Backbone.from_preset`` and
``CausalLM.from_preset`` read the folder. The window (4) is shorter than the sequence (12) and the
soft caps are small, so each option changes the numbers it is checked on.

keras_hub 0.32's Gemma and Gemma 3 decoder blocks build their attention with
``query_head_dim_normalize=True`` whatever the backbone's config says, so a preset recording
``False`` (Gemma 2 and Gemma 3 27B: queries scaled by ``(hidden_dim / heads) ** -0.5``, as in
transformers' ``query_pre_attn_scalar``) runs in keras_hub with ``head_dim`` scaling. kcookbook
follows the config; the reference here is keras_hub's attention with its flag set as the config
records it (the attention layer reads the flag when called).

The parity tests were run on jax, tensorflow and torch when written; CI runs them in its torch run
only (``one_backend``: building and calling keras_hub's model costs 40-130 s per file on jax and
tensorflow here, and kcookbook's per-backend numerics of this family are covered by its transformers
parity tests). ``KCOOKBOOK_ALL_BACKENDS=1`` runs them on every backend.
"""

import io
import shutil

import keras
import numpy as np
import pytest
import sentencepiece
from helpers import assert_keras_hub_option_refused, real_tweets

from kcookbook.backbones import Backbone, Gemma2Backbone, Gemma3Backbone
from kcookbook.components import Tokenizer
from kcookbook.tasks import CausalLM

import keras_hub  # the test-only reference

VOCABULARY = 96
COMMON = dict(vocabulary_size=VOCABULARY, num_query_heads=4, num_key_value_heads=2, hidden_dim=16,
              head_dim=8, use_post_ffw_norm=True, use_post_attention_norm=True,
              use_sliding_window_attention=True, sliding_window_size=4)
FAMILIES = {
    # Gemma 2: queries scaled by hidden_dim // heads (4), not head_dim (8), as Gemma 2 27B does.
    "gemma2": (Gemma2Backbone, lambda: keras_hub.models.GemmaBackbone(
        num_layers=2, intermediate_dim=32, query_head_dim_normalize=False,
        attention_logit_soft_cap=2.0, final_logit_soft_cap=1.5, **COMMON)),
    # Gemma 3: six layers, so the sixth is global (rotary base 1e6, scaled by 2 here); queries
    # scaled as Gemma 3 27B's.
    "gemma3": (Gemma3Backbone, lambda: keras_hub.models.Gemma3Backbone(
        image_size=16, num_layers=6, intermediate_dim=16, global_rope_scaling_factor=2.0,
        query_head_dim_normalize=False,
        final_logit_soft_cap=1.5, **COMMON)),
}


def numpy(x):
    return keras.ops.convert_to_numpy(x)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def written(request, tmp_path_factory):
    """(our backbone class, keras_hub backbone, its preset folder, inputs, hidden states, logits)."""
    ours, build = FAMILIES[request.param]
    keras.utils.set_random_seed(3)
    reference = build()
    for block in reference.transformer_layers:  # see the module docstring
        block.attention.query_head_dim_normalize = reference.query_head_dim_normalize
    rng = np.random.default_rng(0)
    for variable in reference.weights:  # norms are 1 + w in Gemma: w = 0 would hide a swap
        variable.assign(rng.normal(0.0, 0.3, variable.shape).astype("float32"))
    folder = tmp_path_factory.mktemp(request.param) / "preset"
    reference.save_to_preset(str(folder))
    inputs = {"token_ids": rng.integers(0, VOCABULARY, (2, 12)).astype("int32"),
              "padding_mask": np.array([[1] * 12, [1] * 9 + [0] * 3], "int32")}
    hidden = reference(inputs)
    logits = numpy(reference.token_embedding(hidden, reverse=True))  # with keras_hub's final soft cap
    return ours, reference, str(folder), inputs, numpy(hidden), logits


@pytest.mark.one_backend
def test_backbone_preset_loads_with_keras_hubs_hidden_states(written):
    ours, reference, folder, inputs, hidden, _ = written
    backbone = Backbone.from_preset(folder)
    assert type(backbone) is ours
    real = inputs["padding_mask"].astype(bool)
    np.testing.assert_allclose(numpy(backbone(inputs))[real], hidden[real], atol=1e-5, rtol=0)
    assert backbone.count_params() == reference.count_params()


@pytest.mark.one_backend
def test_kaggle_names_load_keras_hub_presets_from_the_kagglehub_cache(written, tmp_path, monkeypatch):
    """`gemma2_2b_en` and `gemma3_1b` resolve to keras_hub's own Kaggle handles; the tiny preset stands
    in for the download at that handle's kagglehub cache path (no network: the API points at a closed
    local port)."""
    from keras_hub.src.utils.preset_utils import BUILTIN_PRESETS

    ours, _, folder, inputs, hidden, _ = written
    name = {Gemma2Backbone: "gemma2_2b_en", Gemma3Backbone: "gemma3_1b"}[ours]
    model, version = BUILTIN_PRESETS[name]["kaggle_handle"].removeprefix("kaggle://keras/").rsplit("/", 1)
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path))
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "TEST")
    shutil.copytree(folder, tmp_path / "models" / "keras" / model / version)
    (tmp_path / "models" / "keras" / model / f"{version}.complete").write_text("")
    backbone = Backbone.from_preset(name)
    assert type(backbone) is ours
    real = inputs["padding_mask"].astype(bool)
    np.testing.assert_allclose(numpy(backbone(inputs))[real], hidden[real], atol=1e-5, rtol=0)


@pytest.mark.one_backend
def test_causal_lm_preset_loads_with_keras_hubs_soft_capped_logits(written):
    _, _, folder, inputs, _, logits = written
    lm = CausalLM.from_preset(folder)
    ours = numpy(lm(inputs))
    real = inputs["padding_mask"].astype(bool)
    assert np.abs(logits[real]).max() < 1.5  # the final soft cap is in play: |logits| < 1.5
    np.testing.assert_allclose(ours[real], logits[real], atol=1e-5, rtol=0)


@pytest.mark.backend_independent
def test_gemma3_tokenizer_preset_gives_keras_hubs_ids(tiny_presets, tmp_path):
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(real_tweets(300)), model_writer=model, vocab_size=400, minloglevel=2, character_coverage=0.99,
        model_type="bpe", byte_fallback=True, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>", "<img>", "<start_of_image>",
                              "<end_of_image>"])
    reference = keras_hub.models.Gemma3Tokenizer(proto=model.getvalue())
    folder = tmp_path / "preset"
    shutil.copytree(tiny_presets["Gemma3Backbone"], folder)  # a tokenizer goes with a backbone
    reference.save_to_preset(str(folder))
    tokenizer = Tokenizer.from_preset(str(folder))
    for text in real_tweets(20, start=300):
        assert tokenizer(text) == numpy(reference(text)).tolist(), text
    assert (tokenizer.start_token_id, tokenizer.end_token_id, tokenizer.pad_token_id) == (
        reference.start_token_id, reference.end_token_id, reference.pad_token_id)


@pytest.fixture(scope="module")
def tiny_presets(tmp_path_factory):
    """One-layer keras_hub Gemma 2 and Gemma 3 presets whose config.json the hostile tests edit."""
    folders = {}
    for name, build in (("GemmaBackbone", keras_hub.models.GemmaBackbone),
                        ("Gemma3Backbone", keras_hub.models.Gemma3Backbone)):
        extra = {"image_size": 16} if name == "Gemma3Backbone" else {}
        folder = tmp_path_factory.mktemp(name) / "preset"
        build(num_layers=1, intermediate_dim=16, **extra, **COMMON).save_to_preset(str(folder))
        folders[name] = folder
    return folders


@pytest.mark.parametrize("class_name, option, value", [
    ("GemmaBackbone", "use_post_attention_norm", False),  # one post-norm without the other
    ("Gemma3Backbone", "use_post_ffw_norm", False),
    ("Gemma3Backbone", "local_rope_scaling_factor", 8.0),
    ("Gemma3Backbone", "use_bidirectional_attention", True),
    ("Gemma3Backbone", "is_embedding_model", True),
    ("Gemma3Backbone", "vision_encoder", {"class_name": "Gemma3VisionEncoder", "config": {}}),
])
@pytest.mark.backend_independent
def test_an_option_kcookbook_cannot_represent_is_refused_by_name(tiny_presets, tmp_path, class_name,
                                                                 option, value):
    assert_keras_hub_option_refused(tiny_presets[class_name], tmp_path / "edited", (option,), value)
