"""ImageClassifier: any vision backbone + a pooled dense head, trained and run on raw uint8 images.

    >>> classifier = ImageClassifier.from_preset("efficientnet_lite0_imagenet")  # doctest: +SKIP
    >>> from skimage import data  # doctest: +SKIP
    >>> classifier.decode_predictions(classifier.predict(data.chelsea()[None]), top=1)  # doctest: +SKIP
    [[('Egyptian cat', 0.6...)]]
    >>> classifier = ImageClassifier.from_preset("efficientnet_lite0_imagenet", num_classes=10)  # doctest: +SKIP

The backbone contract is small: one image input ``(batch, height, width, channels)`` and one output,
either a feature map ``(batch, h, w, channels)`` (CNNs), a token sequence ``(batch, tokens, dim)``
(ViT: the first token is the class token) or pooled features ``(batch, dim)``; or a dict with
``pooled_output`` (used by ``pooling="auto"``) and ``sequence_output`` (pooled otherwise).
"""

import keras
import numpy as np

from kcookbook.components.image_converter import ImageConverter
from kcookbook.components.preset_entry import load_preset
from kcookbook.presets.errors import PresetError
from kcookbook.tasks.classifier_head import classifier_head
from kcookbook.tasks.task import Task

POOLINGS = ("auto", "avg", "max", "first_token")


@keras.saving.register_keras_serializable(package="kcookbook")
class ImageClassifierPreprocessor:
    """Raw images (uint8 arrays, lists of differently sized images, tf.data tensors) → model input.

    >>> pre = ImageClassifierPreprocessor(ImageConverter((2, 2), scale=1 / 255))
    >>> pre(np.full((1, 4, 4, 3), 255, "uint8"), np.array([3]))[0].shape
    (1, 2, 2, 3)
    """

    def __init__(self, image_converter):
        if not isinstance(image_converter, ImageConverter):
            raise TypeError(f"image_converter must be an ImageConverter, got {type(image_converter).__name__}.")
        self.image_converter = image_converter

    def __call__(self, x, y=None, sample_weight=None):
        return keras.utils.pack_x_y_sample_weight(self.image_converter(x), y, sample_weight)

    def get_config(self):
        return {"image_converter": keras.saving.serialize_keras_object(self.image_converter)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("image_converter"), dict):
            config["image_converter"] = keras.saving.deserialize_keras_object(config["image_converter"])
        return cls(**config)

    @classmethod
    def from_preset(cls, handle):
        return cls(ImageConverter.from_preset(handle))


def pool_features(features, pooling):
    """One vector per image from a backbone output of rank 4 (feature map), 3 (tokens) or 2."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
    rank = len(features.shape)
    if rank == 2:
        return features
    if rank == 4:
        if pooling in ("auto", "avg"):
            return keras.layers.GlobalAveragePooling2D(name="pooling")(features)
        if pooling == "max":
            return keras.layers.GlobalMaxPooling2D(name="pooling")(features)
    if rank == 3:
        if pooling in ("auto", "first_token"):
            return features[:, 0, :]
        if pooling == "avg":
            return keras.layers.GlobalAveragePooling1D(name="pooling")(features)
        if pooling == "max":
            return keras.layers.GlobalMaxPooling1D(name="pooling")(features)
    raise ValueError(f"pooling={pooling!r} does not apply to a backbone output of shape {features.shape}.")


@keras.saving.register_keras_serializable(package="kcookbook")
class ImageClassifier(Task):
    """Classify images with any vision backbone.

    Args:
        backbone: a backbone with one image input and one output (see the module docstring).
        num_classes: number of classes (a positive integer).
        preprocessor: an ``ImageClassifierPreprocessor``, or None to feed preprocessed float arrays.
        pooling: ``"auto"`` (average a feature map, take a ViT's first token), ``"avg"``, ``"max"`` or
            ``"first_token"``.
        activation: None for logits (the default loss expects logits), or e.g. ``"softmax"``.
        dropout: dropout before the output layer.
        class_names: optional names of the classes, for ``decode_predictions``.
    """

    preprocessor_cls = ImageClassifierPreprocessor

    def __init__(self, backbone, num_classes, preprocessor=None, pooling="auto", activation=None,
                 dropout=0.0, class_names=None, name="image_classifier", **kwargs):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= 0:
            raise ValueError(
                f"num_classes must be a positive integer (the number of labels), got {num_classes!r}.")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for {num_classes} classes.")
        inputs = backbone.input
        outputs = backbone(inputs)
        if isinstance(outputs, dict):  # e.g. ViT: {"sequence_output", "pooled_output"}
            pooled = pooling == "auto" and "pooled_output" in outputs
            outputs = outputs["pooled_output"] if pooled else outputs["sequence_output"]
        features = pool_features(outputs, pooling)
        logits = classifier_head(features, num_classes, activation, dropout, name="predictions")
        super().__init__(inputs=inputs, outputs=logits, name=name, **kwargs)
        self._init_task(backbone, preprocessor)
        self.num_classes = num_classes
        self.pooling = pooling
        self.activation = keras.activations.get(activation)
        self.dropout = dropout
        self.class_names = list(class_names) if class_names is not None else None
        self.compile()

    def compile(self, optimizer="auto", loss="auto", metrics="auto", **kwargs):
        """Defaults: Adam(1e-3), sparse categorical cross-entropy, accuracy."""
        self._compile_classifier(1e-3, optimizer, loss, metrics, **kwargs)

    def unfreeze_backbone(self, batch_norm_trainable=False):
        """Make the backbone trainable for fine-tuning, its batch-norm layers frozen by default.

        Frozen batch-norm layers (Keras runs a non-trainable ``BatchNormalization`` in inference
        mode) keep the pretrained statistics: with few steps, moving averages re-estimated from the
        new data lag behind the weights, and validation runs on stale statistics. Re-``compile``
        after calling this. Returns the number of batch-norm layers kept frozen.
        """
        self.backbone.trainable = True
        frozen = 0
        for layer in self.backbone._flatten_layers(include_self=False):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = batch_norm_trainable
                frozen += not batch_norm_trainable
        return frozen

    def preprocess(self, x, y=None, sample_weight=None):
        if self.preprocessor is None and not _is_float_array(x):
            raise ValueError(
                f"{self.name} has no preprocessor, so it takes preprocessed float arrays, not "
                f"{type(x).__name__}. Build it with ImageClassifierPreprocessor(ImageConverter(...)).")
        if self.preprocessor is None:
            return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)
        return self.preprocessor(x, y, sample_weight)

    def decode_predictions(self, predictions, top=5):
        """The ``top`` classes of each row as ``[(name, probability), ...]``, best first.

        Probabilities are the softmax of logits (or the outputs themselves with a softmax head).
        """
        predictions = np.asarray(keras.ops.convert_to_numpy(predictions), dtype="float64")
        if predictions.ndim != 2 or predictions.shape[-1] != self.num_classes:
            raise ValueError(f"Expected predictions shaped (batch, {self.num_classes}), got {predictions.shape}.")
        if self.activation in (None, keras.activations.linear):
            predictions = np.exp(predictions - predictions.max(-1, keepdims=True))
            predictions /= predictions.sum(-1, keepdims=True)
        names = self.class_names or [f"class_{i}" for i in range(self.num_classes)]
        order = np.argsort(-predictions, axis=-1)[:, :top]
        return [[(names[i], float(row[i])) for i in indices] for row, indices in zip(predictions, order)]

    @classmethod
    def from_preset(cls, handle, num_classes=None, load_weights=True, image_size=None, **kwargs):
        """An image classifier on a preset.

        ``num_classes=None`` keeps the preset's own classification head (e.g. ImageNet's 1000
        classes, with their names for ``decode_predictions``); an integer builds a new, randomly
        initialised head on the pretrained backbone. ``image_size=(h, w)`` (or an int) resizes
        inputs to another resolution than the preset's, e.g. small images for fast fine-tuning.
        ``load_weights=False`` builds the same architecture with random weights (from scratch).
        """
        loader = load_preset(handle)
        backbone_kwargs = cls.pop_backbone_kwargs(kwargs)
        head_kwargs = dict(kwargs) if num_classes is None else {**kwargs, "num_classes": num_classes}
        task = loader.load_task(cls, load_weights=load_weights, backbone_kwargs=backbone_kwargs, **head_kwargs)
        if task is None:
            if num_classes is None:
                raise PresetError(
                    f"Preset {handle!r} has no classification head to keep. Pass num_classes=... to "
                    "put a new head on its backbone.")
            backbone = loader.load_backbone(load_weights=load_weights, **backbone_kwargs)
            task = cls(backbone=backbone, num_classes=num_classes, **kwargs)
        if task.preprocessor is None:
            converter = loader.load_image_converter()
            if converter is not None:
                task.preprocessor = ImageClassifierPreprocessor(converter)
        if image_size is not None:
            if task.preprocessor is None:
                raise PresetError(f"Preset {handle!r} has no image converter to resize with.")
            config = task.preprocessor.image_converter.get_config()
            config["image_size"] = [image_size] * 2 if isinstance(image_size, int) else list(image_size)
            task.preprocessor = ImageClassifierPreprocessor(ImageConverter.from_config(config))
        return task

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes, "pooling": self.pooling,
                       "activation": keras.activations.serialize(self.activation),
                       "dropout": self.dropout, "class_names": self.class_names})
        return config


def _is_float_array(x):
    dtype = getattr(x, "dtype", None)
    return dtype is not None and "float" in str(dtype) and not isinstance(x, (list, tuple))
