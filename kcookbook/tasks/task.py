"""The Task contract: a backbone, a head and a preprocessor, trained and run on raw inputs.

``fit``/``predict``/``evaluate`` take raw inputs (lists of strings, a ``tf.data`` dataset of
strings…) and preprocess them with the task's preprocessor; a dict of arrays is passed through
untouched, so the same task also runs on already-preprocessed data.

Inputs are checked before Keras's trainer sees them (numpy, eagerly): an empty batch, labels the
loss cannot read (a class id outside ``[0, num_classes)``, 0.5, NaN, one-hot rows for a loss that
takes ids), token ids outside the embedding table, non-finite images or sample weights are each a
``ValueError`` naming the value and the fix. Inside a ``tf.data`` dataset the labels of a sparse
classification loss are checked in the pipeline (range and whole numbers; a failure is the same
``ValueError`` when the batch is read); other values of a dataset are not checked.

A call that fails leaves the model as it was: on jax, Keras's trainer detaches the variables'
values while it runs, and a failure in the first step (before it holds a new state to write back)
used to leave every variable empty; the values are put back.
"""

import contextlib
import inspect

import keras
import numpy as np

from kcookbook.components.inputs import is_tf_dataset as _is_dataset
from kcookbook.components.preset_entry import export_to_transformers, load_preset
from kcookbook.components.validation import check_finite, check_ids_in_range, eager_array
from kcookbook.presets import files, save_preset
from kcookbook.tasks.preprocessor import Preprocessor

# Prefix of the label checks that run inside tf.data (a tf assertion), so fit can raise them as
# the ValueError they are.
_LABEL_CHECK = "Label check failed: "


class Task(keras.Model):
    """Base class of the task models (functional: ``inputs`` are the backbone's inputs)."""

    preprocessor_cls = None

    def _init_task(self, backbone, preprocessor):
        self.backbone = backbone
        self.preprocessor = preprocessor

    # ----- the preprocessor must fit the backbone -----
    @property
    def preprocessor(self):
        return self.__dict__.get("_preprocessor")

    @preprocessor.setter
    def preprocessor(self, preprocessor):
        self._check_preprocessor(preprocessor)
        object.__setattr__(self, "_preprocessor", preprocessor)

    def _check_preprocessor(self, preprocessor):
        """A tokenizer whose ids the embedding table cannot hold gives NaN (jax) or an index error
        (torch) at the first such token; a sequence longer than a learned position table fails deep
        in the graph. Both are refused here, when the two are put together."""
        if not isinstance(preprocessor, Preprocessor):
            return
        backbone = self.backbone
        table = backbone.vocabulary_size
        if table is not None and preprocessor.tokenizer is not None:
            size = preprocessor.tokenizer.vocabulary_size
            if size > table:
                raise ValueError(
                    f"The tokenizer {preprocessor.tokenizer.name!r} has {size} tokens but the backbone "
                    f"{backbone.name!r} embeds only vocabulary_size={table}: ids {table}…{size - 1} have "
                    "no embedding. Use the tokenizer the backbone was trained with, or build the "
                    f"backbone with vocabulary_size={size}.")
        limit = backbone.position_table_length
        length = preprocessor.sequence_length
        if limit is not None and length > limit:
            raise ValueError(
                f"The preprocessor packs sequence_length={length} tokens but the backbone "
                f"{backbone.name!r} has positions for max_sequence_length={limit}. Build the "
                f"preprocessor with sequence_length<={limit}.")

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
        (from logits unless the head has an activation) and accuracy (categorical accuracy for a
        categorical cross-entropy loss)."""
        if optimizer == "auto":
            optimizer = keras.optimizers.Adam(learning_rate)
        if loss == "auto":
            from_logits = self.activation in (None, keras.activations.linear)
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
        if metrics == "auto":  # accuracy read the way the loss reads labels (ids or one-hot rows)
            one_hot = isinstance(loss, keras.losses.CategoricalCrossentropy) or loss == "categorical_crossentropy"
            metrics = [(keras.metrics.CategoricalAccuracy if one_hot else
                        keras.metrics.SparseCategoricalAccuracy)(name="accuracy")]
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
        import tensorflow as tf

        if self.preprocessor is None:
            return self._checked_labels_dataset(ds)

        # Plain Python bridging into numpy (tf.numpy_function): nothing for autograph to convert, and
        # its conversion of zero-argument super() calls deeper down is fragile.
        @tf.autograph.experimental.do_not_convert
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

        ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)
        return self._checked_labels_dataset(ds).prefetch(tf.data.AUTOTUNE)

    def _prepare(self, x, y=None, sample_weight=None, labelled=False):
        """Raw inputs → checked model inputs; ``labelled`` for fit/evaluate (a loss needs labels)."""
        if _is_dataset(x):
            return self._dataset(x), None, None
        if x is None:
            raise ValueError(f"{self.name} got x=None: pass the inputs (e.g. a list of strings or images).")
        # Keras takes arrays, not Python lists, for labels and weights: fit(texts, [2, 0]) should work.
        y = np.asarray(y) if isinstance(y, list) else y
        sample_weight = np.asarray(sample_weight) if isinstance(sample_weight, list) else sample_weight
        out = self.preprocess(x, y, sample_weight)
        x, y, sample_weight = (keras.utils.unpack_x_y_sample_weight(out) if isinstance(out, tuple)
                               else (out, y, sample_weight))
        self.check_inputs(x)
        if labelled:
            self.check_labels(y)
            if sample_weight is not None:
                self._check_sample_weight(sample_weight)
        return x, y, sample_weight

    # ----- checks of what reaches the trainer -----
    def check_inputs(self, x):
        """Model inputs (after preprocessing) the backbone can read: not empty, right ranks and dtypes,
        ids within their tables (``Backbone.check_inputs``)."""
        leaves = [leaf for leaf in keras.tree.flatten(x) if hasattr(leaf, "shape")]
        if leaves and (len(leaves[0].shape) == 0 or leaves[0].shape[0] == 0):
            raise ValueError(f"{self.name} got no examples: the inputs are empty (shape "
                             f"{tuple(leaves[0].shape)}). Pass at least one.")
        backbone_input = self.backbone.input
        if isinstance(x, dict) and isinstance(backbone_input, dict):
            x = {k: v for k, v in x.items() if k in backbone_input}
        self.backbone.check_inputs(x)

    def _label_rule(self):
        """("sparse" | "categorical" | None, classes): what the compiled loss reads from ``y``."""
        loss = getattr(self, "loss", None)
        if len(self.outputs) != 1 or loss is None:
            return None, None
        classes = self.outputs[0].shape[-1]
        if isinstance(loss, keras.losses.SparseCategoricalCrossentropy) or loss in (
                "sparse_categorical_crossentropy", keras.losses.sparse_categorical_crossentropy):
            return "sparse", classes
        if isinstance(loss, keras.losses.CategoricalCrossentropy) or loss in (
                "categorical_crossentropy", keras.losses.categorical_crossentropy):
            return "categorical", classes
        return None, classes

    def _classes_name(self, classes):
        return "num_classes" if getattr(self, "num_classes", None) == classes else "classes"

    def check_labels(self, y):
        """Labels the compiled loss can read: class ids in ``[0, classes)`` shaped like the output
        without its class axis (sparse cross-entropy), or rows of ``classes`` probabilities
        (categorical); finite in any case."""
        mode, classes = self._label_rule()
        if mode is None and y is None:
            return
        if y is None:
            raise ValueError(f"{self.name} needs labels here: pass y (its loss compares them with the "
                             "predictions), or a dataset of (x, y) pairs.")
        if isinstance(y, dict) or isinstance(y, (list, tuple)) and len(self.outputs) != 1:
            return
        y = eager_array(y)
        if y is None:
            return
        name, out_rank = "y (the labels)", len(self.outputs[0].shape)
        what = f"{self._classes_name(classes)}={classes}"
        if y.dtype == object or not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
            raise ValueError(f"{name} must be numbers, got an array of dtype {y.dtype} ({y.ravel()[:3]!r:.60}). "
                             "Map class names to ids 0…num_classes-1 first.")
        if mode == "sparse":
            if y.ndim == out_rank and y.shape[-1] == classes and classes > 1:
                raise ValueError(
                    f"{name} has shape {y.shape}: one-hot rows, but {self.name} is compiled with sparse "
                    f"categorical cross-entropy, which takes class ids shaped {y.shape[:-1]}. Pass "
                    "y.argmax(-1), or compile(loss=keras.losses.CategoricalCrossentropy(from_logits=True)).")
            if not (y.ndim == out_rank - 1 or (y.ndim == out_rank and y.shape[-1] == 1)):
                raise ValueError(f"{name} has shape {y.shape}; {self.name} takes class ids shaped "
                                 f"(batch{', ...' if out_rank > 2 else ''}), one per prediction.")
            hint = (f" Labels are class ids 0…{classes - 1}; if there are more classes, build the task "
                    "with a larger num_classes." if what.startswith("num_classes") else "")
            check_ids_in_range(name, y, classes, what.split("=")[0], hint)
        else:
            check_finite(name, y)
            if mode == "categorical":
                if y.ndim != out_rank or y.shape[-1] != classes:
                    raise ValueError(
                        f"{name} has shape {y.shape}, but {self.name} is compiled with categorical "
                        f"cross-entropy, which takes one row of {classes} probabilities per example "
                        f"({what}). Use keras.utils.to_categorical(y, {classes}).")
                if y.size and (y.min() < 0 or y.max() > 1):
                    raise ValueError(f"{name} holds {y.min() if y.min() < 0 else y.max():g}, but "
                                     "categorical labels are probabilities in [0, 1].")

    def _check_sample_weight(self, sample_weight):
        weights = eager_array(sample_weight)
        if weights is None:
            return
        check_finite("sample_weight", weights)
        if weights.size and weights.min() < 0:
            raise ValueError(f"sample_weight holds {weights.min():g}: weights must be >= 0.")

    def _checked_labels_dataset(self, ds):
        """Check a dataset's labels inside the pipeline: shape once, values as each batch is read
        (sparse losses only: ids in range and whole; a failure surfaces as a ValueError in fit)."""
        import tensorflow as tf

        mode, classes = self._label_rule()
        spec = ds.element_spec
        if mode != "sparse" or not isinstance(spec, tuple) or len(spec) < 2 or \
                not isinstance(spec[1], tf.TensorSpec):
            return ds
        shape = spec[1].shape
        if shape.rank is not None and shape.rank >= 2 and shape[-1] == classes and classes > 1:
            raise ValueError(
                f"The dataset's labels have shape {shape}: one-hot rows, but {self.name} is compiled with "
                "sparse categorical cross-entropy, which takes class ids. Map them with "
                "tf.argmax(y, -1), or compile(loss=keras.losses.CategoricalCrossentropy(from_logits=True)).")
        what = f"{self._classes_name(classes)}={classes}"

        def check(*element):
            y = element[1]
            valid = (y >= tf.cast(0, y.dtype)) & (y < tf.cast(classes, y.dtype))
            if y.dtype.is_floating:
                valid &= tf.equal(y, tf.round(y))
            message = (f"{_LABEL_CHECK}a label of the dataset is outside [0, {classes}) or not a whole "
                       f"number ({what}); the batch holds")
            assertion = tf.debugging.Assert(tf.reduce_all(valid), [message, y], summarize=20)
            with tf.control_dependencies([assertion]):
                return (element[0], tf.identity(y)) + tuple(element[2:])

        return ds.map(check)

    @contextlib.contextmanager
    def _keeps_state_on_failure(self):
        """Run a trainer call; if it fails, give back every variable value the trainer detached.

        Keras's jax trainer sets each variable's value to None while it runs and writes its new
        state back at the end; a failure before the first step completes (a shape error in
        tracing, an empty iterator) left the model with no values at all, so every later call
        raised "'NoneType' object is not callable". Holding the original arrays costs no copy (jax
        arrays are immutable; a training step that donates them has run past any failure they
        would be needed for, and Keras's own state is written back first).
        """
        optimizer = getattr(self, "optimizer", None)
        variables = list(self.variables) + list(self.metrics_variables)
        if optimizer is not None and getattr(optimizer, "built", False):
            variables += list(optimizer.variables)
        values = [(v, getattr(v, "_value", None)) for v in variables]
        try:
            yield
        except Exception as error:
            if hasattr(self, "jax_state_sync"):  # jax: a state newer than ours is written back first
                if getattr(self, "_jax_state", None):
                    self.jax_state_sync()
                self._jax_state = None
            for variable, value in values:
                if getattr(variable, "_value", 0) is None and value is not None:
                    variable._value = value
            message = str(getattr(error, "message", ""))
            if _LABEL_CHECK in message:  # "…[Label check failed: MESSAGE] [labels]\n…"
                text = message[message.index(_LABEL_CHECK) + len(_LABEL_CHECK):].split("\n")[0]
                raise ValueError(text.replace("] [", " [", 1) + ".") from error
            raise

    def _shared_trainer(self, make, **compile_kwargs):
        """The ``keras.Model`` ``make(self)`` that trains some of this task's layers on other inputs
        (a decoder on cached encoder outputs), made once per ``make`` and compiled again with this
        task's optimizer (and ``compile_kwargs``) whenever they change: one optimizer state for both."""
        trainers = self.__dict__.setdefault("_shared_trainers", {})
        trainer = trainers.get(make)
        if trainer is None:
            trainer = trainers[make] = make(self)
        settings = (self.optimizer, *compile_kwargs.values())
        if trainer.__dict__.get("_task_settings") != settings:
            trainer.compile(optimizer=self.optimizer, jit_compile=self.jit_compile, **compile_kwargs)
            object.__setattr__(trainer, "_task_settings", settings)
        return trainer

    def fit(self, x=None, y=None, batch_size=None, validation_data=None, sample_weight=None, **kwargs):
        if _is_dataset(x):
            kwargs.setdefault("shuffle", False)  # a dataset shuffles itself
        x, y, sample_weight = self._prepare(x, y, sample_weight, labelled=True)
        if validation_data is not None:
            if _is_dataset(validation_data):
                validation_data = self._dataset(validation_data)
            else:
                validation_data = keras.utils.pack_x_y_sample_weight(
                    *self._prepare(*validation_data, labelled=True))
        with self._keeps_state_on_failure():
            return super().fit(x=x, y=y, batch_size=batch_size, validation_data=validation_data,
                               sample_weight=sample_weight, **kwargs)

    def evaluate(self, x=None, y=None, batch_size=None, sample_weight=None, **kwargs):
        if not kwargs.get("_use_cached_eval_dataset"):  # fit's validation pass: already preprocessed
            x, y, sample_weight = self._prepare(x, y, sample_weight, labelled=True)
        with self._keeps_state_on_failure():
            return super().evaluate(x=x, y=y, batch_size=batch_size, sample_weight=sample_weight, **kwargs)

    def predict(self, x, batch_size=None, **kwargs):
        x, _, _ = self._prepare(x)
        with self._keeps_state_on_failure():
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
        tokenizer files are then not read at all). ``dtype="bfloat16"`` (or any dtype policy) builds the
        backbone in that dtype, like ``backbone_kwargs={"dtype": ...}``; the head keeps float32 weights
        and logits.
        """
        loader = load_preset(handle)
        given = "preprocessor" in kwargs
        preprocessor = kwargs.pop("preprocessor", None)
        backbone_kwargs = cls.pop_backbone_kwargs(kwargs)
        task = loader.load_task(cls, load_weights=load_weights, with_preprocessor=not given,
                                backbone_kwargs=backbone_kwargs, **kwargs)
        if task is not None:
            if given:
                task.preprocessor = preprocessor
            return task
        backbone = loader.load_backbone(load_weights=load_weights, **backbone_kwargs)
        preprocessor_kwargs = kwargs.pop("preprocessor_kwargs", {})
        if not given and cls.preprocessor_cls is not None and loader.load_tokenizer() is not None:
            preprocessor_kwargs = _sequence_length_for(backbone, cls.preprocessor_cls, loader,
                                                       preprocessor_kwargs)
            preprocessor = loader.load_preprocessor(cls.preprocessor_cls, **preprocessor_kwargs)
        defaults = loader.task_kwargs(cls)
        return cls(backbone=backbone, preprocessor=preprocessor, **{**defaults, **kwargs})

    @staticmethod
    def pop_backbone_kwargs(kwargs):
        """Take what builds the backbone out of a ``from_preset`` call's ``kwargs``: its
        ``backbone_kwargs`` and ``dtype`` (the backbone's dtype policy; the head keeps float32)."""
        backbone_kwargs = dict(kwargs.pop("backbone_kwargs", None) or {})
        dtype = kwargs.pop("dtype", None)
        if dtype is not None:
            backbone_kwargs.setdefault("dtype", dtype)
        return backbone_kwargs

    def save_to_preset(self, directory, metadata=None):
        """Write backbone, tokenizer, preprocessor and head as one preset directory, atomically."""
        save_preset(directory, backbone=self.backbone, preprocessor=self.preprocessor,
                            task=self, metadata=metadata)

    def export_to_transformers(self, directory, dtype="float32"):
        """Write a Hugging Face transformers folder (``config.json``, ``model.safetensors``, the
        tokenizer's files and, for text generators, ``generation_config.json``) that
        ``transformers.AutoModelForCausalLM.from_pretrained(directory)`` (for a ``CausalLM``) loads
        with no kcookbook code. The backbone is exported: a task's own head (a classifier's Dense)
        is not. LoRA updates are folded in and int8 kernels dequantised; ``dtype`` is
        ``"float32"``, ``"float16"`` or ``"bfloat16"``."""
        export_to_transformers(self, directory, dtype=dtype)


def _sequence_length_for(backbone, preprocessor_cls, loader, preprocessor_kwargs):
    """``preprocessor_kwargs`` with a sequence length the backbone can take: where neither the
    caller nor the preset names one, the preprocessor's default (512 tokens…) is capped at the
    backbone's ``max_sequence_length`` (a preset of a 32-position model without preprocessor.json)."""
    limit = backbone.max_sequence_length
    if limit is None or "sequence_length" in preprocessor_kwargs or \
            "sequence_length" in loader.preprocessor_defaults():
        return preprocessor_kwargs
    parameter = inspect.signature(preprocessor_cls.__init__).parameters.get("sequence_length")
    default = None if parameter is None else parameter.default
    if isinstance(default, int) and default > limit:
        return {**preprocessor_kwargs, "sequence_length": limit}
    return preprocessor_kwargs


class _Variables:
    """Adapter so assign_weights can address a dict of variables like a model."""

    def __init__(self, name, variables):
        self.name = name
        self.weights = list(variables.values())
