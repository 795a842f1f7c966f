"""MaskedLM: predict hidden tokens, BERT's pretraining task, on raw strings.

``fit`` masks 15% of the tokens of each string at random (80% → [MASK], 10% → random, 10% kept) and
learns to predict the originals. ``predict`` on a string that already holds ``[MASK]`` tokens
returns the logits at those positions; ``fill_mask`` turns them into the top-k tokens and their
probabilities at each mask.

    >>> mlm = MaskedLM.from_preset("bert_tiny_en_uncased")  # needs Kaggle  # doctest: +SKIP
    >>> mlm.fill_mask(["the flight was [MASK] again"], top_k=3)  # doctest: +SKIP
    [[[(token, probability), (token, probability), (token, probability)]]]  # per text, per mask
"""

import keras
import numpy as np

from kcookbook.components import MaskedLMHead, MaskedLMMaskGenerator
from kcookbook.components.validation import check_ids_in_range, eager_array
from kcookbook.tasks.preprocessor import TextClassifierPreprocessor
from kcookbook.tasks.task import Task


@keras.saving.register_keras_serializable(package="kcookbook")
class MaskedLMPreprocessor(TextClassifierPreprocessor):
    """Pack text like a classifier, then choose and corrupt positions to predict.

    Rows that already contain the mask token keep their masks and nothing else is corrupted
    (fill-mask); other rows are masked at random with ``mask_selection_rate``.
    Returns ``(x, y, sample_weight)`` = ``({token_ids, segment_ids, padding_mask, mask_positions},
    mask_ids, mask_weights)``.
    """

    output_names = ("token_ids", "segment_ids", "padding_mask", "mask_positions", "mask_ids",
                    "mask_weights")

    def __init__(self, tokenizer, sequence_length=512, truncate="round_robin", mask_selection_rate=0.15,
                 mask_selection_length=None, mask_token_rate=0.8, random_token_rate=0.1, seed=None):
        super().__init__(tokenizer, sequence_length, truncate)
        if tokenizer.mask_token_id is None:
            raise ValueError(f"{tokenizer.name} has no mask token, so it cannot feed a MaskedLM.")
        self.mask_selection_rate = mask_selection_rate
        self.mask_selection_length = mask_selection_length or max(1, int(round(
            sequence_length * mask_selection_rate)))
        self.mask_token_rate = mask_token_rate
        self.random_token_rate = random_token_rate
        self.seed = seed
        special = [tokenizer.start_token_id, tokenizer.end_token_id, tokenizer.pad_token_id]
        self.masker = MaskedLMMaskGenerator(
            tokenizer.vocabulary_size, mask_selection_rate, self.mask_selection_length,
            tokenizer.mask_token_id, unselectable_token_ids=[t for t in special if t is not None],
            mask_token_rate=mask_token_rate, random_token_rate=random_token_rate, seed=seed)

    def output_spec(self, name):
        if name.startswith("mask_"):
            return ("float32" if name == "mask_weights" else "int32"), self.mask_selection_length
        return super().output_spec(name)

    def numpy_call(self, segments):
        packed = super().numpy_call(segments)
        token_ids = packed["token_ids"]
        masked = self.masker(token_ids, padding_mask=packed["padding_mask"])
        mask_id = self.tokenizer.mask_token_id
        for row in np.flatnonzero((token_ids == mask_id).any(axis=1)):
            positions = np.flatnonzero(token_ids[row] == mask_id)[: self.mask_selection_length]
            masked["token_ids"][row] = token_ids[row]
            for key, value in (("mask_positions", 0), ("mask_ids", mask_id), ("mask_weights", 0.0)):
                masked[key][row] = value
            masked["mask_positions"][row, : len(positions)] = positions
            masked["mask_weights"][row, : len(positions)] = 1.0
        return {**packed, **masked}

    def pack(self, features, y=None, sample_weight=None, num_segments=1):
        x = {k: features[k] for k in ("token_ids", "segment_ids", "padding_mask", "mask_positions")}
        return x, features["mask_ids"], features["mask_weights"]

    def get_config(self):
        config = super().get_config()
        config.update({"mask_selection_rate": self.mask_selection_rate,
                       "mask_selection_length": self.mask_selection_length,
                       "mask_token_rate": self.mask_token_rate,
                       "random_token_rate": self.random_token_rate, "seed": self.seed})
        return config


@keras.saving.register_keras_serializable(package="kcookbook")
class MaskedLM(Task):
    """Masked language model on an encoder backbone with a tied ``token_embedding``.

    Args:
        backbone: an encoder with ``sequence_output`` and a ``token_embedding`` attribute.
        preprocessor: a ``MaskedLMPreprocessor``, or None to feed dicts with ``mask_positions``.
    """

    preprocessor_cls = MaskedLMPreprocessor

    def __init__(self, backbone, preprocessor=None, name="masked_lm", **kwargs):
        inputs = dict(backbone.input)
        inputs["mask_positions"] = keras.Input(shape=(None,), dtype="int32", name="mask_positions")
        outputs = backbone({k: v for k, v in inputs.items() if k != "mask_positions"})
        head = MaskedLMHead(
            backbone.token_embedding.input_dim, token_embedding=backbone.token_embedding,
            activation="gelu", layer_norm_epsilon=getattr(backbone, "layer_norm_epsilon", 1e-5),
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02), name="mlm_head")
        logits = head(outputs["sequence_output"], mask_positions=inputs["mask_positions"])
        super().__init__(inputs=inputs, outputs=logits, name=name, **kwargs)
        self._init_task(backbone, preprocessor)
        self.compile()

    def check_inputs(self, x):
        """The backbone's checks, and ``mask_positions`` inside the sequence (jax would read a
        clamped position silently)."""
        super().check_inputs(x)
        positions, token_ids = (eager_array(x.get(k)) for k in ("mask_positions", "token_ids"))
        if positions is not None and token_ids is not None and token_ids.ndim == 2:
            check_ids_in_range("mask_positions", positions, token_ids.shape[1], "sequence length",
                               " A mask position indexes a token of its row.")

    def compile(self, optimizer="auto", loss="auto", weighted_metrics="auto", **kwargs):
        """Defaults: Adam(5e-5), cross-entropy on the masked positions, weighted accuracy."""
        if optimizer == "auto":
            optimizer = keras.optimizers.Adam(5e-5)
        if loss == "auto":
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if weighted_metrics == "auto":
            weighted_metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        super().compile(optimizer=optimizer, loss=loss, weighted_metrics=weighted_metrics, **kwargs)

    def fill_mask(self, texts, top_k=5, batch_size=32):
        """The ``top_k`` most likely tokens at each mask token of each text, with their probabilities.

        Args:
            texts: a string or a list of strings, each holding the tokenizer's mask token (``[MASK]``
                for BERT vocabularies) at least once, within the preprocessor's ``sequence_length``.
            top_k: how many predictions per mask, most likely first.
            batch_size: texts per forward pass.

        Returns:
            For each text, for each of its masks in order, a list of ``top_k`` ``(token, probability)``
            pairs (the softmax of the logits over the whole vocabulary). A single string gives the
            list for that string.
        """
        if self.preprocessor is None:
            raise ValueError(
                f"{self.name} has no preprocessor, so fill_mask cannot tokenize text. Build the task "
                "with one (MaskedLM.from_preset(preset), or preprocessor=MaskedLMPreprocessor(tokenizer)), "
                "or call predict on token ids with mask_positions.")
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        if not texts:
            raise ValueError("fill_mask got no texts: pass at least one string holding a mask token.")
        tokenizer = self.preprocessor.tokenizer
        mask_id, vocabulary = tokenizer.mask_token_id, tokenizer.vocabulary_size
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= vocabulary:
            raise ValueError(f"top_k={top_k!r}: pass a whole number of predictions per mask, 1…{vocabulary} "
                             "(the vocabulary size).")
        mask_token = tokenizer.id_to_token(mask_id)
        # Packed as the preprocessor packs, without its random corruption (a row with no mask would
        # get random ones); every mask of a text is predicted, however many.
        x = dict(self.preprocessor.packer((self.preprocessor.encode_texts(texts),)))
        token_ids = np.asarray(x["token_ids"])
        positions = [np.flatnonzero(row == mask_id) for row in token_ids]
        for i, (text, found) in enumerate(zip(texts, positions)):
            if len(found) == 0:
                raise ValueError(
                    f"Text {i} ({text!r:.80}) holds no mask token {mask_token!r} within the first "
                    f"{self.preprocessor.sequence_length} tokens, so there is nothing to fill. Write "
                    f"{mask_token!r} where a word should be predicted (before the sequence_length cut).")
        x["mask_positions"] = np.zeros((len(texts), max(map(len, positions))), "int32")
        for i, found in enumerate(positions):
            x["mask_positions"][i, : len(found)] = found
        logits = np.asarray(self.predict(x, batch_size=batch_size, verbose=0), dtype="float64")
        logits -= logits.max(axis=-1, keepdims=True)
        probabilities = np.exp(logits)
        probabilities /= probabilities.sum(axis=-1, keepdims=True)
        tokens = tokenizer.get_vocabulary()  # once: id_to_token may copy it on every call
        best = np.argsort(-probabilities, axis=-1, kind="stable")[..., :top_k]
        results = [[[(tokens[t], p) for t, p in zip(best[i, j].tolist(), probabilities[i, j, best[i, j]].tolist())]
                    for j in range(len(found))] for i, found in enumerate(positions)]
        return results[0] if single else results
