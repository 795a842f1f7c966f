"""Converters: one module per model family, each translating other people's checkpoints.

A converter module provides, for the formats it supports:

* Hugging Face: ``backbone_from_hf(hf_config, **overrides)``, ``weights_from_hf(tensors, backbone)``
  returning ``{variable.path: array}``, ``tokenizer_from_hf(folder)``.
* keras_hub: ``backbone_from_keras_hub(config, **overrides)``,
  ``weights_from_keras_hub(h5_arrays, backbone)``, ``tokenizer_from_keras_hub(config, assets_dir)``.

The tables below map a checkpoint's declared type to its module; a new family adds lines here.
"""

import importlib

HF_MODEL_TYPES = {
    "bert": "kcookbook.formats.converters.bert",
    "resnet": "kcookbook.formats.converters.resnet",
    "gemma": "kcookbook.formats.converters.gemma",
    "gpt2": "kcookbook.formats.converters.gpt2",
    "llama": "kcookbook.formats.converters.llama",
    "mistral": "kcookbook.formats.converters.mistral",
    "mixtral": "kcookbook.formats.converters.mixtral",
    "vit": "kcookbook.formats.converters.vit",
}

KERAS_HUB_CLASSES = {
    "ResNetBackbone": "kcookbook.formats.converters.resnet",
    "ResNetImageConverter": "kcookbook.formats.converters.resnet",
    "ResNetImageClassifier": "kcookbook.formats.converters.resnet",
    "ViTBackbone": "kcookbook.formats.converters.vit",
    "ViTImageConverter": "kcookbook.formats.converters.vit",
    "ViTImageClassifier": "kcookbook.formats.converters.vit",
    "EfficientNetBackbone": "kcookbook.formats.converters.efficientnet",
    "EfficientNetImageConverter": "kcookbook.formats.converters.efficientnet",
    "EfficientNetImageClassifier": "kcookbook.formats.converters.efficientnet",
    "BertBackbone": "kcookbook.formats.converters.bert",
    "BertTokenizer": "kcookbook.formats.converters.bert",
    "GPT2Backbone": "kcookbook.formats.converters.gpt2",
    "GPT2Tokenizer": "kcookbook.formats.converters.gpt2",
    "GemmaBackbone": "kcookbook.formats.converters.gemma",
    "MistralBackbone": "kcookbook.formats.converters.mistral",
    "GemmaTokenizer": "kcookbook.formats.converters.gemma",
    "MistralTokenizer": "kcookbook.formats.converters.mistral",
}


def for_hf_model_type(model_type):
    module = HF_MODEL_TYPES.get(model_type)
    return importlib.import_module(module) if module else None


def for_keras_hub_class(class_name):
    module = KERAS_HUB_CLASSES.get(class_name)
    return importlib.import_module(module) if module else None


def known_hf_model_types():
    return sorted(HF_MODEL_TYPES)


def known_keras_hub_classes():
    return sorted(KERAS_HUB_CLASSES)
