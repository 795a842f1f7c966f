"""The converter contract: how one model family's checkpoints become kcookbook objects.

Each family has one :class:`Converter` subclass that overrides the hooks its checkpoints need; the
loaders (``kcookbook.formats.loaders``, ``gguf``) call hooks on it without asking whether they exist.
A hook a family lacks keeps the default here: it returns None where "this checkpoint has none"
is an answer (a tokenizer for images, a classification head), and otherwise raises
:class:`ConversionNotSupported` naming the family and what it cannot read.

Weights hooks return ``{variable.path: array}`` for ``files.assign_weights``, which checks that every
variable is assigned once with the right shape.
"""

from kcookbook.presets.errors import PresetError


class ConversionNotSupported(PresetError):
    """A checkpoint asks a family's converter for something kcookbook does not convert for that family."""


class Converter:
    """Base class of every family's converter; override the hooks the family's checkpoints need.

    Class attributes:
        family: the family's name (``"bert"``), used in error messages.
        hf_model_types: the Hugging Face ``config.json`` ``model_type`` values this converter reads.
        keras_hub_classes: the keras_hub class names (``config.json``/``tokenizer.json``/``task.json``
            ``class_name``) this converter translates.
    """

    family = None
    hf_model_types = ()
    keras_hub_classes = ()
    # kcookbook backbone class names this converter writes back as transformers folders, and whether
    # that model generates text (a generation_config.json goes with it).
    exports_backbones = ()
    hf_generates = False

    def not_supported(self, what):
        return ConversionNotSupported(
            f"kcookbook's {self.family} converter does not read {what}. It reads Hugging Face model "
            f"types {list(self.hf_model_types)} and keras_hub classes {list(self.keras_hub_classes)}; "
            "save the model in one of those forms or as a kcookbook preset (save_to_preset).")

    # ----- Hugging Face ``save_pretrained`` folders (and GGUF files, read as one) -----
    def backbone_from_hf(self, hf_config, **overrides):
        """The backbone ``config.json`` (a dict) describes, with ``overrides`` applied; no weights yet."""
        raise self.not_supported("Hugging Face checkpoints")

    def weights_from_hf(self, tensors, backbone):
        """``{variable.path: array}`` of ``backbone`` from the checkpoint's ``{name: array}``."""
        raise self.not_supported("Hugging Face weights")

    def tokenizer_from_hf(self, folder, **kwargs):
        """The tokenizer of the checkpoint folder, or None (a family without text, no tokenizer files)."""
        return None

    def image_converter_from_hf(self, folder):
        """The image processor's settings (``image_size``, ``scale``, ``mean``, ``std``…) for
        ``ImageConverter.from_processor_settings``, or None (not a vision checkpoint)."""
        return None

    def classifier_head_from_hf(self, tensors):
        """A ``…ForImageClassification`` head as ``(kernel (features, classes), bias)``, or None."""
        return None

    def class_names_from_hf(self, hf_config):
        """``id2label`` as a list indexed by class id, or None when the checkpoint has no labels."""
        labels = hf_config.get("id2label")
        if not labels:
            return None
        return [labels.get(str(i), labels.get(i)) for i in range(len(labels))]

    # ----- keras_hub presets (the KerasHub layout, written by keras_hub) -----
    def backbone_from_keras_hub(self, config, **overrides):
        """Our backbone for keras_hub's backbone ``config`` (``config.json``'s inner ``config``)."""
        raise self.not_supported("keras_hub backbones")

    def weights_from_keras_hub(self, arrays, backbone):
        """``{variable.path: array}`` of ``backbone`` from keras_hub's ``model.weights.h5`` arrays."""
        raise self.not_supported("keras_hub weights")

    def tokenizer_from_keras_hub(self, config, assets_dir, **kwargs):
        """Our tokenizer for keras_hub's tokenizer ``config`` and its ``assets/tokenizer`` folder."""
        raise self.not_supported("keras_hub tokenizers")

    def image_converter_from_keras_hub(self, config, **kwargs):
        """Our ``ImageConverter`` for keras_hub's image converter ``config``."""
        raise self.not_supported("keras_hub image converters")

    def task_from_keras_hub(self, task_cls, config, backbone, **kwargs):
        """keras_hub's task (``task.json``'s inner ``config``) as ``task_cls`` on ``backbone``, or None
        to build a fresh head (another task class, or ``kwargs`` asking for another head)."""
        return None

    def task_weights_from_keras_hub(self, arrays, task):
        """``{variable.path: array}`` of the head of ``task`` from keras_hub's ``task.weights.h5``."""
        raise self.not_supported("keras_hub task weights")

    # ----- torch state dicts (read with ``torch.load(..., weights_only=True)``) -----
    def weights_from_state_dict(self, state, backbone):
        """``{variable.path: array}`` of ``backbone`` from a torch ``state_dict`` (``{name: array}``),
        popping the entries it uses from ``state`` so that what is left over can be reported."""
        raise self.not_supported("torch state dicts")

    # ----- CTranslate2 ``model.bin`` files (kcookbook.formats.ctranslate2) -----
    def hf_from_ctranslate2(self, variables, ct2_config):
        """``(hf_config, {hf tensor name: array})`` of a CTranslate2 model's ``{name: array}``
        variables and its ``config.json`` (a dict): the Hugging Face checkpoint it is a copy of."""
        raise self.not_supported("CTranslate2 models")

    # ----- export to Hugging Face transformers (kcookbook.formats.export) -----
    def hf_config_from_backbone(self, backbone):
        """The transformers ``config.json`` (a dict, with ``model_type`` and ``architectures``) of
        ``backbone``: the inverse of :meth:`backbone_from_hf`."""
        raise self.not_exported()

    def hf_tensors_from_backbone(self, backbone, read):
        """``{transformers tensor name: function returning the array}`` of ``backbone``, the inverse
        of :meth:`weights_from_hf`; ``read(variable_path)`` gives a weight as a float numpy array
        (LoRA folded in, int8 dequantised). Functions, so the export computes one tensor at a time."""
        raise self.not_exported()

    def not_exported(self):
        return ConversionNotSupported(
            f"kcookbook's {self.family} converter does not write transformers folders yet; save the "
            "model with save_to_preset instead.")

    def __repr__(self):
        return f"<{type(self).__name__} family={self.family!r}>"
