"""Decoder components against independent references: transformers' reference implementations of
rotary embeddings, RMSNorm and the Mixtral load-balancing loss; samplers against their definitions."""

import keras
import numpy as np
import pytest
from keras import ops

from kcookbook.components import (
    CausalSelfAttention,
    DecoderBlock,
    GatedFeedForward,
    MixtureOfExperts,
    RMSNormalization,
    RotaryEmbedding,
    get_sampler,
    load_balancing_loss,
)
from kcookbook.components.samplers import (
    BeamSampler,
    ContrastiveSampler,
    GreedySampler,
    TemperatureSampler,
    TopKSampler,
    TopPSampler,
)

import torch


@pytest.fixture(autouse=True)
def fixed_seed():
    keras.utils.set_random_seed(0)


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def test_rotary_embedding_matches_transformers_apply_rotary_pos_emb():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, rotate_half  # noqa: F401

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 3, 8)).astype("float32")  # (batch, length, heads, head_dim)
    positions = np.arange(4, 11)
    theta = 500.0
    inverse = 1.0 / theta ** (np.arange(0, 8, 2) / 8)
    angles = np.concatenate([positions[:, None] * inverse] * 2, axis=-1)[None]  # (1, length, dim)
    cos, sin = torch.tensor(np.cos(angles), dtype=torch.float32), torch.tensor(np.sin(angles), dtype=torch.float32)
    xt = torch.tensor(x).transpose(1, 2)  # transformers: (batch, heads, length, dim)
    expected, _ = apply_rotary_pos_emb(xt, xt, cos, sin)
    ours = RotaryEmbedding(max_wavelength=theta)(x, positions=ops.convert_to_tensor(positions))
    np.testing.assert_allclose(to_numpy(ours), expected.transpose(1, 2).numpy(), atol=1e-5)


@pytest.mark.parametrize("unit_offset", [False, True])
def test_rms_normalization_matches_transformers(unit_offset):
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 5, 16)).astype("float32") * 3
    weight = rng.normal(size=(16,)).astype("float32")
    reference = (GemmaRMSNorm if unit_offset else LlamaRMSNorm)(16, eps=1e-5)
    with torch.no_grad():
        reference.weight.copy_(torch.tensor(weight))
        expected = reference(torch.tensor(x)).numpy()
    norm = RMSNormalization(epsilon=1e-5, unit_offset=unit_offset)
    norm.build(x.shape)
    norm.scale.assign(weight)
    np.testing.assert_allclose(to_numpy(norm(x)), expected, atol=1e-5)


def test_load_balancing_loss_matches_transformers():
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    logits = np.random.default_rng(2).normal(size=(12, 4)).astype("float32") * 2
    expected = load_balancing_loss_func((torch.tensor(logits),), num_experts=4, top_k=2).item()
    assert float(to_numpy(load_balancing_loss(ops.convert_to_tensor(logits), top_k=2))) == pytest.approx(
        expected, rel=1e-5)


def test_mixture_of_experts_adds_aux_loss_only_in_training():
    moe = MixtureOfExperts(num_experts=4, top_k=2, intermediate_dim=8, aux_loss_coefficient=0.5)
    x = np.random.default_rng(3).normal(size=(2, 3, 8)).astype("float32")
    moe(x, training=False)
    assert len(moe.losses) == 0
    moe(x, training=True)
    assert len(moe.losses) == 1
    router_logits = ops.reshape(moe.router(x), (-1, 4))
    expected = 0.5 * float(to_numpy(load_balancing_loss(router_logits, top_k=2)))
    assert float(to_numpy(moe.losses[0])) == pytest.approx(expected, rel=1e-5)


def test_mixture_of_experts_with_all_experts_is_the_weighted_sum_of_gated_feed_forwards():
    """top_k = num_experts: every expert contributes with its softmax weight (checked with numpy)."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1, 3, 8)).astype("float32")
    moe = MixtureOfExperts(num_experts=3, top_k=3, intermediate_dim=5, activation="silu")
    out = to_numpy(moe(x))
    router = to_numpy(moe.router.kernel)
    weights = np.exp(x @ router)
    weights /= weights.sum(-1, keepdims=True)
    expected = 0
    for e in range(3):
        gate, up = np.split(x @ to_numpy(moe.expert_gate_up)[e], 2, axis=-1)
        silu = gate / (1 + np.exp(-gate))
        expected = expected + weights[..., e:e + 1] * ((silu * up) @ to_numpy(moe.expert_output)[e])
    np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 1, 8), (3, 1, 8), (2, 5, 8)])
def test_mixture_of_experts_top_2_of_8_matches_numpy_routing(shape):
    """Few tokens (1 and 3 here: tokens x top_k < experts) gather their experts' weights, many tokens
    (10) run every expert densely; both equal a numpy top-2 routing, token by token."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=shape).astype("float32")
    moe = MixtureOfExperts(num_experts=8, top_k=2, intermediate_dim=5, activation="silu")
    moe.build(shape)
    assert moe._few_tokens(x) == (shape[0] * shape[1] * 2 < 8)
    out = to_numpy(moe(x))
    gate_up, output = to_numpy(moe.expert_gate_up), to_numpy(moe.expert_output)
    expected = np.zeros_like(x)
    for b, t in np.ndindex(shape[:2]):
        logits = x[b, t] @ to_numpy(moe.router.kernel)
        top = np.argsort(logits)[::-1][:2]
        weights = np.exp(logits[top] - logits[top].max())
        for e, w in zip(top, weights / weights.sum()):
            gate, up = np.split(x[b, t] @ gate_up[e], 2)
            expected[b, t] += w * ((gate / (1 + np.exp(-gate))) * up) @ output[e]
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_parameter_counts_active_is_the_router_and_top_k_experts():
    """A Mixtral with E experts of width i, top-k, has E·3·h·i expert weights per layer of which k·3·h·i
    work on a token: its active count is a dense Llama of width k·i plus the routers (h·E per layer)."""
    from kcookbook.backbones import LlamaBackbone, MixtralBackbone
    from kcookbook.components import parameter_counts

    layers, hidden, width, experts, top_k = 2, 8, 4, 4, 2
    common = dict(vocabulary_size=32, num_layers=layers, num_heads=2, num_key_value_heads=1,
                  hidden_dim=hidden, max_sequence_length=16)
    moe = MixtralBackbone(intermediate_dim=width, num_experts=experts, num_experts_per_token=top_k, **common)
    dense = LlamaBackbone(intermediate_dim=top_k * width, **common)
    total, active = parameter_counts(moe)
    assert total == moe.count_params()
    assert total - active == layers * (experts - top_k) * 3 * hidden * width
    assert active == dense.count_params() + layers * hidden * experts
    assert tuple(parameter_counts(dense)) == (dense.count_params(), dense.count_params())


def test_gated_feed_forward_is_down_of_activation_gate_times_up():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 4)).astype("float32")
    ffn = GatedFeedForward(intermediate_dim=3, activation="silu")
    out = to_numpy(ffn(x))
    gate, up = np.split(x @ to_numpy(ffn.gate_up.kernel), 2, axis=-1)
    np.testing.assert_allclose(out, ((gate / (1 + np.exp(-gate))) * up) @ to_numpy(ffn.output_dense.kernel),
                               atol=1e-5)


@pytest.mark.parametrize("sliding_window", [None, 3])
def test_cached_attention_equals_full_sequence_attention(sliding_window):
    """Feeding one token at a time through the cache gives the full causal attention's outputs."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 7, 16)).astype("float32")
    attention = CausalSelfAttention(num_heads=4, head_dim=4, num_key_value_heads=2,
                                    rotary_max_wavelength=10000, sliding_window=sliding_window)
    full = to_numpy(attention(x))
    cache = attention.empty_cache(batch_size=2, max_length=10)
    steps = []
    for i in range(7):
        out, cache = attention(x[:, i:i + 1], cache=cache, cache_index=i)
        steps.append(to_numpy(out))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)


def test_sliding_window_hides_keys_further_than_the_window():
    """With window w, changing a token more than w positions back leaves later outputs unchanged."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(1, 8, 16)).astype("float32")
    attention = CausalSelfAttention(num_heads=2, head_dim=8, rotary_max_wavelength=10000,
                                    sliding_window=3)
    changed = x.copy()
    changed[0, 0] += 5.0
    a, b = to_numpy(attention(x)), to_numpy(attention(changed))
    np.testing.assert_allclose(a[0, 3:], b[0, 3:], atol=1e-6)  # positions 3.. see only 1..
    assert np.abs(a[0, :3] - b[0, :3]).max() > 1e-3


def test_decoder_block_padding_does_not_change_real_tokens():
    rng = np.random.default_rng(8)
    block = DecoderBlock(num_heads=2, head_dim=4, intermediate_dim=16, rotary_max_wavelength=1e4)
    x = rng.normal(size=(1, 6, 8)).astype("float32")
    padded = np.concatenate([x, rng.normal(size=(1, 3, 8)).astype("float32")], axis=1)
    mask = np.array([[1] * 6 + [0] * 3], "int32")
    out = to_numpy(block(padded, padding_mask=mask))
    np.testing.assert_allclose(out[:, :6], to_numpy(block(x)), atol=1e-5)
    assert np.isfinite(out).all()


def test_decoding_step_computed_once_per_attention_configuration_equals_per_block(monkeypatch):
    """``run_decoder_blocks`` with caches computes positions, rotary angles and the mask once per
    attention configuration (``DecodingStep``) and shares them: blocks 0 and 2 share, the sliding
    window and the other rotary base get their own. The outputs and caches equal each block
    computing its own step, and the cached pass equals the full-sequence pass."""
    from kcookbook.components.causal_attention import CausalSelfAttention as Attention
    from kcookbook.components.decoder_block import run_decoder_blocks

    def block(**options):
        return DecoderBlock(num_heads=4, head_dim=4, intermediate_dim=16, num_key_value_heads=2,
                            **{"rotary_max_wavelength": 1e4, **options})

    blocks = [block(), block(sliding_window=2), block(), block(rotary_max_wavelength=100.0)]
    x = np.random.default_rng(9).normal(size=(2, 5, 16)).astype("float32")
    full = x
    for b in blocks:
        full = b(full)
    calls = []
    original = Attention.decoding_step
    monkeypatch.setattr(Attention, "decoding_step",
                        lambda self, *args: calls.append(self) or original(self, *args))
    shared_caches = [b.attention.empty_cache(2, 8) for b in blocks]
    own_caches = [b.attention.empty_cache(2, 8) for b in blocks]
    shared_out, own_out = [], []
    for start, stop in ((0, 3), (3, 4), (4, 5)):  # a 3-token chunk, then one token at a time
        calls.clear()
        out, shared_caches = run_decoder_blocks(blocks, x[:, start:stop], caches=shared_caches,
                                                cache_index=start)
        assert len(calls) == 3
        shared_out.append(to_numpy(out))
        out = x[:, start:stop]
        for i, b in enumerate(blocks):
            out, own_caches[i] = b(out, cache=own_caches[i], cache_index=start)
        own_out.append(to_numpy(out))
    np.testing.assert_array_equal(np.concatenate(shared_out, 1), np.concatenate(own_out, 1))
    for shared, own in zip(shared_caches, own_caches):
        np.testing.assert_array_equal(to_numpy(shared), to_numpy(own))
    np.testing.assert_allclose(np.concatenate(shared_out, 1), to_numpy(full), atol=1e-5)


# ----- samplers -----

def random_logits(seed=0, batch=4, vocabulary=50):
    return np.random.default_rng(seed).normal(size=(batch, vocabulary)).astype("float32") * 2


def draws(sampler, logits, n=40, seed=0):
    """``n`` independent draws per row, as an (n, batch) array (one call on n stacked copies)."""
    stacked = ops.convert_to_tensor(np.tile(logits, (n, 1)))
    return to_numpy(sampler.next_token(stacked, seed=seed, step=3)).reshape(n, -1)


def test_greedy_is_argmax():
    logits = random_logits()
    np.testing.assert_array_equal(draws(GreedySampler(), logits, 1)[0], logits.argmax(-1))


def test_top_k_never_leaves_the_top_k():
    logits = random_logits(1)
    picked = draws(TopKSampler(k=3), logits)
    top3 = np.argsort(-logits, axis=-1)[:, :3]
    for row in range(logits.shape[0]):
        assert set(picked[:, row]) <= set(top3[row])
        assert len(set(picked[:, row])) > 1  # it samples, not always the best


def test_top_p_stays_inside_the_nucleus():
    logits = random_logits(2)
    p = 0.6
    picked = draws(TopPSampler(p=p), logits)
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    for row in range(logits.shape[0]):
        order = np.argsort(-probabilities[row])
        mass_before = np.cumsum(probabilities[row][order]) - probabilities[row][order]
        nucleus = set(order[mass_before < p])
        assert set(picked[:, row]) <= nucleus


def test_temperature_towards_zero_is_greedy_and_one_follows_the_distribution():
    logits = random_logits(3)
    np.testing.assert_array_equal(draws(TemperatureSampler(1e-4), logits, 5),
                                  np.tile(logits.argmax(-1), (5, 1)))
    np.testing.assert_array_equal(draws(TemperatureSampler(0.0), logits, 1)[0], logits.argmax(-1))
    # temperature 1 on two tokens with probabilities 0.8 / 0.2: the frequency is close to 0.8
    two = np.log(np.array([[0.8, 0.2]], "float32"))
    picks = draws(TemperatureSampler(1.0), two, 400)[:, 0]
    assert abs((picks == 0).mean() - 0.8) < 0.07


def test_same_seed_same_sample_and_samplers_by_name():
    logits = random_logits(4)
    sampler = get_sampler("top_k")
    np.testing.assert_array_equal(draws(sampler, logits, seed=11), draws(sampler, logits, seed=11))
    assert (draws(sampler, logits, seed=11) != draws(sampler, logits, seed=12)).any()
    for name, cls in [("greedy", GreedySampler), ("top_p", TopPSampler), ("beam", BeamSampler),
                      ("contrastive", ContrastiveSampler), ("temperature", TemperatureSampler)]:
        assert isinstance(get_sampler(name), cls)


def test_unknown_sampler_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="Valid names: beam, contrastive, greedy"):
        get_sampler("nucleus")
    with pytest.raises(ValueError, match="p must be"):
        TopPSampler(p=1.5)
