"""The shared pieces of the from-scratch language-model recipes: Shakespeare split by play, token
streams cut into next-token windows, loss-curve plots, and reading a mixture of experts' routing."""

import keras
import matplotlib
import numpy as np
import pytest

from kcookbook.backbones import MixtralBackbone
from kcookbook.components import BytePairTokenizer, MixtureOfExperts, expert_load, record_routing
from kcookbook.data import SHAKESPEARE_POEMS, load_shakespeare, load_shakespeare_splits, next_token_windows
from kcookbook.plotting import plot_loss_curves

matplotlib.use("Agg")


def test_shakespeare_splits_hold_out_whole_plays():
    splits = load_shakespeare_splits(["macbeth", "tempest"])
    train_names = {w.name for w in splits.train}
    assert [w.name for w in splits.validation] == ["macbeth", "tempest"]
    assert not train_names & {"macbeth", "tempest"}
    assert not train_names & set(SHAKESPEARE_POEMS)  # plays only by default
    every_work = {w.name for w in load_shakespeare()}
    assert train_names == every_work - set(SHAKESPEARE_POEMS) - {"macbeth", "tempest"}
    assert "Is this a dagger which I see before me" in splits.validation_texts[0]
    assert "sonnets" in {w.name for w in load_shakespeare_splits("hamlet", include_poems=True).train}
    with pytest.raises(ValueError, match="close names.*macbeth"):
        load_shakespeare_splits(["macbet"])


def test_next_token_windows_cut_one_stream_of_documents():
    tokenizer = BytePairTokenizer.train(["to be or not to be, that is the question"] * 5, 300,
                                        end_token="<|endoftext|>")
    documents = ["to be or not to be", "that is the question", "whether tis nobler"]
    x, y = next_token_windows(tokenizer, documents, sequence_length=5)
    stream = [i for d in documents for i in tokenizer(d) + [tokenizer.end_token_id]]
    num_windows = len(stream) // 6
    assert x["token_ids"].shape == y.shape == (num_windows, 5)
    assert x["token_ids"].dtype == y.dtype == np.int32
    windows = np.array(stream[:num_windows * 6]).reshape(num_windows, 6)
    np.testing.assert_array_equal(x["token_ids"], windows[:, :-1])
    np.testing.assert_array_equal(y, windows[:, 1:])
    assert x["padding_mask"].min() == 1
    assert tokenizer.detokenize(x["token_ids"][0], skip_special_tokens=False) == \
        tokenizer.detokenize(stream[:5], skip_special_tokens=False)
    with pytest.raises(ValueError, match="fewer than one window.*shorter sequence_length"):
        next_token_windows(tokenizer, ["to be"], sequence_length=50)


def test_plot_loss_curves_draws_train_and_validation_per_run():
    histories = {"dense": {"loss": [5.0, 4.0], "val_loss": [4.5, 4.2]},
                 "moe": keras.callbacks.History()}
    histories["moe"].history = {"loss": [5.1, 3.9]}  # no validation: one line
    ax = plot_loss_curves(histories, steps_per_epoch=50, title="t")
    lines = ax.get_lines()
    assert len(lines) == 3
    assert [list(line.get_ydata()) for line in lines] == [[5.0, 4.0], [4.5, 4.2], [5.1, 3.9]]
    assert list(lines[0].get_xdata()) == [25, 75]  # an epoch's mean training loss: mid-epoch
    assert list(lines[1].get_xdata()) == [50, 100]  # validation: measured at the epoch's end
    with pytest.raises(KeyError, match="'accuracy'"):
        plot_loss_curves(histories, steps_per_epoch=1, metric="accuracy")


def test_record_routing_keeps_the_routers_top_k_choice():
    keras.utils.set_random_seed(0)
    moe = MixtureOfExperts(num_experts=5, top_k=2, intermediate_dim=4)
    x = np.random.default_rng(1).normal(size=(3, 7, 6)).astype("float32")
    with record_routing() as records:
        moe(x)
        moe(x[:1])
    assert [r.shape for r in records[moe]] == [(3, 7, 2), (1, 7, 2)]
    # Independent reference: the router is a plain matmul; its top 2 logits are the chosen experts.
    logits = x @ keras.ops.convert_to_numpy(moe.router.kernel)
    expected = np.sort(np.argsort(-logits, axis=-1)[..., :2], axis=-1)
    np.testing.assert_array_equal(np.sort(records[moe][0], axis=-1), expected)
    moe(x)  # outside the block nothing is recorded
    assert len(records[moe]) == 2


def test_expert_load_counts_real_tokens_per_layer():
    keras.utils.set_random_seed(0)
    backbone = MixtralBackbone(vocabulary_size=50, num_layers=2, num_heads=2, num_key_value_heads=1,
                               hidden_dim=8, intermediate_dim=8, num_experts=4, num_experts_per_token=2)
    token_ids = np.random.default_rng(0).integers(0, 50, size=(2, 10)).astype("int32")
    load = expert_load(backbone, {"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)})
    assert load.shape == (2, 4)
    np.testing.assert_allclose(load.sum(axis=1), 1.0, rtol=1e-6)
    assert np.all(np.isclose(load * 40, np.round(load * 40)))  # 2·10 tokens × top-2 assignments
    # A causal model routes a prefix the same way whatever follows, so padding the tail must only
    # drop the padded positions from the count.
    prefix = {"token_ids": token_ids[:, :6], "padding_mask": np.ones((2, 6), "int32")}
    padded = {"token_ids": token_ids, "padding_mask": np.pad(np.ones((2, 6), "int32"), ((0, 0), (0, 4)))}
    np.testing.assert_allclose(expert_load(backbone, padded), expert_load(backbone, prefix), atol=1e-7)
    assert not np.allclose(expert_load(backbone, prefix), load)
    dense = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no MixtureOfExperts layer"):
        expert_load(dense, np.ones((1, 3)))
