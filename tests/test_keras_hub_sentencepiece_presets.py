"""KerasHub Gemma and Mistral presets with their SentencePiece tokenizers, and their Kaggle names.

A keras_hub preset keeps the tokenizer as ``tokenizer.json`` (class ``GemmaTokenizer`` /
``MistralTokenizer``) plus ``assets/tokenizer/vocabulary.spm``. Here keras_hub itself writes such
presets (its SentencePieceTokenizer runs on the ``sentencepiece`` package when tensorflow-text is
absent, as here), around SentencePiece models trained on Hamlet and shaped like the real ones:

* Gemma: BPE with byte fallback, no dummy prefix, digits split, ``<pad>``=0 ``<eos>``=1 ``<bos>``=2
  ``<unk>``=3 and the chat pieces ``<start_of_turn>`` / ``<end_of_turn>``;
* Mistral (Llama-2 style): BPE with byte fallback and a dummy prefix, ``<unk>``=0 ``<s>``=1 ``</s>``=2.

Ids are checked against independent references on Macbeth (not trained on): the ``sentencepiece``
library on the ``.model`` file, and transformers' GemmaTokenizer / LlamaTokenizer built from the same
file; the preprocessing, logits and greedy generations against keras_hub's own task on raw strings.
The Kaggle names are tested with kagglehub pointed at a closed local port (no network).
"""

import io
import os
import shutil

import keras
import numpy as np
import pytest
import sentencepiece
import transformers

import kcookbook
from helpers import TRICKY_SENTENCES
from kcookbook.backbones import Backbone
from kcookbook.components.sentencepiece import SentencePieceTokenizer
from kcookbook.data import load_shakespeare
from kcookbook.presets import PresetError
from kcookbook.tasks import CausalLM

from keras_hub.src.models.gemma.gemma_presets import backbone_presets as keras_hub_gemma_presets
from keras_hub.src.models.gemma3.gemma3_presets import backbone_presets as keras_hub_gemma3_presets
from keras_hub.src.models.mistral.mistral_presets import backbone_presets as keras_hub_mistral_presets

VOCABULARY = 600
SEQUENCE_LENGTH = 24

SPM_OPTIONS = {
    "gemma": dict(pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
                  bos_piece="<bos>", unk_piece="<unk>", add_dummy_prefix=False, split_digits=True,
                  user_defined_symbols=["<start_of_turn>", "<end_of_turn>"]),
    "mistral": dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1),
}
# keras_hub's special ids for each class (GemmaTokenizer: <bos>, <eos>, <pad>; MistralTokenizer: <s>,
# </s> and padding with id 0).
SPECIAL_IDS = {"gemma": (2, 1, 0), "mistral": (1, 2, 0)}


@pytest.fixture(scope="module")
def plays():
    hamlet, macbeth = load_shakespeare(works=["hamlet", "macbeth"])
    train = [line for line in hamlet.text.split("\n") if line.strip()][:800]
    held_out = [line for line in macbeth.text.split("\n") if line.strip()][:1000]
    return train, held_out + TRICKY_SENTENCES + ["Hello <start_of_turn>user there<end_of_turn>"]


@pytest.fixture(scope="module", params=["gemma", "mistral"])
def written(request, plays, tmp_path_factory):
    """(family, keras_hub CausalLM, its preset directory, the .model file)."""
    import keras_hub

    family = request.param
    folder = tmp_path_factory.mktemp(f"{family}_spm")
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(plays[0]), model_writer=model, vocab_size=VOCABULARY, minloglevel=2,
        model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, **SPM_OPTIONS[family])
    (folder / "tokenizer.model").write_bytes(model.getvalue())

    keras.utils.set_random_seed(7)
    common = dict(vocabulary_size=VOCABULARY, num_layers=1, num_query_heads=4, num_key_value_heads=2,
                  hidden_dim=16)
    if family == "gemma":
        backbone = keras_hub.models.GemmaBackbone(intermediate_dim=64, head_dim=8, **common)
        tokenizer = keras_hub.models.GemmaTokenizer(proto=model.getvalue())
        preprocessor = keras_hub.models.GemmaCausalLMPreprocessor(tokenizer, sequence_length=SEQUENCE_LENGTH)
        reference = keras_hub.models.GemmaCausalLM(backbone, preprocessor)
    else:
        backbone = keras_hub.models.MistralBackbone(intermediate_dim=32, sliding_window=8, **common)
        tokenizer = keras_hub.models.MistralTokenizer(proto=model.getvalue())
        preprocessor = keras_hub.models.MistralCausalLMPreprocessor(tokenizer,
                                                                    sequence_length=SEQUENCE_LENGTH)
        reference = keras_hub.models.MistralCausalLM(backbone, preprocessor)
    rng = np.random.default_rng(0)  # keras_hub's norms start at 0/1: perturb everything
    for variable in backbone.weights:
        variable.assign(variable + rng.normal(0, 0.3, variable.shape))
    reference.compile(sampler="greedy")
    preset = folder / "keras_hub_preset"
    reference.save_to_preset(str(preset))
    return family, reference, preset, str(folder / "tokenizer.model")


@pytest.fixture(scope="module")
def loaded(written):
    return CausalLM.from_preset(str(written[2]))


def numpy(x):
    return keras.ops.convert_to_numpy(x)


@pytest.mark.backend_independent
def test_token_ids_match_sentencepiece_and_transformers(written, loaded, plays):
    family, reference, _, model_file = written
    texts = plays[1]
    tokenizer = loaded.preprocessor.tokenizer
    assert isinstance(tokenizer, SentencePieceTokenizer)
    ids = tokenizer(texts)
    assert ids == sentencepiece.SentencePieceProcessor(model_file=model_file).encode(texts)

    folder = os.path.dirname(model_file)
    if family == "gemma":
        hf = transformers.GemmaTokenizer.from_pretrained(folder)
        comparable = texts
    else:  # Llama-2 style: transformers drops one leading space (test_sentencepiece.py says the same)
        hf = transformers.LlamaTokenizer.from_pretrained(folder)
        comparable = [t for t in texts if not t.startswith(" ")]
        assert len(comparable) >= len(texts) - 3
    assert tokenizer(comparable) == hf(comparable, add_special_tokens=False)["input_ids"]
    assert (tokenizer.start_token_id, tokenizer.end_token_id) == (hf.bos_token_id, hf.eos_token_id)

    theirs = reference.preprocessor.tokenizer
    assert (tokenizer.start_token_id, tokenizer.end_token_id, tokenizer.pad_token_id) == (
        theirs.start_token_id, theirs.end_token_id, theirs.pad_token_id) == SPECIAL_IDS[family]
    assert tokenizer.detokenize(ids[:200]) == hf.batch_decode(ids[:200], skip_special_tokens=True)


def test_preprocessor_gives_keras_hubs_ids_and_logits_on_raw_strings(written, loaded, plays):
    _, reference, _, _ = written
    long_line = " ".join(plays[1][:20])  # truncated to the sequence length
    texts = plays[1][100:106] + [long_line, "To be, or not to be"]
    x, y, weights = loaded.preprocessor(texts)
    their_x, their_y, their_weights = reference.preprocessor(texts)
    np.testing.assert_array_equal(x["token_ids"], numpy(their_x["token_ids"]))
    np.testing.assert_array_equal(x["padding_mask"], numpy(their_x["padding_mask"]).astype("int32"))
    np.testing.assert_array_equal(y, numpy(their_y))
    np.testing.assert_array_equal(weights, numpy(their_weights).astype("float32"))
    assert (x["token_ids"][:, 0] == loaded.preprocessor.tokenizer.start_token_id).all()  # BOS first

    prompts = ["To be", "Fair is foul, and foul is fair"]
    ours = loaded.preprocessor.generate_preprocess(prompts, SEQUENCE_LENGTH)
    theirs = reference.preprocessor.generate_preprocess(prompts, sequence_length=SEQUENCE_LENGTH)
    np.testing.assert_array_equal(ours[0], numpy(theirs["token_ids"]))
    np.testing.assert_array_equal(ours[1], numpy(theirs["padding_mask"]).astype("int32"))

    # Ours: raw strings in, logits out. keras_hub's predict on strings needs tensorflow-text (its
    # tf.data path), so its backbone runs on the ids its own preprocessor gave (compared above) and
    # its tied / reverse embedding makes the logits, as keras_hub's CausalLM.call does.
    hidden = reference.backbone.predict_on_batch({k: numpy(v) for k, v in their_x.items()})
    logits, expected = loaded.predict(texts, verbose=0), numpy(
        reference.backbone.token_embedding(hidden, reverse=True))
    real = x["padding_mask"].astype(bool)
    np.testing.assert_allclose(logits[real], expected[real], atol=2e-5, rtol=0)


def test_generate_on_strings_equals_keras_hub(written, loaded):
    _, reference, _, _ = written
    prompts = ["To be, or not", "Fair is foul"]
    expected = reference.generate(prompts, max_length=16)
    assert loaded.generate(prompts, max_length=16) == list(expected)


def test_save_to_preset_round_trips(written, loaded, plays, tmp_path):
    loaded.save_to_preset(str(tmp_path / "ours"))
    again = CausalLM.from_preset(str(tmp_path / "ours"))
    tokenizer = again.preprocessor.tokenizer
    assert isinstance(tokenizer, SentencePieceTokenizer)
    assert tokenizer.get_config() == loaded.preprocessor.tokenizer.get_config()
    assert os.listdir(tmp_path / "ours" / "assets" / "tokenizer") == ["vocabulary.spm"]
    texts = plays[1][:8]
    x, _, _ = again.preprocessor(texts)
    their_x, _, _ = written[1].preprocessor(texts)
    np.testing.assert_array_equal(x["token_ids"], numpy(their_x["token_ids"]))
    np.testing.assert_allclose(numpy(again(x)), numpy(loaded(x)), atol=1e-6, rtol=0)


@pytest.mark.backend_independent
def test_tokenizer_problems_are_named(written, tmp_path):
    family, _, preset, _ = written
    broken = tmp_path / "no_vocabulary"
    shutil.copytree(preset, broken)
    os.remove(broken / "assets" / "tokenizer" / "vocabulary.spm")
    with pytest.raises(PresetError, match="vocabulary.spm is missing"):
        CausalLM.from_preset(str(broken))
    assert Backbone.from_preset(str(broken)).num_layers == 1  # the model itself still loads

    adds_bos = tmp_path / "adds_bos"
    shutil.copytree(preset, adds_bos)
    config = kcookbook.presets.files.read_json(str(adds_bos / "tokenizer.json"))
    config["config"]["add_bos"] = True
    (adds_bos / "tokenizer.json").write_text(__import__("json").dumps(config))
    with pytest.raises(PresetError, match="add_bos=True"):
        CausalLM.from_preset(str(adds_bos))


# Google's own examples of Gemma's conversation format (ai.google.dev/gemma/docs/formatting): a
# multi-turn dialogue, and a system instruction given at the top of the first user turn.
GEMMA_DOCUMENTED_CHATS = [
    ([{"role": "user", "content": "knock knock"}, {"role": "assistant", "content": "who is there"},
      {"role": "user", "content": "Gemma"}],
     "<start_of_turn>user\nknock knock<end_of_turn>\n<start_of_turn>model\nwho is there<end_of_turn>\n"
     "<start_of_turn>user\nGemma<end_of_turn>\n<start_of_turn>model\n"),
    ([{"role": "system", "content": "Only reply like a pirate."},
      {"role": "user", "content": "What is the answer to life the universe and everything?"}],
     "<start_of_turn>user\nOnly reply like a pirate.\n\nWhat is the answer to life the universe and "
     "everything?<end_of_turn>\n<start_of_turn>model\n"),
]


def test_gemma_presets_get_gemmas_chat_format_and_stop_at_end_of_turn(written, loaded, tmp_path):
    family, _, _, model_file = written
    tokenizer = loaded.preprocessor.tokenizer
    spm = sentencepiece.SentencePieceProcessor(model_file=model_file)
    if family != "gemma":  # keras_hub's Mistral presets carry no template, and none is guessed
        with pytest.raises(ValueError, match="no chat template"):
            tokenizer.apply_chat_template([{"role": "user", "content": "Hello"}])
        assert tokenizer.stop_token_ids == (spm.eos_id(),)
        return
    hf = transformers.GemmaTokenizer.from_pretrained(os.path.dirname(model_file))
    for messages, documented in GEMMA_DOCUMENTED_CHATS:
        assert tokenizer.apply_chat_template(messages) == documented
        assert tokenizer.apply_chat_template(messages, tokenize=True) == hf(
            documented, add_special_tokens=False)["input_ids"]
    assert tokenizer.apply_chat_template(GEMMA_DOCUMENTED_CHATS[0][0][:2],
                                         add_generation_prompt=False).endswith("who is there<end_of_turn>\n")
    with pytest.raises(Exception, match="not tool"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "42"}])
    with pytest.raises(ValueError, match="stop_tokens='<nope>' is not a piece"):
        SentencePieceTokenizer(model_file, stop_tokens=["<nope>"])
    # generate(stop_token_ids="auto") stops at <eos> and at <end_of_turn>, as Hugging Face's
    # generation config for Gemma's instruction-tuned models lists (eos_token_id [1, 107]).
    assert tokenizer.stop_token_ids == (spm.eos_id(), spm.piece_to_id("<end_of_turn>"))
    ids = loaded.preprocessor.generate_preprocess(["To be"], SEQUENCE_LENGTH)
    free = loaded.generate({"token_ids": ids[0], "padding_mask": ids[1]}, stop_token_ids=None)
    prompt_length = int(ids[1].sum())
    first_new = spm.id_to_piece(int(free["token_ids"][0, prompt_length]))
    original = tokenizer.stop_tokens
    tokenizer.stop_tokens = original + (first_new,)
    try:
        stopped = loaded.generate({"token_ids": ids[0], "padding_mask": ids[1]})
    finally:
        tokenizer.stop_tokens = original
    assert stopped["padding_mask"][0].sum() == prompt_length + 1  # the first new token stopped it
    # The template and the stop token survive saving as a kcookbook preset.
    loaded.save_to_preset(str(tmp_path / "ours"))
    again = CausalLM.from_preset(str(tmp_path / "ours")).preprocessor.tokenizer
    assert again.apply_chat_template(GEMMA_DOCUMENTED_CHATS[0][0]) == GEMMA_DOCUMENTED_CHATS[0][1]
    assert again.stop_token_ids == tokenizer.stop_token_ids


# ---------------------------------------------------------------- Kaggle names

GEMMA_NAMES = ("gemma_2b_en", "gemma_instruct_2b_en", "gemma_1.1_instruct_2b_en", "gemma_7b_en",
               "gemma_instruct_7b_en", "gemma_1.1_instruct_7b_en", "code_gemma_2b_en",
               "code_gemma_1.1_2b_en", "code_gemma_7b_en", "code_gemma_instruct_7b_en",
               "code_gemma_1.1_instruct_7b_en")
GEMMA2_NAMES = ("gemma2_2b_en", "gemma2_instruct_2b_en", "gemma2_9b_en", "gemma2_instruct_9b_en",
                "gemma2_27b_en", "gemma2_instruct_27b_en", "shieldgemma_2b_en", "shieldgemma_9b_en",
                "shieldgemma_27b_en")
GEMMA3_NAMES = ("gemma3_instruct_270m", "gemma3_1b", "gemma3_instruct_1b", "gemma3_4b_text",
                "gemma3_instruct_4b_text", "gemma3_12b_text", "gemma3_instruct_12b_text",
                "gemma3_27b_text", "gemma3_instruct_27b_text")
MISTRAL_NAMES = ("mistral_7b_en", "mistral_instruct_7b_en", "mistral_0.2_instruct_7b_en",
                 "mistral_0.3_7b_en", "mistral_0.3_instruct_7b_en")
# keras_hub names kcookbook does not list, and why: other architectures or vocabularies, vision+text
# Gemma 3 (kcookbook's is text-only), fine-tunes for other tasks, and keras_hub's `gemma3_270m`, whose
# name is kcookbook's offline GGUF preset of the same base model.
NOT_LISTED = ("c2s_scale_gemma_2", "vault_gemma", "magistral", "medgemma", "translategemma",
              "function_gemma", "embedding_gemma", "harrier", "gemma3_270m")
VISION_TEXT_GEMMA3 = {name for name, row in keras_hub_gemma3_presets.items()
                      if name.startswith("gemma3") and "vision+text" in row["metadata"]["description"]}


@pytest.fixture
def offline_kagglehub(tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path))
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "TEST")  # localhost:7777, nothing listens
    return tmp_path


@pytest.mark.parametrize("family, names, table", [
    ("gemma", GEMMA_NAMES, keras_hub_gemma_presets),
    ("gemma2", GEMMA2_NAMES, keras_hub_gemma_presets),
    ("gemma3", GEMMA3_NAMES, keras_hub_gemma3_presets),
    ("mistral", MISTRAL_NAMES, keras_hub_mistral_presets),
])
@pytest.mark.backend_independent
def test_kaggle_names_are_listed_with_keras_hubs_handles(family, names, table):
    rows = {row["name"]: row for row in kcookbook.presets.list_presets(family=family)
            if row["handle"].startswith("kaggle://")}
    assert set(rows) == set(names)
    for name in names:
        assert rows[name]["handle"] == table[name]["kaggle_handle"], name
        assert rows[name]["offline"] is False and rows[name]["source"]


@pytest.mark.backend_independent
def test_every_keras_hub_gemma_and_mistral_name_is_listed_or_left_out_for_a_stated_reason():
    listed = set(GEMMA_NAMES + GEMMA2_NAMES + GEMMA3_NAMES + MISTRAL_NAMES)
    tables = {**keras_hub_gemma_presets, **keras_hub_gemma3_presets, **keras_hub_mistral_presets}
    left_out = set(tables) - listed
    unexplained = {n for n in left_out if not n.startswith(NOT_LISTED) and n not in VISION_TEXT_GEMMA3}
    assert VISION_TEXT_GEMMA3 and not unexplained, unexplained
    builtin = kcookbook.presets.builtin.all_presets()
    assert all(builtin[name].handle != tables[name]["kaggle_handle"] for name in left_out if name in builtin)


@pytest.mark.parametrize("name, handle", [("gemma_2b_en", "kaggle://keras/gemma/keras/gemma_2b_en/3"),
                                          ("mistral_7b_en", "kaggle://keras/mistral/keras/mistral_7b_en/8")])
@pytest.mark.backend_independent
def test_uncached_kaggle_name_fails_offline_with_a_clear_error(offline_kagglehub, name, handle):
    with pytest.raises(PresetError) as error:
        CausalLM.from_preset(name)
    assert handle in str(error.value) and "network" in str(error.value)


def test_kaggle_name_loads_a_keras_hub_preset_with_its_tokenizer_from_the_cache(written, loaded,
                                                                               offline_kagglehub):
    family, reference, preset, _ = written
    name, handle = {"gemma": ("gemma_2b_en", "gemma/keras/gemma_2b_en/3"),
                    "mistral": ("mistral_7b_en", "mistral/keras/mistral_7b_en/8")}[family]
    # The tiny keras_hub-written preset stands in for the real download, at the name's cache path.
    model, version = handle.rsplit("/", 1)
    variation = offline_kagglehub / "models" / "keras" / model
    shutil.copytree(preset, variation / version)
    (variation / f"{version}.complete").write_text("")
    lm = CausalLM.from_preset(name)
    texts = ["To be, or not to be", "Fair is foul"]
    np.testing.assert_array_equal(lm.preprocessor(texts)[0]["token_ids"],
                                  numpy(reference.preprocessor(texts)[0]["token_ids"]))
    for ours, theirs in zip(lm.backbone.get_weights(), loaded.backbone.get_weights()):
        np.testing.assert_array_equal(ours, theirs)
