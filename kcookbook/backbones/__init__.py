"""Backbones: one readable file per model family, all built on ``kcookbook.components``."""

from kcookbook.backbones.backbone import Backbone
from kcookbook.backbones.bert import BertBackbone
from kcookbook.backbones.decoder import DecoderBackbone
from kcookbook.backbones.efficientnet import EfficientNetBackbone, EfficientNetLiteBackbone
from kcookbook.backbones.gpt2 import GPT2Backbone
from kcookbook.backbones.resnet import ResNetBackbone
from kcookbook.backbones.llama import GemmaBackbone, LlamaBackbone, MistralBackbone, MixtralBackbone
from kcookbook.backbones.llama import Gemma2Backbone, Gemma3Backbone
from kcookbook.backbones.vit import ViTBackbone
from kcookbook.backbones.yolov8 import YOLOv8Backbone
from kcookbook.backbones.sam import SAMBackbone

__all__ = ["Gemma2Backbone", "Gemma3Backbone", "Backbone", "BertBackbone", "DecoderBackbone", "EfficientNetBackbone", "EfficientNetLiteBackbone", "GemmaBackbone", "GPT2Backbone", "LlamaBackbone", "MistralBackbone",
           "MixtralBackbone", "ResNetBackbone", "ViTBackbone"]
from kcookbook.backbones.seq2seq import Seq2SeqBackbone  # noqa: E402
from kcookbook.backbones.t5 import T5Backbone  # noqa: E402

__all__ += ["Seq2SeqBackbone", "T5Backbone"]
from kcookbook.backbones.clip import CLIPBackbone, CLIPTextEncoder, CLIPVisionEncoder  # noqa: E402

__all__ += ["CLIPBackbone", "CLIPTextEncoder", "CLIPVisionEncoder"]
__all__ += ["YOLOv8Backbone"]
__all__ += ["SAMBackbone"]
from kcookbook.backbones.whisper import WhisperBackbone, WhisperTokenizer  # noqa: E402

__all__ += ["WhisperBackbone", "WhisperTokenizer"]
from kcookbook.backbones.stable_diffusion import (  # noqa: E402
    AutoencoderTiny,
    StableDiffusionBackbone,
    StableDiffusionUNet,
    TinyVAEDecoder,
    TinyVAEEncoder,
    VAEDecoder,
    VAEEncoder,
)

__all__ += ["AutoencoderTiny", "StableDiffusionBackbone", "StableDiffusionUNet", "TinyVAEDecoder", "TinyVAEEncoder",
            "VAEDecoder", "VAEEncoder"]
