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
    "bert": "kcookbook.presets.converters.bert",
    "resnet": "kcookbook.presets.converters.resnet",
    "gemma": "kcookbook.presets.converters.gemma",
    "gpt2": "kcookbook.presets.converters.gpt2",
    "llama": "kcookbook.presets.converters.llama",
    "mistral": "kcookbook.presets.converters.mistral",
    "mixtral": "kcookbook.presets.converters.mixtral",
    "vit": "kcookbook.presets.converters.vit",
}

KERAS_HUB_CLASSES = {
    "ResNetBackbone": "kcookbook.presets.converters.resnet",
    "ResNetImageConverter": "kcookbook.presets.converters.resnet",
    "ResNetImageClassifier": "kcookbook.presets.converters.resnet",
    "ViTBackbone": "kcookbook.presets.converters.vit",
    "ViTImageConverter": "kcookbook.presets.converters.vit",
    "ViTImageClassifier": "kcookbook.presets.converters.vit",
    "EfficientNetBackbone": "kcookbook.presets.converters.efficientnet",
    "EfficientNetImageConverter": "kcookbook.presets.converters.efficientnet",
    "EfficientNetImageClassifier": "kcookbook.presets.converters.efficientnet",
    "BertBackbone": "kcookbook.presets.converters.bert",
    "BertTokenizer": "kcookbook.presets.converters.bert",
    "GPT2Backbone": "kcookbook.presets.converters.gpt2",
    "GPT2Tokenizer": "kcookbook.presets.converters.gpt2",
    "GemmaBackbone": "kcookbook.presets.converters.gemma",
    "MistralBackbone": "kcookbook.presets.converters.mistral",
    "GemmaTokenizer": "kcookbook.presets.converters.gemma",
    "MistralTokenizer": "kcookbook.presets.converters.mistral",
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
