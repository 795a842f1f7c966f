"""Backbones: one readable file per model family, all built on ``kcookbook.components``."""

from kcookbook.backbones.backbone import Backbone
from kcookbook.backbones.bert import BertBackbone
from kcookbook.backbones.decoder import DecoderBackbone
from kcookbook.backbones.efficientnet import EfficientNetBackbone, EfficientNetLiteBackbone
from kcookbook.backbones.gpt2 import GPT2Backbone
from kcookbook.backbones.resnet import ResNetBackbone
from kcookbook.backbones.llama import GemmaBackbone, LlamaBackbone, MistralBackbone, MixtralBackbone
from kcookbook.backbones.vit import ViTBackbone
from kcookbook.backbones.sam import SAMBackbone

__all__ = ["Backbone", "BertBackbone", "DecoderBackbone", "EfficientNetBackbone", "EfficientNetLiteBackbone", "GemmaBackbone", "GPT2Backbone", "LlamaBackbone", "MistralBackbone",
           "MixtralBackbone", "ResNetBackbone", "ViTBackbone"]
__all__ += ["SAMBackbone"]
