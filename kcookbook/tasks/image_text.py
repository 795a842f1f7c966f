"""Image–text tasks on a CLIP-style backbone: zero-shot classification and retrieval embeddings.

``ZeroShotImageClassifier`` turns class names into a classifier without training: every class
name is written into prompt templates ("a photo of a {}."), the prompts are embedded by the text
tower, and an image's class probabilities are the softmax of its cosine similarity with each class,
times the model's learned ``exp(logit_scale)``. With several templates, each class's prompt vectors
are normalised, averaged and normalised again ("prompt ensembling", as in the CLIP paper).

``ImageTextEmbedder`` embeds images and texts as unit vectors in the shared space; a dot product is
then a cosine similarity, and ``kcookbook.retrieval.nearest`` ranks either side against the other.
It also trains the backbone as CLIP was trained: ``compile(optimizer)`` then ``fit`` on matching
``{"images", "token_ids"}`` pairs minimises :func:`contrastive_loss` (no labels: within a batch, row
``i``'s image and text are the pair, every other row a negative).

    >>> classifier = ZeroShotImageClassifier.from_preset(  # doctest: +SKIP
    ...     "hf://openai/clip-vit-base-patch32", class_names=["cat", "dog"],
    ...     templates=["a photo of a {}.", "a drawing of a {}."])
    >>> classifier.predict(images)  # (batch, 2) probabilities  # doctest: +SKIP

Both tasks take raw images (any size: the preset's image converter resizes and crops them) and raw
strings (CLIP's tokenizer, padded to the text tower's positions).
"""

import math

import keras
import numpy as np

from kcookbook.backbones.clip import CLIPBackbone, CLIPLogits
from kcookbook.components.pooling import L2Normalization
from kcookbook.components.preset_entry import load_preset
from kcookbook.presets.errors import PresetError
from kcookbook.tasks.image_classifier import ImageClassifierPreprocessor
from kcookbook.tasks.preprocessor import TextClassifierPreprocessor
from kcookbook.tasks.task import Task

DEFAULT_TEMPLATES = ("a photo of a {}.",)
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clips its learned temperature at 100 during training


def contrastive_loss(image_embeddings, text_embeddings, logit_scale):
    """CLIP's symmetric InfoNCE loss over a batch of matching image-text pairs.

    ``logits = exp(min(logit_scale, log 100)) · image_embeddings @ text_embeddingsᵀ``; row ``i`` of
    each side is the pair of row ``i`` of the other. The loss is the mean of the cross-entropy of
    each image over the batch's texts and of each text over the batch's images, with the pair as
    the target (the CLIP paper's Figure 3).

    Args:
        image_embeddings, text_embeddings: (batch, dim) unit vectors.
        logit_scale: the learned log temperature (a scalar tensor or variable).
    """
    scale = keras.ops.exp(keras.ops.minimum(keras.ops.cast(logit_scale, image_embeddings.dtype), MAX_LOGIT_SCALE))
    logits = scale * keras.ops.matmul(image_embeddings, keras.ops.transpose(text_embeddings))
    diagonal = keras.ops.diagonal(logits)
    per_image = keras.ops.logsumexp(logits, axis=1) - diagonal
    per_text = keras.ops.logsumexp(logits, axis=0) - diagonal
    return (keras.ops.mean(per_image) + keras.ops.mean(per_text)) / 2


def _check_backbone(backbone, task):
    if not isinstance(backbone, CLIPBackbone):
        raise ValueError(f"{task} needs a CLIPBackbone (an image tower and a text tower in one space), got "
                         f"{type(backbone).__name__}. Load a CLIP preset, e.g. a Hugging Face CLIPModel folder.")


def _unit(vectors):
    vectors = np.asarray(vectors, "float32")
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def _preprocessors(loader, backbone, handle):
    """The preset's image preprocessor and CLIP text preprocessor (padded to the text positions)."""
    tokenizer = loader.load_tokenizer()
    converter = loader.load_image_converter()
    if tokenizer is None or converter is None:
        missing = "tokenizer files (vocab.json + merges.txt)" if tokenizer is None else \
            "image processor config (preprocessor_config.json)"
        raise PresetError(f"Preset {handle!r} ({loader.path}) has no {missing}, which an image-text task needs "
                          "to read raw strings and images. Save the CLIP checkpoint with its processor.")
    text = TextClassifierPreprocessor(tokenizer, sequence_length=backbone.max_sequence_length)
    return ImageClassifierPreprocessor(converter), text


class _ImageTextTask(Task):
    """Shared by the two tasks: a CLIP backbone, an image preprocessor and a text preprocessor."""

    def _init_image_text(self, backbone, preprocessor, text_preprocessor):
        self._init_task(backbone, preprocessor)
        if text_preprocessor is not None:
            self._check_preprocessor(text_preprocessor)
        self.text_preprocessor = text_preprocessor

    def embed_images(self, images, batch_size=32):
        """Unit image vectors (images, projection_dim), from raw images (with the preset's converter)
        or already converted float images."""
        if self.preprocessor is not None:
            images = self.preprocessor(images)
        images = np.asarray(images, "float32")
        return _unit(np.concatenate([
            keras.ops.convert_to_numpy(self.backbone.get_vision_embeddings(images[i:i + batch_size]))
            for i in range(0, len(images), batch_size)]))

    def embed_texts(self, texts, batch_size=32):
        """Unit text vectors (texts, projection_dim) from strings."""
        if self.text_preprocessor is None:
            raise ValueError(f"{type(self).__name__} has no text preprocessor, so it cannot read strings. "
                             "Build it with text_preprocessor=... (from_preset does).")
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError("No texts to embed: got an empty list.")
        token_ids = self.text_preprocessor(texts)["token_ids"]
        return _unit(np.concatenate([
            keras.ops.convert_to_numpy(self.backbone.get_text_embeddings(token_ids[i:i + batch_size]))
            for i in range(0, len(token_ids), batch_size)]))

    @classmethod
    def _from_preset_parts(cls, handle, load_weights, kwargs):
        loader = load_preset(handle)
        backbone = loader.load_backbone(load_weights=load_weights, **cls.pop_backbone_kwargs(kwargs))
        _check_backbone(backbone, cls.__name__)
        preprocessor, text_preprocessor = _preprocessors(loader, backbone, handle)
        return backbone, preprocessor, text_preprocessor

    def get_config(self):
        config = super().get_config()
        config["text_preprocessor"] = keras.saving.serialize_keras_object(self.text_preprocessor) \
            if self.text_preprocessor is not None else None
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("text_preprocessor"), dict):
            config["text_preprocessor"] = keras.saving.deserialize_keras_object(config["text_preprocessor"])
        return super().from_config(config)


@keras.saving.register_keras_serializable(package="kcookbook")
class ZeroShotHead(CLIPLogits):
    """Class probabilities from image features: softmax of ``exp(logit_scale)`` × cosine similarity
    with each class's (unit) text vector. The class vectors and the scale are fixed weights."""

    def __init__(self, num_classes, projection_dim, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.projection_dim = projection_dim

    def build(self, input_shape):
        super().build(input_shape)
        self.logit_scale.trainable = False
        self.class_embeddings = self.add_weight(name="class_embeddings", shape=(self.num_classes, self.projection_dim),
                                                initializer="zeros", trainable=False)

    def call(self, image_features):
        return keras.ops.softmax(super().call(image_features, self.class_embeddings), axis=-1)

    def compute_output_shape(self, image_features_shape):
        return (image_features_shape[0], self.num_classes)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "projection_dim": self.projection_dim}


@keras.saving.register_keras_serializable(package="kcookbook")
class ZeroShotImageClassifier(_ImageTextTask):
    """Classify images into classes named in words, with no training.

    ``predict(images)`` returns class probabilities (batch, len(class_names)).

    Args:
        backbone: a :class:`~kcookbook.backbones.CLIPBackbone`.
        class_names: the classes, as words ("golden retriever", "tabby cat").
        templates: prompt templates with one ``{}`` for the class name; several are ensembled.
        preprocessor: an ``ImageClassifierPreprocessor`` (raw images), or None for converted images.
        text_preprocessor: a ``TextClassifierPreprocessor`` with CLIP's tokenizer, used here to embed
            the prompts once.
    """

    def __init__(self, backbone, class_names, templates=DEFAULT_TEMPLATES, preprocessor=None,
                 text_preprocessor=None, name="zero_shot_image_classifier", **kwargs):
        _check_backbone(backbone, type(self).__name__)
        class_names, templates = _check_prompts(class_names, templates)
        head = ZeroShotHead(len(class_names), backbone.projection_dim, name="zero_shot_head")
        images = keras.Input(shape=backbone.image_shape, name="images")
        features = backbone.vision_projection(backbone.vision_encoder(images)["pooled_output"])
        super().__init__(inputs=images, outputs=head(features), name=name, **kwargs)
        self._init_image_text(backbone, preprocessor, text_preprocessor)
        self.class_names, self.templates = class_names, templates
        # a copy: on jax, assigning the variable itself would share one buffer between two variables
        head.logit_scale.assign(np.array(keras.ops.convert_to_numpy(backbone.logits.logit_scale)))
        if text_preprocessor is not None:
            head.class_embeddings.assign(self.class_embeddings_from_prompts())

    def check_inputs(self, x):
        """Images the image tower can read (the text tower is not part of this model's graph)."""
        if hasattr(x, "shape") and (len(x.shape) == 0 or x.shape[0] == 0):
            raise ValueError(f"{self.name} got no images (shape {tuple(x.shape)}). Pass at least one.")
        self.backbone.vision_encoder.check_inputs(x)

    def class_embeddings_from_prompts(self):
        """(classes, projection_dim): each class's prompts embedded, normalised, averaged, normalised."""
        prompts = [template.format(name) for name in self.class_names for template in self.templates]
        vectors = self.embed_texts(prompts).reshape(len(self.class_names), len(self.templates), -1)
        return _unit(vectors.mean(axis=1))

    @classmethod
    def from_preset(cls, handle, class_names, templates=DEFAULT_TEMPLATES, load_weights=True, **kwargs):
        """A zero-shot classifier on a CLIP preset (a Hugging Face ``CLIPModel`` folder, ``hf://…``)."""
        _check_prompts(class_names, templates)  # before the weights are read
        backbone, preprocessor, text_preprocessor = cls._from_preset_parts(handle, load_weights, kwargs)
        return cls(backbone, class_names, templates, preprocessor=preprocessor,
                   text_preprocessor=text_preprocessor, **kwargs)

    def get_config(self):
        return {**super().get_config(), "class_names": list(self.class_names), "templates": list(self.templates)}


def _check_prompts(class_names, templates):
    if isinstance(class_names, str) or not class_names:
        raise ValueError(f"class_names must be a non-empty list of strings, got {class_names!r:.80}.")
    if isinstance(templates, str):
        templates = [templates]
    if not templates:
        raise ValueError("templates must hold at least one prompt template such as 'a photo of a {}.'.")
    for name in class_names:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"class_names must be non-empty strings; got {name!r}.")
    for template in templates:
        if not isinstance(template, str) or template.count("{}") != 1:
            raise ValueError(f"Each template needs exactly one '{{}}' where the class name goes; got {template!r}.")
    return list(class_names), list(templates)


@keras.saving.register_keras_serializable(package="kcookbook")
class ImageTextEmbedder(_ImageTextTask):
    """Images and texts as unit vectors in CLIP's shared space, for retrieval in either direction.

    ``embed_images(images)`` and ``embed_texts(texts)`` return unit vectors; ``similarity(images,
    texts)`` their cosine similarities (images, texts). The model's graph takes
    ``{"images", "token_ids"}`` and outputs both sets of unit vectors.

    Training: ``compile(optimizer=...)`` (no ``loss``) and ``fit({"images": ..., "token_ids": ...})``
    with matching rows and no ``y`` minimise :func:`contrastive_loss` with the backbone's learned
    ``logit_scale``; shuffle the pairs (``fit`` does) so each batch holds different negatives.
    """

    def __init__(self, backbone, preprocessor=None, text_preprocessor=None, name="image_text_embedder",
                 **kwargs):
        _check_backbone(backbone, type(self).__name__)
        inputs = backbone.input
        outputs = backbone(inputs)
        outputs = {"image_embeddings": L2Normalization(name="image_l2")(outputs["vision_embeddings"]),
                   "text_embeddings": L2Normalization(name="text_l2")(outputs["text_embeddings"])}
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)
        self._init_image_text(backbone, preprocessor, text_preprocessor)

    def compile(self, optimizer="adam", loss=None, **kwargs):
        if loss is not None:
            raise ValueError(f"{type(self).__name__} trains with CLIP's contrastive loss (contrastive_loss); "
                             f"compile it without loss=..., got loss={loss!r}.")
        super().compile(optimizer=optimizer, **kwargs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """:func:`contrastive_loss` of the batch's pairs (plus any regularisation losses)."""
        if y is not None:
            raise ValueError(f"{type(self).__name__} learns from matching image-text pairs and takes no labels: "
                             "call fit({'images': ..., 'token_ids': ...}) without y.")
        loss = contrastive_loss(y_pred["image_embeddings"], y_pred["text_embeddings"],
                                self.backbone.logits.logit_scale)
        for extra in self.losses:
            loss = loss + keras.ops.cast(extra, loss.dtype)
        return loss

    def similarity(self, images, texts):
        """Cosine similarities (images, texts)."""
        return self.embed_images(images) @ self.embed_texts(texts).T

    @classmethod
    def from_preset(cls, handle, load_weights=True, **kwargs):
        """An embedder on a CLIP preset (a Hugging Face ``CLIPModel`` folder, ``hf://…``)."""
        backbone, preprocessor, text_preprocessor = cls._from_preset_parts(handle, load_weights, kwargs)
        return cls(backbone, preprocessor=preprocessor, text_preprocessor=text_preprocessor, **kwargs)


__all__ = ["ImageTextEmbedder", "ZeroShotImageClassifier", "contrastive_loss"]
