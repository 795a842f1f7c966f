"""Format detection and loaders: a local preset path → backbone, tokenizer, preprocessor, task.

The formats kcookbook reads are named in ``FORMATS`` by dotted path and imported when a preset is
loaded (nothing is imported to register itself); ``register_format`` adds more at run time:

* ``keras``: the KerasHub layout (``config.json`` naming a class, ``model.weights.h5``…), written by
  kcookbook or by keras_hub (translated by a converter).
* ``huggingface``: a ``save_pretrained`` folder (``config.json`` with ``model_type``,
  ``model.safetensors``), converted on load.
* ``efficientnet_lite_state_dict``: a lukemelas-style ``efficientnet-lite*.pth`` torch state dict.
* ``gguf``: a llama.cpp ``.gguf`` file, read as a Hugging Face checkpoint of its model type.
* ``yolov8_state_dict``: an Ultralytics YOLOv8 state dict next to a ``yolov8.json`` (scale, classes).
* ``segment_anything_state_dict``: Meta's ``sam_vit_{b,l,h}_*.pth``, or a state dict next to a
  ``segment_anything.json`` (``_build_sam``'s settings).
* ``open_clip_state_dict``: an OpenCLIP state dict next to its ``open_clip_config.json`` (OpenCLIP's
  hf-hub layout).
* ``ctranslate2``: a CTranslate2 ``model.bin`` (faster-whisper), read as the Hugging Face checkpoint
  its converter makes of it.
* ``diffusers_pipeline``: a diffusers Stable Diffusion pipeline folder (``model_index.json``, ``unet/``…).
* ``diffusers_model``: one diffusers model folder (``config.json`` with ``_class_name``): ``AutoencoderTiny`` (TAESD).
"""

import importlib
import inspect
import os

import keras

from kcookbook.formats import converters
from kcookbook.presets import files
from kcookbook.presets.errors import PresetError, blaming

# name → "module:LoaderClass", tried in this order; the class's ``detect(path)`` says whether it reads path.
FORMATS = {
    "keras": "kcookbook.formats.loaders:KerasPresetLoader",
    "huggingface": "kcookbook.formats.loaders:HuggingFaceLoader",
    "efficientnet_lite_state_dict": "kcookbook.formats.converters.efficientnet_lite:StateDictLoader",
    "gguf": "kcookbook.formats.gguf:GGUFLoader",
    "yolov8_state_dict": "kcookbook.formats.converters.yolov8:StateDictLoader",
    "lite_medsam_state_dict": "kcookbook.formats.converters.sam:LiteMedSAMLoader",
    "segment_anything_state_dict": "kcookbook.formats.converters.sam:SegmentAnythingLoader",
    "open_clip_state_dict": "kcookbook.formats.converters.open_clip:OpenCLIPLoader",
    "ctranslate2": "kcookbook.formats.ctranslate2:CTranslate2Loader",
    "diffusers_pipeline": "kcookbook.formats.converters.stable_diffusion:DiffusersPipelineLoader",
    "diffusers_model": "kcookbook.formats.converters.stable_diffusion:DiffusersModelLoader",
}

_FORMATS = [(name, None, loader) for name, loader in FORMATS.items()]


def import_object(dotted_path):
    """``"package.module:Name"`` → the object ``Name`` of that module (imported now)."""
    module, _, name = dotted_path.partition(":")
    return getattr(importlib.import_module(module), name)


def register_format(name, detect, loader_cls, first=False):
    """Teach ``load`` a new format: ``detect(path) -> bool`` picks ``loader_cls(path, handle, info)``."""
    entry = (name, detect, loader_cls)
    _FORMATS.insert(0, entry) if first else _FORMATS.append(entry)


def formats():
    """``(name, detect, loader_cls)`` of every format, in the order ``load`` tries them."""
    for name, detect, loader_cls in list(_FORMATS):
        if isinstance(loader_cls, str):
            loader_cls = import_object(loader_cls)
        yield name, detect or loader_cls.detect, loader_cls


def load(handle):
    """Resolve a handle and return the loader for what is there."""
    from kcookbook.presets.resolve import resolve

    path, info = resolve(handle)
    for _, detect, loader_cls in formats():
        if detect(path):
            return loader_cls(path, handle, info)
    raise PresetError(
        f"Preset {handle!r} resolved to {path}, which kcookbook cannot read: expected a KerasHub preset "
        f"(config.json naming a class), a Hugging Face checkpoint (config.json with model_type) or "
        f"another registered format ({', '.join(name for name, _, _ in _FORMATS)})."
    )


def accepted_kwargs(fn, kwargs):
    """The subset of ``kwargs`` that ``fn`` accepts by name."""
    params = inspect.signature(fn).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return dict(kwargs)
    return {k: v for k, v in kwargs.items() if k in params}


class PresetLoader:
    """What every format's loader provides."""

    format = "unknown"

    def __init__(self, path, handle, info=None):
        self.path = path
        self.handle = handle
        self.info = info

    def file(self, name):
        """The path of a file in the preset; names and links that lead outside it are refused."""
        return files.safe_path(self.path, name)

    def load_backbone(self, load_weights=True, **overrides):
        raise NotImplementedError

    def load_tokenizer(self, **kwargs):
        return None

    def load_image_converter(self, **kwargs):
        """The preset's ImageConverter (image size, normalisation), or None for non-vision presets."""
        return None

    def preprocessor_defaults(self):
        """Constructor defaults for a preprocessor of this preset (e.g. sequence_length)."""
        return {}

    def task_defaults(self):
        """Constructor defaults for a task on this preset (e.g. pooling="mean" for sentence embedders)."""
        return {}

    def task_kwargs(self, task_cls):
        """The ``task_defaults()`` that ``task_cls``'s constructor takes."""
        return accepted_kwargs(task_cls.__init__, self.task_defaults())

    def load_task(self, task_cls, load_weights=True, with_preprocessor=True, backbone_kwargs=None, **kwargs):
        """A saved task of class ``task_cls`` whose config agrees with ``kwargs``, else None
        (without its preprocessor when ``with_preprocessor`` is False; its backbone built with
        ``backbone_kwargs``)."""
        return None

    def load_preprocessor(self, preprocessor_cls, **kwargs):
        tokenizer = self.load_tokenizer()
        if tokenizer is None:
            raise PresetError(
                f"Preset {self.handle!r} ({self.path}) has no tokenizer files, so it cannot build a "
                f"{preprocessor_cls.__name__}. Pass preprocessor=None and feed token ids, or use a "
                "preset that includes vocab/tokenizer files."
            )
        defaults = accepted_kwargs(preprocessor_cls.__init__, self.preprocessor_defaults())
        return preprocessor_cls(tokenizer=tokenizer, **{**defaults, **kwargs})

    @property
    def metadata(self):
        path = self.file(files.METADATA_FILE)
        return files.read_json(path, "metadata") if os.path.exists(path) else {}

    def __repr__(self):
        return f"<{type(self).__name__} {self.handle!r} at {self.path}>"


def _deserialize(config, source, custom_objects=None):
    try:
        return keras.saving.deserialize_keras_object(config, custom_objects=custom_objects)
    except Exception as e:
        raise PresetError(f"Could not build the object described by {source}: {e}") from e


def _folder_config(path):
    """``(found, config)``: whether ``path`` is a folder with a ``config.json``, and that file's JSON
    object (None when it is unreadable or not an object)."""
    config = files.safe_path(path, files.CONFIG_FILE)
    if not (os.path.isdir(path) and os.path.exists(config)):
        return False, None
    try:
        return True, files.read_json(config)
    except PresetError:
        return True, None


def _registered_name(config):
    return config.get("registered_name") or config.get("class_name")


class KerasPresetLoader(PresetLoader):
    """KerasHub layout: ours (``kcookbook>…`` classes) or keras_hub's (translated by converters)."""

    format = "keras"

    @staticmethod
    def detect(path):
        found, data = _folder_config(path)
        if data is None:
            return found  # a corrupt config.json: let load_backbone report it
        return "class_name" in data and "config" in data

    def backbone_config(self):
        return files.read_serialized(self.file(files.CONFIG_FILE))

    def _converter(self, config, source):
        name = _registered_name(config)
        if name and name.startswith("kcookbook>"):
            return None
        converter = converters.for_keras_hub_class(config.get("class_name"))
        if converter is None:
            known = converters.known_keras_hub_classes()
            raise PresetError(
                f"{source} names class {name!r}, which kcookbook cannot build. It builds its own "
                f"classes (kcookbook>…) and converts these keras_hub classes: {', '.join(known)}."
            )
        return converter

    def load_backbone(self, load_weights=True, **overrides):
        source = self.file(files.CONFIG_FILE)
        config = self.backbone_config()
        converter = self._converter(config, source)
        weights = self.file(files.WEIGHTS_FILE)
        if converter is None:
            config = dict(config, config={**config["config"], **overrides})
            backbone = _deserialize(config, source)
            if load_weights:
                files.load_keras_weights(backbone, weights)
            return backbone
        with blaming(source):
            backbone = converter.backbone_from_keras_hub(config["config"], **overrides)
        if load_weights:
            arrays = converter.weights_from_keras_hub(files.read_h5_arrays(weights), backbone)
            files.assign_weights(backbone, arrays, weights)
        return backbone

    def load_tokenizer(self, **kwargs):
        path = self.file(files.TOKENIZER_FILE)
        if not os.path.exists(path):
            return None
        config = files.read_serialized(path, "tokenizer config")
        assets = files.safe_path(self.path, files.ASSETS_DIR, "tokenizer")
        if os.path.isdir(assets):
            files.check_links(self.path, assets, recursive=True)
        converter = self._converter(config, path)
        if converter is not None:
            return converter.tokenizer_from_keras_hub(config["config"], assets, **kwargs)
        cls = keras.saving.get_registered_object(_registered_name(config))
        if cls is None:
            raise PresetError(f"{path} names an unknown tokenizer class {_registered_name(config)!r}.")
        inner = cls.config_with_assets({**config["config"], **kwargs}, assets)
        try:
            with blaming(path):
                return cls.from_config(inner)
        except PresetError:
            raise
        except Exception as e:
            raise PresetError(f"Could not build the tokenizer from {path} and {assets}: {e}") from e

    def load_image_converter(self, **kwargs):
        path = self.file(files.IMAGE_CONVERTER_FILE)
        if not os.path.exists(path):
            return None
        config = files.read_serialized(path, "image converter config")
        converter = self._converter(config, path)
        if converter is not None:
            return converter.image_converter_from_keras_hub(config["config"], **kwargs)
        config = dict(config, config={**config["config"], **kwargs})
        return _deserialize(config, path)

    def preprocessor_defaults(self):
        path = self.file(files.PREPROCESSOR_FILE)
        if not os.path.exists(path):
            return {}
        config = files.read_serialized(path, "preprocessor config")["config"]
        return {k: v for k, v in config.items()
                if k in ("sequence_length", "truncate", "add_start_token", "add_end_token")}

    def task_defaults(self):
        return dict(self.metadata.get("task_defaults", {}))

    def load_preprocessor(self, preprocessor_cls, **kwargs):
        path = self.file(files.PREPROCESSOR_FILE)
        if os.path.exists(path):
            config = files.read_serialized(path, "preprocessor config")
            if _registered_name(config) == keras.saving.get_registered_name(preprocessor_cls):
                inner = {**config["config"], **kwargs, "tokenizer": self.load_tokenizer()}
                with blaming(path):
                    return preprocessor_cls.from_config(inner)
        return super().load_preprocessor(preprocessor_cls, **kwargs)

    def load_task(self, task_cls, load_weights=True, with_preprocessor=True, backbone_kwargs=None, **kwargs):
        path = self.file(files.TASK_FILE)
        if not os.path.exists(path):
            return None
        config = files.read_serialized(path, "task config")
        if str(_registered_name(config)).startswith("keras_hub>"):
            return self._load_keras_hub_task(task_cls, config, load_weights, backbone_kwargs, **kwargs)
        if _registered_name(config) != keras.saving.get_registered_name(task_cls):
            return None
        inner = config["config"]
        if any(k in inner and inner[k] != v for k, v in kwargs.items()):
            return None  # e.g. a different num_classes: build a fresh head instead
        backbone = self.load_backbone(load_weights=load_weights, **(backbone_kwargs or {}))
        preprocessor = None
        if with_preprocessor and task_cls.preprocessor_cls is not None and self.load_tokenizer() is not None:
            preprocessor = self.load_preprocessor(task_cls.preprocessor_cls)
        with blaming(path):
            task = task_cls.from_config({**inner, **kwargs, "backbone": backbone,
                                         "preprocessor": preprocessor})
        if load_weights:
            task.load_head_weights(self.file(files.TASK_WEIGHTS_FILE))
        return task


    def _load_keras_hub_task(self, task_cls, config, load_weights, backbone_kwargs=None, **kwargs):
        """keras_hub's task (e.g. ``ResNetImageClassifier``) as ``task_cls`` with its head weights,
        when the family's converter knows it (``task_from_keras_hub``); None builds a fresh head."""
        converter = converters.for_keras_hub_class(config.get("class_name"))
        if converter is None:
            return None
        backbone = self.load_backbone(load_weights=load_weights, **(backbone_kwargs or {}))
        task = converter.task_from_keras_hub(task_cls, config["config"], backbone, **kwargs)
        if task is not None and load_weights:
            path = self.file(files.TASK_WEIGHTS_FILE)
            task.assign_head_weights(converter.task_weights_from_keras_hub(files.read_h5_arrays(path), task),
                                     path)
        return task


class HuggingFaceLoader(PresetLoader):
    """A Hugging Face ``save_pretrained`` folder, converted by the family's converter."""

    format = "huggingface"

    @staticmethod
    def detect(path):
        found, data = _folder_config(path)
        return found and data is not None and "model_type" in data

    def __init__(self, path, handle, info=None):
        super().__init__(path, handle, info)
        files.check_links(path)  # converters read vocab.txt, tokenizer.json... from the folder by name
        self.config = files.read_json(self.file(files.CONFIG_FILE))
        model_type = self.config.get("model_type")
        self.converter = converters.for_hf_model_type(model_type)
        if self.converter is None:
            raise PresetError(
                f"{self.file(files.CONFIG_FILE)} is a Hugging Face {model_type!r} checkpoint; kcookbook "
                f"converts these model types: {', '.join(converters.known_hf_model_types())}."
            )

    def read_tensors(self):
        """All tensors of ``model.safetensors`` (or its shards) as numpy arrays."""
        single = self.file("model.safetensors")
        index = self.file("model.safetensors.index.json")
        if os.path.exists(single):
            shards = [single]
        elif os.path.exists(index):
            with blaming(index):
                weight_map = files.read_json(index, "safetensors index")["weight_map"]
                shards = sorted({self.file(f) for f in weight_map.values()})
        else:
            raise PresetError(
                f"No model.safetensors in {self.path}. Save the checkpoint with "
                "save_pretrained(..., safe_serialization=True); pickled .bin files are not loaded."
            )
        tensors = {}
        for shard in shards:
            tensors.update(files.read_safetensors(shard))
        return tensors

    def load_backbone(self, load_weights=True, **overrides):
        with blaming(self.file(files.CONFIG_FILE)):
            backbone = self.converter.backbone_from_hf(self.config, **overrides)
        if load_weights:
            arrays = self.converter.weights_from_hf(self.read_tensors(), backbone)
            files.assign_weights(backbone, arrays, self.path)
        return backbone

    def load_tokenizer(self, **kwargs):
        return self.converter.tokenizer_from_hf(self.path, **kwargs)

    def load_image_converter(self, **kwargs):
        """From ``preprocessor_config.json``, for vision families: the converter's
        ``image_converter_from_hf(folder)`` gives the processor's settings (image_size, scale, mean,
        std, …) or None."""
        settings = self.converter.image_converter_from_hf(self.path)
        if settings is None:
            return None
        from kcookbook.components.image_converter import ImageConverter

        return ImageConverter.from_processor_settings(**{**settings, **kwargs})

    def load_task(self, task_cls, load_weights=True, with_preprocessor=True, **kwargs):
        """A ``…ForImageClassification`` checkpoint's own head, kept when ``num_classes`` is absent
        or equal (the converter's ``classifier_head_from_hf`` finds it; None: build a fresh head)."""
        if "class_names" not in inspect.signature(task_cls.__init__).parameters:
            return None
        tensors = self.read_tensors()
        head = self.converter.classifier_head_from_hf(tensors)
        if head is None:
            return None
        kernel, bias = head
        num_classes = int(bias.shape[0])
        if kwargs.get("num_classes", num_classes) != num_classes:
            return None
        names = self.converter.class_names_from_hf(self.config)
        kwargs = {"num_classes": num_classes,
                  "class_names": names if names and len(names) == num_classes else None, **kwargs}
        task = task_cls(backbone=self.load_backbone(load_weights=load_weights), **kwargs)
        if load_weights:
            dense = task.get_layer("predictions")
            dense.kernel.assign(kernel)
            dense.bias.assign(bias)
        return task

    def preprocessor_defaults(self):
        defaults = {}
        st_config = self.file("sentence_bert_config.json")
        if os.path.exists(st_config):
            defaults["sequence_length"] = files.read_json(st_config).get("max_seq_length")
        elif "max_position_embeddings" in self.config:
            defaults["sequence_length"] = min(512, self.config["max_position_embeddings"])
        return {k: v for k, v in defaults.items() if v}

    def task_defaults(self):
        pooling = self.file(os.path.join("1_Pooling", "config.json"))
        if os.path.exists(pooling):
            modes = files.read_json(pooling)
            if modes.get("pooling_mode_mean_tokens"):
                return {"pooling": "mean"}
            if modes.get("pooling_mode_cls_token"):
                return {"pooling": "cls"}
        return {}
