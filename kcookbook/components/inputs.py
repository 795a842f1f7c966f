"""What kind of input a tokenizer, image converter, preprocessor or task was handed.

Every entry point takes Python objects (str, lists, numpy arrays) eagerly and TensorFlow tensors or
datasets inside ``tf.data``; these checks tell them apart without importing TensorFlow.
"""

import numpy as np


def is_tf_tensor(x):
    """True for a TensorFlow tensor (dense, ragged or sparse), e.g. a ``tf.data`` element."""
    return type(x).__module__.startswith("tensorflow") and hasattr(x, "dtype")


def is_tf_dataset(x):
    """True for a ``tf.data.Dataset``."""
    return type(x).__module__.startswith("tensorflow") and hasattr(x, "element_spec")


def valid_unicode(text):
    """``text`` with lone surrogates (U+D800–U+DFFF, left by ``surrogateescape`` decoding or a JSON
    ``"\\ud800"``) replaced by U+FFFD, as undecodable bytes are; a pair written as two code units
    becomes its character. Tokenizer engines cannot encode lone surrogates (a bare TypeError).

    >>> valid_unicode("a\\ud800b"), valid_unicode("\\ud83d\\ude00")
    ('a\ufffdb', '😀')
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def as_text_list(segment):
    """One segment of raw text input as a list (accepts str, bytes, lists, numpy arrays and pandas
    Series); its elements are checked by :func:`as_text`."""
    if isinstance(segment, (str, bytes)):
        return [segment]
    if isinstance(segment, np.ndarray):
        return [s.decode("utf-8") if isinstance(s, bytes) else s for s in segment.reshape(-1).tolist()]
    if isinstance(segment, (list, tuple)):
        return list(segment)
    if hasattr(segment, "tolist") and not isinstance(segment, dict):  # e.g. a pandas Series of str
        return as_text_list(np.asarray(segment.tolist(), dtype=object))
    raise TypeError(
        f"Text tasks take strings: a str, a list of str, or a tf.data dataset of strings. Got "
        f"{type(segment).__name__}. If you already have token ids, pass a dict of arrays instead."
    )


def as_text(text):
    """One element of text input as a str (bytes are decoded as UTF-8, lone surrogates become U+FFFD);
    anything else is refused."""
    if isinstance(text, bytes):
        return text.decode("utf-8", errors="replace")
    if not isinstance(text, str):
        raise TypeError(
            f"Text tasks take strings, but an input element is {type(text).__name__} ({text!r:.40}). "
            "Convert it with str(), or pass a dict of token ids if it is already tokenized."
        )
    return valid_unicode(text)
