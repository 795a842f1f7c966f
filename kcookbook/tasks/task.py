"""The Task contract: a backbone, a head and a preprocessor, trained and run on raw inputs.

``fit``/``predict``/``evaluate`` take raw inputs (lists of strings, a ``tf.data`` dataset of
strings…) and preprocess them with the task's preprocessor; a dict of arrays is passed through
untouched, so the same task also runs on already-preprocessed data.
"""

import keras
import numpy as np

from kcookbook.components.inputs import is_tf_dataset as _is_dataset
from kcookbook.components.preset_entry import load_preset
from kcookbook.presets import files, save_preset


class Task(keras.Model):
    """Base class of the task models (functional: ``inputs`` are the backbone's inputs)."""

    preprocessor_cls = None

    def _init_task(self, backbone, preprocessor):
        self.backbone = backbone
        self.preprocessor = preprocessor

    # ----- compiled functions follow the variable set -----
    # Keras caches train/test/predict functions after the first call. Adding or removing variables
    # (backbone.enable_lora, merge_lora) after that must rebuild them, or they keep the old graph.
    def _variables_changed(self, kind):
        signature = tuple(id(v) for v in self.variables)
        seen = self.__dict__.get("_compiled_variable_ids", {})
        changed = kind in seen and seen[kind] != signature
        object.__setattr__(self, "_compiled_variable_ids", {**seen, kind: signature})
        return changed

    def make_train_function(self, force=False):
        return super().make_train_function(force=self._variables_changed("train") or force)

    def make_test_function(self, force=False):
        return super().make_test_function(force=self._variables_changed("test") or force)

    def make_predict_function(self, force=False):
        return super().make_predict_function(force=self._variables_changed("predict") or force)

    def _compile_classifier(self, learning_rate, optimizer="auto", loss="auto", metrics="auto", **kwargs):
        """Classifier defaults for ``"auto"``: Adam(learning_rate), sparse categorical cross-entropy
        (from logits unless the head has an activation) and accuracy."""
        if optimizer == "auto":
            optimizer = keras.optimizers.Adam(learning_rate)
        if loss == "auto":
            from_logits = self.activation in (None, keras.activations.linear)
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
        if metrics == "auto":
            metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    # ----- raw inputs → model inputs -----
    def _model_inputs(self, x):
        """Keep the keys the backbone takes (a preprocessor may produce more, e.g. segment_ids)."""
        if isinstance(x, dict) and isinstance(self.input, dict):
            return {k: v for k, v in x.items() if k in self.input}
        return x

    def preprocess(self, x, y=None, sample_weight=None):
        """Raw ``x`` → model inputs, eagerly; dicts pass through."""
        if isinstance(x, dict):
            return keras.utils.pack_x_y_sample_weight(self._model_inputs(x), y, sample_weight)
        if self.preprocessor is None:
            raise ValueError(
                f"{type(self).__name__} has no preprocessor, so it takes a dict of arrays "
                f"({', '.join(self.input) if isinstance(self.input, dict) else 'the model inputs'}), "
                f"not {type(x).__name__}. Build it with a preprocessor to feed raw inputs."
            )
        out = self.preprocessor(x, y, sample_weight)
        if isinstance(out, tuple):
            return (self._model_inputs(out[0]),) + out[1:]
        return self._model_inputs(out)

    def _dataset(self, ds):
        if self.preprocessor is None:
            return ds
        import tensorflow as tf

        def fn(*element):
            # (x, y[, sample_weight]) when the element has several parts; one part is x alone, even
            # when it is itself a tuple of text segments ((first, second),).
            if len(element) > 1:
                x, y, sw = keras.utils.unpack_x_y_sample_weight(element)
            else:
                x, y, sw = element[0], None, None
            if isinstance(x, dict):
                return keras.utils.pack_x_y_sample_weight(self._model_inputs(x), y, sw)
            return self.preprocess(x, y, sw)

        return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    def _prepare(self, x, y=None, sample_weight=None):
        if _is_dataset(x):
            return self._dataset(x), None, None
        # Keras takes arrays, not Python lists, for labels and weights: fit(texts, [2, 0]) should work.
        y = np.asarray(y) if isinstance(y, list) else y
        sample_weight = np.asarray(sample_weight) if isinstance(sample_weight, list) else sample_weight
        out = self.preprocess(x, y, sample_weight)
        return keras.utils.unpack_x_y_sample_weight(out) if isinstance(out, tuple) else (out, y, sample_weight)

    def fit(self, x=None, y=None, batch_size=None, validation_data=None, sample_weight=None, **kwargs):
        if _is_dataset(x):
            kwargs.setdefault("shuffle", False)  # a dataset shuffles itself
        x, y, sample_weight = self._prepare(x, y, sample_weight)
        if validation_data is not None:
            if _is_dataset(validation_data):
                validation_data = self._dataset(validation_data)
            else:
                validation_data = keras.utils.pack_x_y_sample_weight(*self._prepare(*validation_data))
        return super().fit(x=x, y=y, batch_size=batch_size, validation_data=validation_data,
                           sample_weight=sample_weight, **kwargs)

    def evaluate(self, x=None, y=None, batch_size=None, sample_weight=None, **kwargs):
        if kwargs.get("_use_cached_eval_dataset"):  # fit's validation pass: already preprocessed
            return super().evaluate(x=x, y=y, batch_size=batch_size, sample_weight=sample_weight, **kwargs)
        x, y, sample_weight = self._prepare(x, y, sample_weight)
        return super().evaluate(x=x, y=y, batch_size=batch_size, sample_weight=sample_weight, **kwargs)

    def predict(self, x, batch_size=None, **kwargs):
        x, _, _ = self._prepare(x)
        return super().predict(x, batch_size=batch_size, **kwargs)

    # ----- weights of the head alone (task.weights.h5) -----
    def head_variables(self):
        backbone_ids = {id(v) for v in self.backbone.weights}
        return {v.path: v for v in self.weights if id(v) not in backbone_ids}

    def save_head_weights(self, path):
        files.save_variables_h5(path, self.head_variables())

    def load_head_weights(self, path):
        self.assign_head_weights(files.read_h5_arrays(path), path)

    def assign_head_weights(self, arrays, source):
        """Set the head's variables from ``{variable.path: array}`` (every one, shapes checked)."""
        files.assign_weights(_Variables(self.name, self.head_variables()), arrays, source)

    # ----- serialisation and presets -----
    def get_config(self):
        return {
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "preprocessor": keras.saving.serialize_keras_object(self.preprocessor)
            if self.preprocessor is not None else None,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("backbone", "preprocessor"):
            if isinstance(config.get(key), dict):
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)

    @classmethod
    def from_preset(cls, handle, load_weights=True, **kwargs):
        """Build this task on a preset (built-in name, directory, ``kaggle://…``, ``hf://…``).

        A preset saved with this task's head (``task.json``) and the same arguments loads that head;
        otherwise a new head is built on the preset's backbone and preprocessor. ``preprocessor=...``
        replaces the preset's (``preprocessor=None``: the model alone, fed token ids; the preset's
        tokenizer files are then not read at all).
        """
        loader = load_preset(handle)
        given = "preprocessor" in kwargs
        preprocessor = kwargs.pop("preprocessor", None)
        task = loader.load_task(cls, load_weights=load_weights, with_preprocessor=not given, **kwargs)
        if task is not None:
            if given:
                task.preprocessor = preprocessor
            return task
        backbone_kwargs = kwargs.pop("backbone_kwargs", {})
        backbone = loader.load_backbone(load_weights=load_weights, **backbone_kwargs)
        preprocessor_kwargs = kwargs.pop("preprocessor_kwargs", {})
        if not given and cls.preprocessor_cls is not None and loader.load_tokenizer() is not None:
            preprocessor = loader.load_preprocessor(cls.preprocessor_cls, **preprocessor_kwargs)
        defaults = loader.task_kwargs(cls)
        return cls(backbone=backbone, preprocessor=preprocessor, **{**defaults, **kwargs})

    def save_to_preset(self, directory, metadata=None):
        """Write backbone, tokenizer, preprocessor and head as one preset directory, atomically."""
        save_preset(directory, backbone=self.backbone, preprocessor=self.preprocessor,
                            task=self, metadata=metadata)


class _Variables:
    """Adapter so assign_weights can address a dict of variables like a model."""

    def __init__(self, name, variables):
        self.name = name
        self.weights = list(variables.values())
