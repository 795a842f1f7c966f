"""Byte-level byte-pair encoding (GPT-2, RoBERTa, SmolLM2, Llama-3 vocabularies).

Text is split into pre-tokens (words, numbers, punctuation runs, with the leading space kept), each
pre-token's UTF-8 bytes are spelled in GPT-2's 256-character byte alphabet (a space is ``Ġ``), and
the learned merges are applied in rank order. The engine is the Rust ``tokenizers`` library, so a
batch of texts is encoded in one call and the ids equal Hugging Face's ``GPT2TokenizerFast``.

The files are GPT-2's: ``vocab.json`` (token → id) and ``merges.txt`` (one ``left right`` pair a
line, best first). How a model pre-splits text differs between vocabularies; ``pre_tokenizer``
names the rule:

* ``"gpt2"``: GPT-2's regex (``'s|'t|… | ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``).
* ``"gpt2_single_digits"``: every digit on its own first, then GPT-2's regex (StarCoder, SmolLM,
  SmolLM2: llama.cpp's ``smollm``/``starcoder`` pre-tokenizer).
* ``"llama3"``: Llama-3's regex (case-insensitive contractions, numbers in groups of up to 3).
* ``"clip"``: CLIP's rules: the text is NFC-normalised, every whitespace run becomes one space and
  it is lower-cased; pre-tokens are letter runs, single digits, punctuation runs and English
  contractions (spaces dropped); the last symbol of every word carries the end-of-word suffix
  ``</w>`` (so ``"a"`` inside a word and ``"a</w>"`` ending one are different tokens), and decoding
  turns the suffix back into a space. The vocabulary of such merges: :func:`end_of_word_vocabulary`.

    >>> vocab = {"<|endoftext|>": 0, "a": 1, "b": 2, "Ġ": 3, "Ġa": 4, "ab": 5}
    >>> tokenizer = BytePairTokenizer(vocab, ["Ġ a", "a b"])
    >>> tokenizer("ab a<|endoftext|>")
    [5, 4, 0]
    >>> tokenizer.detokenize([5, 4, 0], skip_special_tokens=False)
    'ab a<|endoftext|>'
"""

import json
import os

import keras
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as _RustTokenizer

from kcookbook.components.hf_tokenizer import HuggingFaceTokenizer

GPT2_END_OF_TEXT = "<|endoftext|>"

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CLIP_SPLIT = (r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"
              r"|[^\s\p{L}\p{N}]+")
END_OF_WORD_SUFFIX = "</w>"


def _pre_tokenizer(name, add_prefix_space):
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space, use_regex=True)
    if name == "gpt2":
        return byte_level
    if name == "gpt2_single_digits":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if name == "llama3":
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space, use_regex=False),
        ])
    if name == "clip":
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ])
    raise ValueError(f"Unknown pre_tokenizer {name!r}; expected one of {sorted(PRE_TOKENIZERS)}.")


PRE_TOKENIZERS = ("gpt2", "gpt2_single_digits", "llama3", "clip")


def end_of_word_vocabulary(merges, special_tokens=()):
    """The ``{token: id}`` of a byte-level BPE whose words end in ``</w>`` (CLIP's), from its merges.

    The ids run: the 256 byte symbols (in GPT-2's byte-alphabet order), the same with ``</w>``, one
    token per merge (the pair joined, in merge order), then ``special_tokens``. This is how OpenAI's
    CLIP builds its vocabulary from ``bpe_simple_vocab_16e6.txt.gz`` (49,408 tokens from its first
    48,894 merges).

    >>> vocab = end_of_word_vocabulary(["a b</w>"], ["<|endoftext|>"])
    >>> len(vocab), vocab["ab</w>"], vocab["<|endoftext|>"]
    (514, 512, 513)
    """
    symbols = [_byte_symbol(b) for b in _byte_alphabet_order()]
    tokens = symbols + [s + END_OF_WORD_SUFFIX for s in symbols]
    tokens += ["".join(pair) for pair in _as_pairs(merges)] + list(special_tokens)
    vocabulary = {}
    for token in tokens:
        vocabulary.setdefault(token, len(vocabulary))
    if len(vocabulary) != len(tokens):
        raise ValueError(f"The merges make {len(tokens) - len(vocabulary)} duplicate tokens; they are not a "
                         "BPE merge list (each merge makes a new token).")
    return vocabulary


def _byte_alphabet_order():
    """GPT-2's byte order: the printable bytes ``!``…``~``, ``¡``…``¬``, ``®``…``ÿ``, then the rest."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    return printable + [b for b in range(256) if b not in printable]


def _byte_symbol(byte):
    """The character GPT-2's byte alphabet spells ``byte`` with."""
    printable = _byte_alphabet_order()[:188]
    return chr(byte) if byte in printable else chr(256 + [b for b in range(256) if b not in printable].index(byte))


def read_vocabulary_json(path):
    if not os.path.exists(path):
        raise FileNotFoundError(f"Vocabulary file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            vocab = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); expected GPT-2's vocab.json.") from e
    if not isinstance(vocab, dict):
        raise ValueError(f"{path} holds a {type(vocab).__name__}; expected a {{token: id}} object.")
    return vocab


def read_merges_file(path):
    """GPT-2's ``merges.txt``: an optional ``#version`` line, then ``left right`` pairs."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"Merges file not found: {path}")
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    return [line for line in lines if line and not line.startswith("#version")]


def _as_pairs(merges, source="merges"):
    pairs = []
    for i, merge in enumerate(merges):
        pair = tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge)
        if len(pair) != 2:
            raise ValueError(f"{source} entry {i} ({merge!r}) is not a pair 'left right'.")
        pairs.append(pair)
    return pairs


def byte_level_bpe_engine(vocabulary, merges, special_tokens=(), user_tokens=(), pre_tokenizer="gpt2",
                          add_prefix_space=False):
    """A ``tokenizers.Tokenizer`` for byte-level BPE: the shared builder of this file and of GGUF."""
    if pre_tokenizer == "clip":
        unknown = next((t for t in special_tokens if t == GPT2_END_OF_TEXT), None)
        model = models.BPE(dict(vocabulary), _as_pairs(merges), fuse_unk=False, continuing_subword_prefix="",
                           end_of_word_suffix=END_OF_WORD_SUFFIX, unk_token=unknown)
    else:
        model = models.BPE(dict(vocabulary), _as_pairs(merges), fuse_unk=False,
                           ignore_merges=pre_tokenizer == "llama3")
    engine = _RustTokenizer(model)
    if pre_tokenizer == "clip":
        engine.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    engine.pre_tokenizer = _pre_tokenizer(pre_tokenizer, add_prefix_space)
    engine.decoder = decoders.ByteLevel()
    missing = [t for t in list(special_tokens) + list(user_tokens) if t not in vocabulary]
    if missing:
        raise ValueError(f"Special tokens {missing[:5]} are not in the vocabulary.")
    if special_tokens:
        engine.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    if user_tokens:
        engine.add_tokens([AddedToken(t, special=False, normalized=False) for t in user_tokens])
    return engine


@keras.saving.register_keras_serializable(package="kcookbook")
class BytePairTokenizer(HuggingFaceTokenizer):
    """Byte-level BPE tokenizer from a GPT-2 style vocabulary and merges.

    Args:
        vocabulary: ``{token: id}`` or the path of a ``vocab.json``.
        merges: a list of ``"left right"`` strings (or pairs), best first, or a ``merges.txt`` path.
        special_tokens: tokens matched whole in the text and skipped by ``detokenize``; defaults to
            ``<|endoftext|>`` when the vocabulary has it.
        user_tokens: tokens matched whole in the text but decoded like text (llama.cpp's
            "user-defined" tokens).
        pre_tokenizer: how text is split before merging: ``"gpt2"``, ``"gpt2_single_digits"`` or
            ``"llama3"`` (see the module docstring).
        add_prefix_space: put a space before the text, so a first word is spelled like any other.
        start_token, end_token, pad_token, add_start_token, chat_template, stop_tokens: as
            in :class:`HuggingFaceTokenizer`.
    """

    ASSET_CONFIG_KEYS = ("vocabulary", "merges")
    VOCABULARY_FILE = "vocabulary.json"
    MERGES_FILE = "merges.txt"

    def __init__(self, vocabulary, merges, special_tokens=None, user_tokens=(), pre_tokenizer="gpt2",
                 add_prefix_space=False, start_token=None, end_token=None, pad_token=None,
                 add_start_token=False, chat_template=None, stop_tokens=(), name=None):
        if vocabulary is None or merges is None:
            raise ValueError(
                "BytePairTokenizer needs a vocabulary (vocab.json or a dict) and merges (merges.txt or "
                "a list). A preset keeps them in assets/tokenizer/vocabulary.json and merges.txt."
            )
        if isinstance(vocabulary, (str, os.PathLike)):
            vocabulary = read_vocabulary_json(vocabulary)
        if isinstance(merges, (str, os.PathLike)):
            merges = read_merges_file(merges)
        self._vocabulary_dict = {str(t): int(i) for t, i in vocabulary.items()}
        self._merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
        if special_tokens is None:
            special_tokens = [GPT2_END_OF_TEXT] if GPT2_END_OF_TEXT in self._vocabulary_dict else []
        self.special_tokens = list(special_tokens)
        self.user_tokens = list(user_tokens)
        self.pre_tokenizer = pre_tokenizer
        self.add_prefix_space = add_prefix_space
        engine = byte_level_bpe_engine(self._vocabulary_dict, self._merges, self.special_tokens,
                                       self.user_tokens, pre_tokenizer, add_prefix_space)
        super().__init__(engine, start_token=start_token, end_token=end_token, pad_token=pad_token,
                         add_start_token=add_start_token, chat_template=chat_template,
                         stop_tokens=stop_tokens, name=name)

    @property
    def merges(self):
        return list(self._merges)

    def decode_batch(self, ids_batch, skip_special_tokens=True):
        texts = super().decode_batch(ids_batch, skip_special_tokens)
        if self.pre_tokenizer != "clip":
            return texts
        return [text.replace(END_OF_WORD_SUFFIX, " ").strip() for text in texts]

    def get_config(self):
        config = super().get_config()
        del config["tokenizer_json"]
        config.update({
            "vocabulary": dict(self._vocabulary_dict),
            "merges": list(self._merges),
            "special_tokens": self.special_tokens,
            "user_tokens": self.user_tokens,
            "pre_tokenizer": self.pre_tokenizer,
            "add_prefix_space": self.add_prefix_space,
        })
        return config

    def save_assets(self, directory):
        with open(os.path.join(directory, self.VOCABULARY_FILE), "w", encoding="utf-8") as f:
            json.dump(self._vocabulary_dict, f, ensure_ascii=False)
        with open(os.path.join(directory, self.MERGES_FILE), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "".join(m + "\n" for m in self._merges))

    @classmethod
    def config_with_assets(cls, config, directory):
        return dict(config, vocabulary=os.path.join(directory, cls.VOCABULARY_FILE),
                    merges=os.path.join(directory, cls.MERGES_FILE))

    @classmethod
    def train(cls, texts, vocabulary_size, special_tokens=(GPT2_END_OF_TEXT,), min_frequency=2,
              **kwargs):
        """Learn a byte-level BPE vocabulary and merges from texts, GPT-2 style.

        The Rust ``tokenizers`` trainer counts GPT-2 pre-tokens (``pre_tokenizer="gpt2"``), starts
        from the 256 byte symbols plus ``special_tokens`` (ids ``0…``, in order) and adds the most
        frequent pair until the vocabulary has ``vocabulary_size`` tokens; pairs seen fewer than
        ``min_frequency`` times are never merged. These are the settings of the library's
        ``ByteLevelBPETokenizer.train`` (same vocabulary, merges and ids for the same texts).

        Args:
            texts: an iterable of strings (whole documents or lines).
            vocabulary_size: tokens in the result, special tokens included (at least 256 + them).
            special_tokens: tokens kept whole (e.g. ``<|endoftext|>``, the document separator).
            min_frequency: the fewest occurrences a pair needs to become a merge.
            **kwargs: passed to the constructor (``end_token``, ``pad_token``…).

        >>> tokenizer = BytePairTokenizer.train(["to be or not to be"] * 10, vocabulary_size=262,
        ...                                     end_token="<|endoftext|>")
        >>> tokenizer.vocabulary_size, tokenizer.end_token_id
        (262, 0)
        >>> tokenizer.detokenize(tokenizer("to be, or not to be"))
        'to be, or not to be'
        """
        from tokenizers import trainers

        special_tokens = list(special_tokens)
        smallest = 256 + len(special_tokens)
        if vocabulary_size < smallest:
            raise ValueError(
                f"vocabulary_size={vocabulary_size} is too small: a byte-level vocabulary holds the 256 "
                f"byte symbols and {len(special_tokens)} special tokens, so at least {smallest}.")
        if isinstance(texts, str):
            raise TypeError("BytePairTokenizer.train takes an iterable of strings (e.g. a list of "
                            "documents), not one string: wrap it in a list.")
        engine = _RustTokenizer(models.BPE())
        engine.pre_tokenizer = _pre_tokenizer("gpt2", add_prefix_space=False)
        trainer = trainers.BpeTrainer(vocab_size=vocabulary_size, min_frequency=min_frequency,
                                      special_tokens=special_tokens,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        engine.train_from_iterator(texts, trainer=trainer)
        model = json.loads(engine.to_str())["model"]
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        return cls(model["vocab"], merges, special_tokens=special_tokens, **kwargs)
