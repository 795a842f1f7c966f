"""Components on their own: packers, the mask generator, layers' config round trips, attention and
padding properties, and the docstring examples."""

import doctest
import importlib
import pkgutil

import keras
import numpy as np
import pytest
from keras import ops

import kcookbook
from kcookbook.components import (
    L2Normalization,
    MaskedLMHead,
    MaskedLMMaskGenerator,
    MaskedMeanPooling,
    MaxPooling2D,
    MultiHeadAttention,
    MultiSegmentPacker,
    PositionEmbedding,
    ReversibleEmbedding,
    StartEndPacker,
    TokenAndPositionEmbedding,
    TransformerEncoderBlock,
)


def numpy(x):
    return keras.ops.convert_to_numpy(x)


# ----------------------------------------------------------------------------- packers


def test_start_end_packer_pads_and_truncates_keeping_start_and_end():
    packer = StartEndPacker(sequence_length=5, start_value=1, end_value=2, pad_value=0)
    out = packer([[7, 8, 9, 10, 11], [7], []])
    assert out["token_ids"].tolist() == [[1, 7, 8, 9, 2], [1, 7, 2, 0, 0], [1, 2, 0, 0, 0]]
    assert out["padding_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]]
    assert out["token_ids"].dtype == np.int32


def test_start_end_packer_left_padding_and_longest_row_length():
    packer = StartEndPacker(start_value=1, pad_value=-1, padding_side="left")
    out = packer([[5, 6, 7], [8]])
    assert out["token_ids"].tolist() == [[1, 5, 6, 7], [-1, -1, 1, 8]]
    assert out["padding_mask"].tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]
    out = packer([[5, 6, 7]], sequence_length=3, add_start_value=False)
    assert out["token_ids"].tolist() == [[5, 6, 7]]


def test_start_end_packer_rejects_a_length_without_room():
    with pytest.raises(ValueError, match="no room"):
        StartEndPacker(sequence_length=1, start_value=1, end_value=2)([[3]])


def test_multi_segment_packer_round_robin_takes_turns():
    # 3 free slots (6 - [CLS] - 2 [SEP]): round robin gives a, b, a.
    packer = MultiSegmentPacker(sequence_length=6, start_value=1, end_value=2, truncate="round_robin")
    out = packer(([[10, 11, 12, 13, 14]], [[20, 21]]))
    assert out["token_ids"].tolist() == [[1, 10, 11, 2, 20, 2]]
    assert out["segment_ids"].tolist() == [[0, 0, 0, 0, 1, 1]]
    # A short segment gives its unused share to the other one.
    out = packer(([[10, 11, 12, 13, 14]], [[]]))
    assert out["token_ids"].tolist() == [[1, 10, 11, 12, 2, 2]]


def test_multi_segment_packer_waterfall_fills_the_first_segment_first():
    packer = MultiSegmentPacker(sequence_length=6, start_value=1, end_value=2, truncate="waterfall")
    out = packer(([[10, 11, 12, 13, 14]], [[20, 21]]))
    assert out["token_ids"].tolist() == [[1, 10, 11, 12, 2, 2]]
    assert out["segment_ids"].tolist() == [[0, 0, 0, 0, 0, 1]]
    out = packer(([[10]], [[20, 21, 22, 23]]))
    assert out["token_ids"].tolist() == [[1, 10, 2, 20, 21, 2]]


def test_multi_segment_packer_pads_with_a_separate_separator_and_three_segments():
    packer = MultiSegmentPacker(sequence_length=10, start_value=1, end_value=2, sep_value=3, pad_value=0)
    out = packer(([[10]], [[20, 21]], [[30]]))
    assert out["token_ids"].tolist() == [[1, 10, 3, 20, 21, 3, 30, 2, 0, 0]]
    assert out["segment_ids"].tolist() == [[0, 0, 0, 1, 1, 1, 2, 2, 0, 0]]
    assert out["padding_mask"].tolist() == [[1, 1, 1, 1, 1, 1, 1, 1, 0, 0]]


def test_multi_segment_packer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="truncate"):
        MultiSegmentPacker(8, 1, 2, truncate="longest")
    with pytest.raises(ValueError, match="same batch size"):
        MultiSegmentPacker(8, 1, 2)(([[1], [2]], [[3]]))


# ----------------------------------------------------------------------------- mask generator

SPECIAL = (0, 1, 2)  # pad, start, end in this test


@pytest.fixture(scope="module")
def masked_batch():
    rng = np.random.default_rng(0)
    rows, length, vocabulary_size = 3000, 64, 1000
    token_ids = rng.integers(3, vocabulary_size, size=(rows, length)).astype("int32")
    lengths = rng.integers(8, length + 1, size=rows)
    padding_mask = (np.arange(length)[None, :] < lengths[:, None]).astype("int32")
    token_ids[:, 0] = 1
    token_ids[np.arange(rows), lengths - 1] = 2
    token_ids[padding_mask == 0] = 0
    generator = MaskedLMMaskGenerator(
        vocabulary_size=vocabulary_size, mask_selection_rate=0.15, mask_selection_length=20,
        mask_token_id=999, unselectable_token_ids=SPECIAL, mask_token_rate=0.8, random_token_rate=0.1,
        seed=7)
    return token_ids, padding_mask, generator(token_ids, padding_mask=padding_mask)


def test_mask_generator_selects_the_requested_fraction(masked_batch):
    token_ids, padding_mask, out = masked_batch
    selectable = (padding_mask == 1) & ~np.isin(token_ids, SPECIAL)
    selected = out["mask_weights"].sum()
    assert abs(selected / selectable.sum() - 0.15) < 0.01
    # Per row: round(rate × selectable), at least 1, at most mask_selection_length.
    expected = np.clip(np.round(selectable.sum(axis=1) * 0.15), 1, 20)
    np.testing.assert_array_equal(out["mask_weights"].sum(axis=1), expected)


def test_mask_generator_replacement_rates(masked_batch):
    token_ids, _, out = masked_batch
    weights = out["mask_weights"].astype(bool)
    rows = np.repeat(np.arange(len(token_ids))[:, None], weights.shape[1], axis=1)[weights]
    positions = out["mask_positions"][weights]
    original = token_ids[rows, positions]
    corrupted = out["token_ids"][rows, positions]
    assert abs(np.mean(corrupted == 999) - 0.8) < 0.02
    assert abs(np.mean((corrupted != 999) & (corrupted != original)) - 0.1) < 0.02
    assert abs(np.mean(corrupted == original) - 0.1) < 0.02
    # Positions that were not selected are untouched.
    unselected = np.ones_like(token_ids, bool)
    unselected[rows, positions] = False
    np.testing.assert_array_equal(out["token_ids"][unselected], token_ids[unselected])


def test_mask_generator_outputs_are_consistent(masked_batch):
    token_ids, _, out = masked_batch
    weights = out["mask_weights"]
    for row in range(len(token_ids)):
        count = int(weights[row].sum())
        assert weights[row, :count].tolist() == [1.0] * count and not weights[row, count:].any()
        positions = out["mask_positions"][row, :count]
        assert np.all(np.diff(positions) > 0), "positions must be sorted and distinct"
        assert not np.isin(token_ids[row, positions], SPECIAL).any(), "selected an unselectable id"
        np.testing.assert_array_equal(out["mask_ids"][row, :count], token_ids[row, positions])


def test_mask_generator_rejects_bad_rates():
    with pytest.raises(ValueError, match="mask_selection_rate"):
        MaskedLMMaskGenerator(10, 0.0, 4, mask_token_id=3)
    with pytest.raises(ValueError, match="at most 1"):
        MaskedLMMaskGenerator(10, 0.2, 4, mask_token_id=3, mask_token_rate=0.9, random_token_rate=0.2)


# ----------------------------------------------------------------------------- layers


def _layer_cases():
    ids = np.array([[3, 1, 4, 1, 5], [9, 2, 6, 0, 0]], "int32")
    hidden = np.random.default_rng(0).normal(size=(2, 5, 8)).astype("float32")
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], "int32")
    attention_mask = mask[:, None, None, :].astype(bool)
    return [
        ("reversible_embedding", lambda: ReversibleEmbedding(10, 8), (ids,), {}),
        ("position_embedding", lambda: PositionEmbedding(16), (hidden,), {}),
        ("token_and_position", lambda: TokenAndPositionEmbedding(10, 16, 8), (ids,), {}),
        ("attention", lambda: MultiHeadAttention(4, 2, num_key_value_heads=2), (hidden,),
         {"attention_mask": attention_mask}),
        ("post_norm_block", lambda: TransformerEncoderBlock(2, 16), (hidden,), {"padding_mask": mask}),
        ("pre_norm_block", lambda: TransformerEncoderBlock(2, 16, normalize_first=True, activation="relu"),
         (hidden,), {"padding_mask": mask}),
        ("mean_pooling", lambda: MaskedMeanPooling(), (hidden,), {"padding_mask": mask}),
        ("l2_normalization", lambda: L2Normalization(), (hidden[:, 0],), {}),
        ("masked_lm_head", lambda: MaskedLMHead(10), (hidden,),
         {"mask_positions": np.array([[0, 2], [1, 1]], "int32")}),
    ]


@pytest.mark.parametrize("name,make,args,kwargs", _layer_cases(), ids=[c[0] for c in _layer_cases()])
def test_layer_config_round_trip_gives_the_same_layer(name, make, args, kwargs):
    keras.utils.set_random_seed(0)
    layer = make()
    expected = numpy(layer(*args, **kwargs))

    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer)
    assert restored.get_config() == layer.get_config()
    restored(*args, **kwargs)  # build
    assert [tuple(w.shape) for w in restored.weights] == [tuple(w.shape) for w in layer.weights]
    restored.set_weights(layer.get_weights())
    np.testing.assert_allclose(numpy(restored(*args, **kwargs)), expected, atol=1e-6)


def _input_gradient(layer, x, weights):
    """d sum(layer(x) · weights) / dx on the current backend."""
    backend = keras.config.backend()
    if backend == "jax":
        import jax

        return np.asarray(jax.grad(lambda v: (layer(v) * weights).sum())(x))
    if backend == "tensorflow":
        import tensorflow as tf

        v = tf.Variable(x)
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(layer(v) * weights)
        return tape.gradient(total, v).numpy()
    import torch

    v = torch.tensor(x, requires_grad=True)
    (layer(v) * torch.tensor(weights)).sum().backward()
    return v.grad.numpy()


@pytest.mark.parametrize("pool_size, strides, padding", [
    (5, 1, "same"), (3, 1, "same"), ((3, 5), 1, "same"), ((1, 3), 1, "same"), (2, 1, "same"), (3, 2, "same"),
    (3, 1, "valid")])
def test_max_pooling_equals_keras_max_pooling(pool_size, strides, padding):
    """Outputs and input gradients equal keras.layers.MaxPooling2D's (distinct values: no ties), and so
    do the shifted maxima's on every backend where the window is odd and stride 1 "same"."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 9, 7, 3)).astype("float32")
    ours, theirs = MaxPooling2D(pool_size, strides, padding), keras.layers.MaxPooling2D(pool_size, strides, padding)
    assert ours.is_shifted() == (strides == 1 and padding == "same" and pool_size != 2)
    expected = numpy(theirs(x))
    weights = rng.normal(size=expected.shape).astype("float32")
    expected_gradient = _input_gradient(theirs, x, weights)
    for pool in [ours, ours.shifted_max] if ours.is_shifted() else [ours]:
        np.testing.assert_array_equal(numpy(pool(x)), expected)
        np.testing.assert_allclose(_input_gradient(pool, x, weights), expected_gradient, atol=1e-6)
    if not ours.is_shifted():
        with pytest.raises(ValueError, match="shifted maxima need"):
            ours.shifted_max(x)
    assert keras.layers.deserialize(keras.layers.serialize(ours)).get_config() == ours.get_config()


def test_reversible_embedding_reverse_is_the_transposed_table():
    emb = ReversibleEmbedding(10, 4)
    emb.build((None,))
    hidden = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    np.testing.assert_allclose(numpy(emb(hidden, reverse=True)), hidden @ numpy(emb.embeddings).T,
                               atol=1e-5)

def test_reversible_embedding_reverse_follows_assigned_weights_in_inference():
    """torch, gradients off: the reverse projection reads a kept transposed copy of the table
    (``torch_speedups.transposed_table``), which must follow every assign; elsewhere the same
    numbers without a copy."""
    import contextlib

    emb = ReversibleEmbedding(10, 4)
    emb.build((None,))
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(3, 4)).astype("float32")
    inference = contextlib.nullcontext()
    if keras.config.backend() == "torch":
        import torch

        inference = torch.no_grad()
    with inference:
        for _ in range(2):
            table = rng.normal(size=(10, 4)).astype("float32")
            emb.embeddings.assign(table)
            np.testing.assert_allclose(numpy(emb(hidden, reverse=True)), hidden @ table.T, atol=1e-5)
    kept = emb.__dict__.get("_transposed_table")
    assert (kept is not None) == (keras.config.backend() == "torch")


@pytest.mark.parametrize("tie_weights", [True, False])
def test_int8_reverse_projection_is_keras_reversible_embedding_and_passes_gradients(tie_weights, monkeypatch):
    """int8 logits equal Keras' own int8 ``keras.layers.ReversibleEmbedding`` (W8A8: each row
    quantised by its absolute maximum, exact int32 sums, both scales) — on torch with gradients off
    through ``torch._int_mm`` too; the gradient reaching the hidden states is the product with the
    dequantised table (straight-through), which Keras' layer does not give (its rounding has none)."""
    import contextlib

    ours = ReversibleEmbedding(50, 16, tie_weights=tie_weights)
    reference = keras.layers.ReversibleEmbedding(50, 16, tie_weights=tie_weights)
    for layer in (ours, reference):
        layer.build((None,))
    rng = np.random.default_rng(4)
    reference.embeddings.assign(numpy(ours.embeddings))
    if not tie_weights:
        reference.reverse_embeddings.assign(numpy(ours.reverse_embeddings))
    ours.quantize("int8"), reference.quantize("int8")
    hidden = rng.normal(size=(2, 3, 16)).astype("float32")
    hidden[0, 0, 5] = 9.0  # an outlier: its row's scale differs from the others'
    expected = numpy(reference(hidden, reverse=True))
    np.testing.assert_allclose(numpy(ours(hidden, reverse=True)), expected, rtol=1e-6, atol=1e-6)
    inference = contextlib.nullcontext()
    if keras.config.backend() == "torch":
        import torch

        inference = torch.no_grad()
        int_mm, calls = torch._int_mm, []
        monkeypatch.setattr(torch, "_int_mm", lambda *a: calls.append(1) or int_mm(*a))
    with inference:
        np.testing.assert_allclose(numpy(ours(hidden, reverse=True)), expected, rtol=1e-6, atol=1e-6)
    if keras.config.backend() == "torch":
        assert calls, "torch's int8 kernel (torch._int_mm) was not used"

    if tie_weights:
        table = numpy(ours._embeddings).astype("float32") / numpy(ours.embeddings_scale)[:, None]
    else:
        table = (numpy(ours.reverse_embeddings).astype("float32") / numpy(ours.reverse_embeddings_scale)).T
    weights = rng.normal(size=(2, 3, 50)).astype("float32")
    gradient = _input_gradient(lambda x: ours(x, reverse=True), hidden, weights)
    np.testing.assert_allclose(gradient, weights @ table, rtol=1e-5, atol=1e-5)


def test_no_transposed_copy_of_a_table_above_the_memory_cap(monkeypatch):
    """A kept copy doubles the table's memory: above ``TRANSPOSED_TABLE_MAX_BYTES`` none is made,
    and the reverse projection is the same product."""
    from kcookbook.components import torch_speedups

    monkeypatch.setattr(torch_speedups, "TRANSPOSED_TABLE_MAX_BYTES", 10 * 4 * 4 - 1)  # one float short
    emb = ReversibleEmbedding(10, 4)
    emb.build((None,))
    hidden = np.random.default_rng(1).normal(size=(3, 4)).astype("float32")
    table = numpy(emb.embeddings)
    if keras.config.backend() == "torch":
        import torch

        with torch.no_grad():
            out = emb(hidden, reverse=True)
    else:
        out = emb(hidden, reverse=True)
    np.testing.assert_allclose(numpy(out), hidden @ table.T, atol=1e-5)
    assert emb.__dict__.get("_transposed_table") is None


def test_grouped_query_attention_equals_full_attention_with_repeated_key_value_heads():
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(1).normal(size=(2, 6, 8)).astype("float32")
    grouped = MultiHeadAttention(num_heads=4, head_dim=2, num_key_value_heads=2)
    full = MultiHeadAttention(num_heads=4, head_dim=2)
    grouped(x), full(x)
    kernel, bias = numpy(grouped.qkv.kernel), numpy(grouped.qkv.bias)
    q, k, v = kernel[:, :8], kernel[:, 8:12], kernel[:, 12:]
    qb, kb, vb = bias[:8], bias[8:12], bias[12:]

    def repeat(w):  # (…, 2 heads × 2) → (…, 4 heads × 2): each kv head serves 2 query heads
        return np.repeat(w.reshape(w.shape[:-1] + (2, 2)), 2, axis=-2).reshape(w.shape[:-1] + (8,))

    full.qkv.kernel.assign(np.concatenate([q, repeat(k), repeat(v)], axis=1))
    full.qkv.bias.assign(np.concatenate([qb, repeat(kb), repeat(vb)]))
    full.output_dense.set_weights(grouped.output_dense.get_weights())
    np.testing.assert_allclose(numpy(grouped(x)), numpy(full(x)), atol=1e-5)


def test_attention_matches_a_numpy_reference():
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(2).normal(size=(1, 4, 6)).astype("float32")
    mask = np.array([[[[True, True, True, False]]]])
    layer = MultiHeadAttention(num_heads=2, head_dim=3)
    ours = numpy(layer(x, attention_mask=mask))
    qkv = x @ numpy(layer.qkv.kernel) + numpy(layer.qkv.bias)
    q, k, v = (qkv[..., i * 6:(i + 1) * 6].reshape(1, 4, 2, 3).transpose(0, 2, 1, 3) for i in range(3))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(3.0)
    scores = np.where(mask, scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    merged = (probs @ v).transpose(0, 2, 1, 3).reshape(1, 4, 6)
    expected = merged @ numpy(layer.output_dense.kernel) + numpy(layer.output_dense.bias)
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_causal_attention_ignores_later_tokens():
    keras.utils.set_random_seed(0)
    layer = MultiHeadAttention(num_heads=2, head_dim=4)
    x = np.random.default_rng(3).normal(size=(1, 6, 8)).astype("float32")
    changed = x.copy()
    changed[:, 4:] += 5.0
    a, b = numpy(layer(x, is_causal=True)), numpy(layer(changed, is_causal=True))
    np.testing.assert_allclose(a[:, :4], b[:, :4], atol=1e-5)
    assert np.abs(a[:, 4:] - b[:, 4:]).max() > 1e-2


@pytest.mark.parametrize("normalize_first", [False, True])
def test_encoder_block_is_invariant_to_padding(normalize_first):
    keras.utils.set_random_seed(0)
    block = TransformerEncoderBlock(2, 16, normalize_first=normalize_first)
    x = np.random.default_rng(4).normal(size=(1, 5, 8)).astype("float32")
    short = numpy(block(x, padding_mask=np.ones((1, 5), "int32")))
    padded_x = np.concatenate([x, np.random.default_rng(5).normal(size=(1, 3, 8)).astype("float32")], 1)
    padded = numpy(block(padded_x, padding_mask=np.array([[1] * 5 + [0] * 3], "int32")))
    np.testing.assert_allclose(padded[:, :5], short, atol=1e-5)


def _padded_batch(length=7):
    """Random hidden states and a padding mask with 0, 2 and 4 padded positions."""
    x = np.random.default_rng(8).normal(size=(3, length, 8)).astype("float32")
    mask = np.array([[1] * length, [1] * (length - 2) + [0] * 2, [1] * (length - 4) + [0] * 4], "int32")
    return x, mask


@pytest.mark.parametrize("normalize_first", [False, True])
def test_encoder_block_first_positions_equal_the_full_block(normalize_first):
    keras.utils.set_random_seed(0)
    block = TransformerEncoderBlock(2, 16, dropout=0.1, normalize_first=normalize_first)
    x, mask = _padded_batch()
    full = numpy(block(x, padding_mask=mask, training=False))
    for n in (1, 3):
        first = numpy(block(x, padding_mask=mask, training=False, query_length=n))
        assert first.shape == (3, n, 8)
        np.testing.assert_allclose(first, full[:, :n], atol=1e-6)
    # an explicit (batch, 1, query, key) mask is cut to the computed queries
    square = (mask[:, None, None, :] * np.tril(np.ones((7, 7), "int32"))[None, None]).astype(bool)
    np.testing.assert_allclose(numpy(block(x, attention_mask=square, query_length=2)),
                               numpy(block(x, attention_mask=square))[:, :2], atol=1e-6)
    symbolic = block(keras.Input((None, 8)), query_length=1)
    assert tuple(symbolic.shape) == (None, 1, 8)


@pytest.mark.parametrize("normalize_first", [False, True])
def test_encoder_block_first_token_gradients_equal_the_full_block(normalize_first):
    """One SGD step (learning rate 1) on a loss of the first token: the weights move by the
    gradient, so equal weights afterwards mean equal gradients for every variable."""
    x, mask = _padded_batch()
    target = np.random.default_rng(9).normal(size=(3, 8)).astype("float32")
    updated = []
    for query_length in (None, 1):
        keras.utils.set_random_seed(0)
        block = TransformerEncoderBlock(2, 16, normalize_first=normalize_first)
        inputs = keras.Input((None, 8)), keras.Input((None,), dtype="int32")
        first = block(inputs[0], padding_mask=inputs[1], query_length=query_length)[:, 0]
        model = keras.Model(inputs, first)
        model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
        before = [numpy(w) for w in model.weights]
        model.train_on_batch((x, mask), target)
        updated.append([numpy(w) for w in model.weights])
    for a, b, w in zip(*updated, before):
        assert np.abs(a - w).max() > 1e-4  # every variable got a gradient
        np.testing.assert_allclose(b, a, atol=1e-6)


def test_attention_query_length_is_checked():
    layer = MultiHeadAttention(num_heads=2, head_dim=4)
    x = np.ones((1, 3, 8), "float32")
    with pytest.raises(ValueError, match="positive Python int"):
        layer(x, query_length=0)
    with pytest.raises(ValueError, match="is_causal"):
        layer(x, is_causal=True, query_length=1)


def test_masked_mean_pooling_ignores_padding():
    x = np.random.default_rng(6).normal(size=(2, 4, 3)).astype("float32")
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], "int32")
    ours = numpy(MaskedMeanPooling()(x, padding_mask=mask))
    np.testing.assert_allclose(ours[0], x[0, :2].mean(0), atol=1e-6)
    np.testing.assert_allclose(ours[1], x[1].mean(0), atol=1e-6)
    normalised = numpy(L2Normalization()(ours))
    np.testing.assert_allclose(np.linalg.norm(normalised, axis=1), 1.0, atol=1e-6)


# ----------------------------------------------------------------------------- BERT backbone


@pytest.fixture(scope="module")
def tiny_bert(tiny_bert_config):
    keras.utils.set_random_seed(0)
    return kcookbook.backbones.BertBackbone(**tiny_bert_config)


def test_bert_config_round_trip(tiny_bert):
    config = tiny_bert.get_config()
    restored = kcookbook.backbones.BertBackbone.from_config(config)
    assert restored.get_config() == config
    assert restored.count_params() == tiny_bert.count_params()
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(tiny_bert))
    assert type(again) is kcookbook.backbones.BertBackbone and again.get_config() == config
    assert {v.path for v in again.weights} == {v.path for v in tiny_bert.weights}


def test_bert_is_invariant_to_padding(tiny_bert):
    rng = np.random.default_rng(7)
    token_ids = rng.integers(5, 50, size=(1, 9)).astype("int32")
    short = {"token_ids": token_ids, "segment_ids": np.zeros_like(token_ids),
             "padding_mask": np.ones_like(token_ids)}
    padded = {"token_ids": np.pad(token_ids, ((0, 0), (0, 7))),
              "segment_ids": np.zeros((1, 16), "int32"),
              "padding_mask": np.pad(np.ones_like(token_ids), ((0, 0), (0, 7)))}
    a, b = tiny_bert(short), tiny_bert(padded)
    np.testing.assert_allclose(numpy(b["sequence_output"])[:, :9], numpy(a["sequence_output"]), atol=1e-5)
    np.testing.assert_allclose(numpy(b["pooled_output"]), numpy(a["pooled_output"]), atol=1e-5)
    # and the padding really is masked: without the mask the outputs change
    unmasked = dict(padded, padding_mask=np.ones((1, 16), "int32"))
    assert np.abs(numpy(tiny_bert(unmasked)["sequence_output"])[:, :9]
                  - numpy(a["sequence_output"])).max() > 1e-3


def test_bert_variable_paths_are_readable(tiny_bert):
    paths = {v.path for v in tiny_bert.weights}
    assert "transformer_layer_0/attention/qkv/kernel" in paths
    assert "token_embedding/embeddings" in paths and "pooled_dense/kernel" in paths


# ----------------------------------------------------------------------------- docstrings


def _modules():
    names = [f"kcookbook.components.{m.name}" for m in pkgutil.iter_modules(kcookbook.components.__path__)]
    return names + ["kcookbook.backbones.bert", "kcookbook.tasks.preprocessor", "kcookbook.tasks.masked_lm",
                    "kcookbook.tasks.text_classifier", "kcookbook.tasks.text_embedder"]


@pytest.mark.parametrize("module_name", _modules())
@pytest.mark.one_backend  # the documentation runs; the components' numerics are tested on every backend above
def test_docstring_examples_run(module_name):
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    globs = {"np": np, "ops": ops, "keras": keras}
    for test in finder.find(module, module_name, globs=dict(vars(module), **globs)):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {module_name}"
    if module_name in FOUNDATION_MODULES_WITH_RUNNABLE_EXAMPLES:
        assert result.attempted > 0, f"{module_name} lost its runnable docstring example"


# Modules whose examples need no network or real weights (the others' examples are marked +SKIP).
FOUNDATION_MODULES_WITH_RUNNABLE_EXAMPLES = {
    f"kcookbook.components.{name}" for name in (
        "activations", "attention", "embeddings", "masked_lm_head", "masking", "packers", "pooling",
        "transformer", "wordpiece")
} | {"kcookbook.backbones.bert", "kcookbook.tasks.preprocessor"}


def textbook_attention(query, key, value, bias=None, mask=None, is_causal=False, scale=None):
    """numpy, float64, heads-first: softmax(q·kᵀ·scale + bias, masked to -inf)·v."""
    query, key, value = (np.asarray(x, "float64") for x in (query, key, value))
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    scores = np.einsum("bqnh,bknh->bnqk", query, key) * scale
    if bias is not None:
        scores = scores + bias
    allowed = np.ones(scores.shape, bool)
    if mask is not None:
        allowed &= mask
    if is_causal:
        allowed &= np.tril(np.ones(scores.shape[-2:], bool))
    scores = np.where(allowed, scores, -np.inf)
    probabilities = np.exp(scores - scores.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    return np.einsum("bnqk,bknh->bqnh", probabilities, value)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("case", ["plain", "bias", "mask", "causal", "scale", "bias+mask+causal", "bias+causal"])
def test_dot_product_attention_equals_the_textbook_formula(case, dtype):
    from kcookbook.components.attention import dot_product_attention, heads_first, heads_first_attention

    rng = np.random.default_rng(0)
    query, key, value = (rng.standard_normal((2, length, 3, 8)).astype("float32") for length in (5, 7, 7))
    kwargs = {}
    if "bias" in case:
        kwargs["bias"] = rng.standard_normal((1, 3, 5, 7)).astype("float32")
    if "mask" in case:  # per batch element and query; every query keeps its first key
        mask = rng.random((2, 1, 5, 7)) < 0.6
        mask[..., 0] = True
        kwargs["mask"] = mask
    if "causal" in case:
        kwargs["is_causal"] = True
    if case == "scale":
        kwargs["scale"] = 0.2
    if dtype != "float32":  # the reference sees the inputs' rounded values
        query, key, value = (ops.convert_to_numpy(ops.cast(ops.cast(x, dtype), "float32"))
                             for x in (query, key, value))
    expected = textbook_attention(query, key, value, **kwargs)
    query, key, value = (ops.cast(x, dtype) for x in (query, key, value))
    for out in (dot_product_attention(query, key, value, **kwargs),
                heads_first_attention(query, *heads_first(key, value), **kwargs)):  # jax's path, on each backend
        assert keras.backend.standardize_dtype(out.dtype) == dtype
        out = ops.convert_to_numpy(ops.cast(out, "float32"))
        assert out.shape == (2, 5, 3, 8)
        np.testing.assert_allclose(out, expected, atol={"float32": 1e-5, "float16": 3e-3, "bfloat16": 3e-2}[dtype])



@pytest.mark.parametrize("case", ["plain", "key_mask", "per_query_mask"])
def test_dot_product_attention_in_query_chunks_equals_the_textbook_formula(case, monkeypatch):
    from kcookbook.components import attention

    rng = np.random.default_rng(1)
    query, key, value = (rng.standard_normal((2, length, 3, 8)).astype("float32") for length in (12, 7, 7))
    mask = None
    if case != "plain":  # a padding mask (one row for every query), or one per query (not chunked)
        mask = rng.random((2, 1, 1 if case == "key_mask" else 12, 7)) < 0.6
        mask[..., 0] = True
    expected = textbook_attention(query, key, value, mask=mask)
    keys, values = attention.heads_first(key, value)
    # 1 KiB of scores per chunk: 2 × 3 × 7 floats a query → chunks of 6 queries on jax (one elsewhere).
    monkeypatch.setattr(attention, "CHUNK_SCORE_BYTES", 1024)
    chunked = keras.config.backend() == "jax" and case != "per_query_mask"
    assert attention._chunk_length(query, keys, None, mask, False) == (6 if chunked else None)
    # 7 queries (a prime): chunks of 1 query, far below the 6 that fit → not chunked.
    assert attention._chunk_length(query[:, :7], keys, None, None, False) is None
    out = attention.dot_product_attention(query, key, value, mask=mask)
    np.testing.assert_allclose(ops.convert_to_numpy(out), expected, atol=1e-5)
    if case != "per_query_mask":  # the chunking itself, on every backend: 4 chunks of 3 queries
        out = attention.attend_in_chunks(
            lambda chunk: attention.heads_first_attention(chunk, keys, values, mask=mask), query, 3)
        np.testing.assert_allclose(ops.convert_to_numpy(out), expected, atol=1e-5)


def test_dynamic_slice_and_update_at_tensor_positions_equal_numpy():
    """The sampler loop's slices at a tensor position (``torch_speedups.dynamic_slice`` /
    ``dynamic_slice_update``: views on torch, ``ops.slice``/``slice_update`` elsewhere) read and write
    the same entries as numpy indexing, and the update leaves its input unchanged."""
    from kcookbook.components.torch_speedups import dynamic_slice, dynamic_slice_update

    x = np.arange(4 * 6 * 3, dtype="float32").reshape(4, 6, 3)
    index = ops.convert_to_tensor(np.int32(2))
    tensor = ops.convert_to_tensor(x)
    np.testing.assert_array_equal(numpy(dynamic_slice(tensor, (0, index, 1), (4, 3, 2))), x[:, 2:5, 1:3])
    update = -np.ones((4, 2, 3), "float32")
    expected = x.copy()
    expected[:, 2:4] = update
    out = dynamic_slice_update(tensor, (0, index, 0), ops.convert_to_tensor(update))
    np.testing.assert_array_equal(numpy(out), expected)
    np.testing.assert_array_equal(numpy(tensor), x)


@pytest.mark.parametrize("keras_internals", ["present", "moved"])
def test_variable_tensor_reads_what_the_value_property_reads(keras_internals, monkeypatch):
    """``variable_tensor`` skips the ``value`` property's checks by reading Keras internals; inside a
    stateless scope it must still give the scope's value, and on a Keras whose internals moved
    (simulated) it must fall back to the public property."""
    from kcookbook.components import torch_speedups

    if keras_internals == "moved":
        monkeypatch.setattr(torch_speedups, "in_stateless_scope", None)
    variable = keras.Variable(np.arange(3, dtype="float32"))
    np.testing.assert_array_equal(ops.convert_to_numpy(torch_speedups.variable_tensor(variable)), [0, 1, 2])
    with keras.StatelessScope(state_mapping=[(variable, ops.ones(3))]):
        np.testing.assert_array_equal(ops.convert_to_numpy(torch_speedups.variable_tensor(variable)), [1, 1, 1])


@pytest.mark.skipif(keras.config.backend() != "torch", reason="torch's inference-time product kernels")
@pytest.mark.parametrize("shape, threads, dtype, kernel", [
    ((1, 512), 2, "float32", "split"),       # one row: two half-products in one batched product
    ((1, 1, 512), 2, "float32", "split"),    # one token of batch 1, leading axes kept
    ((1, 512), 1, "float32", "matmul"),      # one thread: one plain product
    ((8, 1, 512), 2, "float32", "onednn"),   # batch 8: oneDNN's linear on the transposed view
    ((8, 1, 512), 2, "float64", "matmul"),   # not float32: torch's own product
])
def test_inference_product_equals_the_float64_product(shape, threads, dtype, kernel, monkeypatch):
    """``torch_speedups.inference_product`` (a decoded token's dense layers and tied output table on
    torch) picks a kernel by rows, threads and dtype; whichever it takes, it gives numpy's float64
    product to float32 rounding and keeps the leading axes."""
    import torch

    from kcookbook.components import torch_speedups

    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    matrix = rng.standard_normal((512, torch_speedups.ROW_PRODUCT_SPLIT_MIN_WEIGHTS // 512 * 2)).astype(dtype)
    used = []
    monkeypatch.setattr(torch, "bmm", lambda *a, bmm=torch.bmm: used.append("split") or bmm(*a))
    monkeypatch.setattr(torch_speedups, "onednn_linear",
                        lambda *a, f=torch_speedups.onednn_linear: used.append("onednn") or f(*a))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = torch_speedups.inference_product(torch.from_numpy(x), torch.from_numpy(matrix)).numpy()
    finally:
        torch.set_num_threads(before)
    assert out.shape == shape[:-1] + matrix.shape[1:] and out.dtype == dtype
    if kernel != "onednn" or torch.backends.mkldnn.is_available():
        assert used == ([] if kernel == "matmul" else [kernel])
    np.testing.assert_allclose(out, x.astype("float64") @ matrix.astype("float64"), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(keras.config.backend() != "torch", reason="torch's inference-time product kernels")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_onednn_linear_equals_the_float64_product(dtype):
    """``torch_speedups.onednn_linear`` (tied output tables at any batch, dense layers from two rows
    on) multiplies by a ``(out, in)`` weight, a tensor or a transposed view, as numpy's float64
    product of the same (rounded) numbers does, to the dtype's precision."""
    import torch

    from kcookbook.components.torch_speedups import onednn_linear

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((3, 1, 64)).astype("float32")).to(getattr(torch, dtype))
    weight = torch.from_numpy(rng.standard_normal((64, 96)).astype("float32")).to(getattr(torch, dtype))
    expected = x.double().numpy() @ weight.double().numpy()
    tolerance = 1e-5 if dtype == "float32" else 5e-2
    for view in (weight.t(), weight.t().contiguous()):
        out = onednn_linear(x, view)
        if out is None:
            pytest.skip("this torch has no oneDNN linear")
        assert out.dtype == x.dtype and out.shape == (3, 1, 96)
        np.testing.assert_allclose(out.double().numpy(), expected, rtol=tolerance, atol=tolerance * 8)


@pytest.mark.skipif(keras.config.backend() != "torch", reason="torch's int8 kernel for int8 Dense layers")
@pytest.mark.parametrize("shape, activation", [((1, 1, 48), None), ((3, 5, 48), "relu")])
def test_int8_dense_direct_call_equals_keras_int8_call(shape, activation):
    """A decoding step's int8 ``Dense`` on torch (``DIRECT_CALLS`` → ``int8_dense_on_torch``,
    ``torch._int_mm``) gives what Keras' own int8 call gives: the same row quantisation, exact int32
    sums, the same scales — equal to float32 rounding."""
    import torch

    from kcookbook.components.torch_speedups import DIRECT_CALLS, KERAS_CALLS

    rng = np.random.default_rng(0)
    layer = keras.layers.Dense(40, activation=activation)
    layer.build(shape)
    layer.set_weights([rng.standard_normal((48, 40)).astype("float32"), rng.standard_normal(40).astype("float32")])
    layer.quantize("int8")
    x = ops.convert_to_tensor(rng.standard_normal(shape).astype("float32"))
    with torch.no_grad():
        expected = numpy(KERAS_CALLS(layer, x))
        out = numpy(DIRECT_CALLS(layer, x))
    assert out.shape == expected.shape == shape[:-1] + (40,)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    float_out = numpy(x) @ numpy(layer._kernel).astype("float32") / numpy(layer.kernel_scale) + numpy(layer.bias)
    assert np.abs(out - (np.maximum(float_out, 0) if activation else float_out)).max() < 0.5  # int8 noise only
