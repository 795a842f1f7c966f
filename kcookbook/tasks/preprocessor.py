"""Preprocessors: raw inputs → the dict of arrays a backbone takes.

A preprocessor runs eagerly on Python objects (returns numpy arrays) and inside ``tf.data`` (returns
tensors); the second path bridges into the first with ``tf.numpy_function``, so both give the same
numbers. Call it as ``preprocessor(x)`` or ``preprocessor(x, y, sample_weight)``, like keras_hub.
"""

import keras
import numpy as np

from kcookbook.components.packers import MultiSegmentPacker
from kcookbook.components.inputs import as_text, as_text_list, is_tf_tensor
from kcookbook.components.preset_entry import load_preset


class Preprocessor:
    """Base class: holds a tokenizer; subclasses implement ``numpy_call(segments) -> dict``."""

    # Names of the arrays numpy_call returns, for the tf.data bridge; all int32 of length
    # sequence_length unless ``output_spec`` says otherwise.
    output_names = ()

    def output_spec(self, name):
        """(dtype, length) of one output of numpy_call."""
        return "int32", self.sequence_length

    def __init__(self, tokenizer, sequence_length=512):
        self.tokenizer = tokenizer
        self.sequence_length = sequence_length

    def __call__(self, x, y=None, sample_weight=None):
        segments = tuple(x) if isinstance(x, tuple) else (x,)
        if any(is_tf_tensor(s) for s in segments):
            out = self._tf_call(segments)
        else:
            out = self.numpy_call(segments)
        return self.pack(out, y, sample_weight, num_segments=len(segments))

    def pack(self, features, y=None, sample_weight=None, num_segments=1):
        """Split numpy_call's dict into (x, y, sample_weight); most preprocessors produce x only.

        ``num_segments`` is how many segments ``x`` had (a task whose second segment is its
        targets learns only when it is 2)."""
        return keras.utils.pack_x_y_sample_weight(features, y, sample_weight)

    def numpy_call(self, segments):
        raise NotImplementedError

    def encode_texts(self, segment):
        """One segment of raw text (a str, a list of str...) → a list of token id lists, no packing."""
        return self.tokenizer.encode_batch([as_text(t) for t in as_text_list(segment)])

    def _tf_call(self, segments):
        import tensorflow as tf

        rank = segments[0].shape.rank

        def run(*arrays):
            batch = [np.atleast_1d(a) for a in arrays]
            out = self.numpy_call(tuple(batch))
            return [out[name] for name in self.output_names]

        specs = [self.output_spec(name) for name in self.output_names]
        outputs = tf.numpy_function(run, list(segments), [tf.as_dtype(d) for d, _ in specs],
                                    stateful=False)
        result = {}
        for name, tensor, (_, length) in zip(self.output_names, outputs, specs):
            tensor.set_shape([None] + list(length) if isinstance(length, tuple) else [None, length])
            result[name] = tensor[0] if rank == 0 else tensor
        return result

    def get_config(self):
        return {"tokenizer": keras.saving.serialize_keras_object(self.tokenizer),
                "sequence_length": self.sequence_length}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("tokenizer"), dict):
            config["tokenizer"] = keras.saving.deserialize_keras_object(config["tokenizer"])
        return cls(**config)

    @classmethod
    def from_preset(cls, handle, **kwargs):
        """The preprocessor of a preset, with its tokenizer and sequence length."""
        return load_preset(handle).load_preprocessor(cls, **kwargs)


@keras.saving.register_keras_serializable(package="kcookbook")
class TextClassifierPreprocessor(Preprocessor):
    """Tokenize one or more text segments and pack them as ``[CLS] a [SEP] b [SEP]``.

    Works for any tokenizer with ``start_token_id``, ``end_token_id`` and ``pad_token_id``.

    >>> from kcookbook.components import WordPieceTokenizer
    >>> pre = TextClassifierPreprocessor(
    ...     WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "film"]), sequence_length=6)
    >>> pre(["good film"])["token_ids"].tolist()
    [[2, 4, 5, 3, 0, 0]]
    """

    output_names = ("token_ids", "segment_ids", "padding_mask")

    def __init__(self, tokenizer, sequence_length=512, truncate="round_robin"):
        super().__init__(tokenizer, sequence_length)
        self.truncate = truncate
        self.packer = MultiSegmentPacker(
            sequence_length, start_value=tokenizer.start_token_id, end_value=tokenizer.end_token_id,
            pad_value=tokenizer.pad_token_id, truncate=truncate)

    def numpy_call(self, segments):
        return self.packer(tuple(self.encode_texts(s) for s in segments))

    def get_config(self):
        config = super().get_config()
        config["truncate"] = self.truncate
        return config
