"""Foundational pieces: tokenizers, packers, embeddings, attention, transformer blocks, pooling.

No file here names a model family; backbones assemble these.
"""

from kcookbook.components.activations import gelu_approximate, get_activation, quick_gelu
from kcookbook.components.attention import MultiHeadAttention
from kcookbook.components.byte_pair import BytePairTokenizer
from kcookbook.components.augmentation import JitteredResize, Mosaic
from kcookbook.components.boxes import NonMaxSuppression, complete_iou, non_max_suppression
from kcookbook.components.causal_attention import CausalSelfAttention, causal_attention_mask
from kcookbook.components.decoder_block import DecoderBlock
from kcookbook.components.convolution import Conv2D, fold_batch_norms
from kcookbook.components.depthwise_conv import DepthwiseConv2D
from kcookbook.components.embeddings import (
    PositionEmbedding,
    ReversibleEmbedding,
    TokenAndPositionEmbedding,
)
from kcookbook.components.hf_tokenizer import HuggingFaceTokenizer
from kcookbook.components.image_converter import ImageConverter
from kcookbook.components.masked_lm_head import MaskedLMHead
from kcookbook.components.masking import MaskedLMMaskGenerator
from kcookbook.components.feed_forward import FeedForward, GatedFeedForward
from kcookbook.components.mixture_of_experts import (
    MixtureOfExperts,
    expert_load,
    load_balancing_loss,
    parameter_counts,
    record_routing,
)
from kcookbook.components.packers import MultiSegmentPacker, StartEndPacker
from kcookbook.components.patch_embedding import PatchEmbedding
from kcookbook.components.pooling import L2Normalization, MaskedMeanPooling, MaxPooling2D
from kcookbook.components.rms_normalization import RMSNormalization
from kcookbook.components.rotary_embedding import RotaryEmbedding
from kcookbook.components.samplers import (
    BeamSampler,
    ContrastiveSampler,
    GreedySampler,
    Sampler,
    TemperatureSampler,
    TopKSampler,
    TopPSampler,
    get_sampler,
    sample_from_logits,
)
from kcookbook.components.sentencepiece import SentencePieceTokenizer
from kcookbook.components.tokenizer import Tokenizer
from kcookbook.components.transformer import TransformerEncoderBlock, padding_to_attention_mask
from kcookbook.components.wordpiece import WordPieceTokenizer

__all__ = [
    "ImageConverter",
    "BytePairTokenizer", "HuggingFaceTokenizer", "SentencePieceTokenizer",
    "JitteredResize", "L2Normalization", "MaskedLMHead", "MaskedLMMaskGenerator", "MaskedMeanPooling", "MaxPooling2D",
    "MultiHeadAttention",
    "Mosaic", "MultiSegmentPacker", "NonMaxSuppression", "PatchEmbedding", "PositionEmbedding", "ReversibleEmbedding", "StartEndPacker",
    "TokenAndPositionEmbedding", "Tokenizer", "TransformerEncoderBlock", "WordPieceTokenizer",
    "gelu_approximate", "get_activation", "non_max_suppression", "padding_to_attention_mask",
    "CausalSelfAttention", "DecoderBlock", "DepthwiseConv2D", "FeedForward", "GatedFeedForward", "MixtureOfExperts",
    "RMSNormalization", "RotaryEmbedding", "Sampler", "causal_attention_mask", "get_sampler",
    "load_balancing_loss", "expert_load", "parameter_counts", "record_routing",
    "BeamSampler", "ContrastiveSampler", "GreedySampler", "TemperatureSampler", "TopKSampler", "TopPSampler",
    "sample_from_logits",
]
from kcookbook.components.encoder_decoder_block import (  # noqa: E402
    EncoderDecoderAttention,
    EncoderDecoderBlock,
)
from kcookbook.components.relative_position_bias import RelativePositionBias  # noqa: E402

__all__ += ["EncoderDecoderAttention", "EncoderDecoderBlock", "RelativePositionBias"]
__all__ += ["quick_gelu"]
from kcookbook.components.anchors import anchor_points, boxes_to_distances, distances_to_boxes  # noqa: E402
from kcookbook.components.distribution_focal_loss import distribution_focal_loss, expected_distance  # noqa: E402
from kcookbook.components.task_aligned_assigner import TaskAlignedAssigner  # noqa: E402

__all__ += ["TaskAlignedAssigner", "anchor_points", "boxes_to_distances", "complete_iou", "distances_to_boxes",
            "distribution_focal_loss", "expected_distance"]
from kcookbook.components.log_mel import LogMelSpectrogram  # noqa: E402

__all__ += ["LogMelSpectrogram"]
from kcookbook.components.schedulers import (  # noqa: E402
    DDIMScheduler,
    DDPMScheduler,
    EulerDiscreteScheduler,
    classifier_free_guidance,
)

__all__ += ["DDIMScheduler", "DDPMScheduler", "EulerDiscreteScheduler", "classifier_free_guidance"]
__all__ += ["Conv2D", "fold_batch_norms"]
