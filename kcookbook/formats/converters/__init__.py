"""Converters: one per model family, each translating other people's checkpoints into kcookbook's.

A family's converter is a :class:`~kcookbook.formats.converters.base.Converter` subclass: it names
the Hugging Face ``model_type`` values and keras_hub classes it reads and overrides the hooks its
checkpoints need (``base.py`` lists every hook with its default). ``CONVERTERS`` registers each one by
dotted path, imported when a checkpoint first asks for a converter; a new family adds one line here.
"""

import functools
import importlib

CONVERTERS = {
    "bert": "kcookbook.formats.converters.bert:BertConverter",
    "gpt2": "kcookbook.formats.converters.gpt2:GPT2Converter",
    "llama": "kcookbook.formats.converters.llama:LlamaConverter",
    "gemma": "kcookbook.formats.converters.gemma:GemmaConverter",
    "mistral": "kcookbook.formats.converters.mistral:MistralConverter",
    "mixtral": "kcookbook.formats.converters.mixtral:MixtralConverter",
    "efficientnet": "kcookbook.formats.converters.efficientnet:EfficientNetConverter",
    "efficientnet_lite": "kcookbook.formats.converters.efficientnet_lite:EfficientNetLiteConverter",
    "resnet": "kcookbook.formats.converters.resnet:ResNetConverter",
    "vit": "kcookbook.formats.converters.vit:ViTConverter",
    "t5": "kcookbook.formats.converters.t5:T5Converter",
    "clip": "kcookbook.formats.converters.clip:CLIPConverter",
    "open_clip": "kcookbook.formats.converters.open_clip:OpenCLIPConverter",
    "yolov8": "kcookbook.formats.converters.yolov8:YOLOv8Converter",
    "gemma2": "kcookbook.formats.converters.gemma:Gemma2Converter",
    "gemma3": "kcookbook.formats.converters.gemma:Gemma3Converter",
    "sam": "kcookbook.formats.converters.sam:SAMConverter",
    "whisper": "kcookbook.formats.converters.whisper:WhisperConverter",
    "stable_diffusion": "kcookbook.formats.converters.stable_diffusion:StableDiffusionConverter",
}


def for_family(family):
    """The converter of ``family`` (a key of ``CONVERTERS``)."""
    module, _, name = CONVERTERS[family].partition(":")
    return getattr(importlib.import_module(module), name)()


@functools.cache
def _index():
    """``({hf model_type: converter}, {keras_hub class name: converter}, {our backbone class name:
    converter that exports it})`` of every family."""
    by_model_type, by_keras_hub_class, by_backbone_class = {}, {}, {}
    for family in CONVERTERS:
        converter = for_family(family)
        by_model_type.update(dict.fromkeys(converter.hf_model_types, converter))
        by_keras_hub_class.update(dict.fromkeys(converter.keras_hub_classes, converter))
        by_backbone_class.update(dict.fromkeys(converter.exports_backbones, converter))
    return by_model_type, by_keras_hub_class, by_backbone_class


def for_hf_model_type(model_type):
    """The converter of a Hugging Face ``config.json``'s ``model_type``, or None."""
    return _index()[0].get(model_type)


def for_keras_hub_class(class_name):
    """The converter of a keras_hub class name (``"BertBackbone"``), or None."""
    return _index()[1].get(class_name)


def known_hf_model_types():
    return sorted(_index()[0])


def known_keras_hub_classes():
    return sorted(_index()[1])


def for_backbone_class(class_name):
    """The converter that exports kcookbook's backbone class ``class_name`` to transformers, or None."""
    return _index()[2].get(class_name)


def exportable_backbone_classes():
    return sorted(_index()[2])
