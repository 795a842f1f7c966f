"""WordPiece tokenization (BERT), with ids identical to Hugging Face's ``BertTokenizerFast``.

The engine is the Rust ``tokenizers`` library configured the way BERT's uncased/cased tokenizers are:
BERT normalisation (clean control characters, split CJK characters, lowercase and strip accents when
uncased), whitespace + punctuation pre-tokenization, greedy longest-match-first WordPiece with ``##``
continuations. Special tokens found in the vocabulary (``[CLS]``, ``[SEP]``, ``[PAD]``, ``[MASK]``,
``[UNK]``) are matched as whole tokens in the input text, so ``"a [MASK] b"`` holds the mask id.

It needs no TensorFlow: a list of strings is encoded in one batched Rust call. Inside ``tf.data`` the
base class bridges to the same code.

    >>> tokenizer = WordPieceTokenizer(["[PAD]", "[UNK]", "the", "quick", "##est"])
    >>> tokenizer("The quickest")
    [2, 3, 4]
    >>> tokenizer.detokenize([2, 3, 4])
    'the quickest'
"""

import os

import keras
from tokenizers import Tokenizer as _RustTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers

from kcookbook.components.tokenizer import Tokenizer, read_vocabulary_file

BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@keras.saving.register_keras_serializable(package="kcookbook")
class WordPieceTokenizer(Tokenizer):
    """WordPiece tokenizer.

    Args:
        vocabulary: a list of tokens (index = id) or the path of a one-token-per-line file.
        lowercase: lowercase the text (uncased models). Accents are stripped too unless
            ``strip_accents`` says otherwise, as in BERT.
        strip_accents: ``None`` follows ``lowercase``; ``True``/``False`` force it.
        oov_token: the token for words that cannot be split into vocabulary pieces.
        suffix_indicator: prefix of word-continuation pieces.
        special_tokens: tokens matched whole in the text and skipped by ``detokenize``; defaults to
            the BERT special tokens present in the vocabulary.
    """

    def __init__(
        self,
        vocabulary,
        lowercase=True,
        strip_accents=None,
        oov_token="[UNK]",
        suffix_indicator="##",
        special_tokens=None,
        max_input_chars_per_word=100,
        name=None,
    ):
        super().__init__(name=name)
        if vocabulary is None:
            raise ValueError(
                "WordPieceTokenizer needs a vocabulary: a list of tokens or a vocab.txt path. "
                "A preset's vocabulary lives in assets/tokenizer/vocabulary.txt."
            )
        if isinstance(vocabulary, (str, os.PathLike)):
            vocabulary = read_vocabulary_file(vocabulary)
        self._vocabulary = list(vocabulary)
        if not self._vocabulary:
            raise ValueError("WordPieceTokenizer got an empty vocabulary.")
        if oov_token not in self._vocabulary:
            raise ValueError(
                f"The out-of-vocabulary token {oov_token!r} is not in the vocabulary; add it or pass "
                "oov_token=<a token that is>."
            )
        self.lowercase = lowercase
        self.strip_accents = strip_accents
        self.oov_token = oov_token
        self.suffix_indicator = suffix_indicator
        self.max_input_chars_per_word = max_input_chars_per_word
        if special_tokens is None:
            special_tokens = [t for t in BERT_SPECIAL_TOKENS if t in self._vocabulary]
        self.special_tokens = list(special_tokens)

        # A token listed twice maps to its last line, as in Hugging Face's and keras_hub's vocab loading.
        self._token_to_id = {token: i for i, token in enumerate(self._vocabulary)}
        engine = _RustTokenizer(
            models.WordPiece(
                self._token_to_id,
                unk_token=oov_token,
                continuing_subword_prefix=suffix_indicator,
                max_input_chars_per_word=max_input_chars_per_word,
            )
        )
        engine.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents, lowercase=lowercase
        )
        engine.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        engine.decoder = decoders.WordPiece(prefix=suffix_indicator)
        engine.add_special_tokens(self.special_tokens)
        self._engine = engine
        self._special_ids = {self._token_to_id[t] for t in self.special_tokens}

    # ----- the contract -----
    def encode_batch(self, texts):
        encodings = self._engine.encode_batch_fast(texts, add_special_tokens=False)
        return [e.ids for e in encodings]

    def decode_batch(self, ids_batch, skip_special_tokens=True):
        return self._engine.decode_batch(
            [list(map(int, ids)) for ids in ids_batch], skip_special_tokens=skip_special_tokens
        )

    def get_vocabulary(self):
        return list(self._vocabulary)

    @property
    def vocabulary_size(self):
        return len(self._vocabulary)

    def token_to_id(self, token):
        if token not in self._token_to_id:
            raise KeyError(f"Token {token!r} is not in the vocabulary of {self.name}.")
        return self._token_to_id[token]

    def special_token_id(self, token):
        """Id of a special token, or None when the vocabulary has no such token."""
        return self._token_to_id.get(token)

    # Names the packers and preprocessors use.
    @property
    def start_token_id(self):
        return self.special_token_id("[CLS]")

    @property
    def end_token_id(self):
        return self.special_token_id("[SEP]")

    @property
    def pad_token_id(self):
        pad = self.special_token_id("[PAD]")
        return 0 if pad is None else pad

    @property
    def mask_token_id(self):
        return self.special_token_id("[MASK]")

    # ----- serialisation -----
    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary": self.get_vocabulary(),
                "lowercase": self.lowercase,
                "strip_accents": self.strip_accents,
                "oov_token": self.oov_token,
                "suffix_indicator": self.suffix_indicator,
                "special_tokens": self.special_tokens,
                "max_input_chars_per_word": self.max_input_chars_per_word,
            }
        )
        return config

    VOCABULARY_FILE = "vocabulary.txt"
    ASSET_CONFIG_KEYS = ("vocabulary",)

    def save_assets(self, directory):
        with open(os.path.join(directory, self.VOCABULARY_FILE), "w", encoding="utf-8") as f:
            for token in self._vocabulary:
                f.write(token + "\n")

    @classmethod
    def config_with_assets(cls, config, directory):
        config = dict(config)
        config["vocabulary"] = os.path.join(directory, cls.VOCABULARY_FILE)
        return config

    @classmethod
    def train(cls, texts, vocabulary_size, lowercase=True, special_tokens=BERT_SPECIAL_TOKENS, **kwargs):
        """Learn a WordPiece vocabulary from an iterable of strings (Rust trainer)."""
        from tokenizers import trainers

        engine = _RustTokenizer(models.WordPiece(unk_token="[UNK]"))
        engine.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        engine.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocabulary_size, special_tokens=list(special_tokens), show_progress=False
        )
        engine.train_from_iterator(texts, trainer=trainer)
        vocab = engine.get_vocab()
        vocabulary = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
        return cls(vocabulary, lowercase=lowercase, special_tokens=list(special_tokens), **kwargs)

