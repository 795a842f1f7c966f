"""Task models: a backbone + head + preprocessor that fit/predict on raw inputs."""

from kcookbook.tasks.causal_lm import CausalLM, CausalLMPreprocessor
from kcookbook.tasks.image_classifier import ImageClassifier, ImageClassifierPreprocessor
from kcookbook.tasks.image_segmenter import ImageSegmenter, ImageSegmenterPreprocessor
from kcookbook.tasks.masked_lm import MaskedLM, MaskedLMPreprocessor
from kcookbook.tasks.object_detector import ObjectDetector
from kcookbook.tasks.preprocessor import Preprocessor, TextClassifierPreprocessor
from kcookbook.tasks.task import Task
from kcookbook.tasks.text_classifier import TextClassifier
from kcookbook.tasks.text_embedder import TextEmbedder
from kcookbook.tasks.seq2seq_lm import Seq2SeqLM, Seq2SeqLMPreprocessor

__all__ = [
    "ImageClassifier", "ImageClassifierPreprocessor",
    "CausalLM", "CausalLMPreprocessor",
    "MaskedLM", "MaskedLMPreprocessor", "Preprocessor", "Task", "TextClassifier",
    "TextClassifierPreprocessor", "TextEmbedder",
    "Seq2SeqLM", "Seq2SeqLMPreprocessor",
]
from kcookbook.tasks.image_text import ImageTextEmbedder, ZeroShotImageClassifier, contrastive_loss  # noqa: E402

__all__ += ["ImageTextEmbedder", "ZeroShotImageClassifier", "contrastive_loss"]
__all__ += ["ObjectDetector"]
__all__ += ["ImageSegmenter", "ImageSegmenterPreprocessor"]
from kcookbook.tasks.speech_to_text import SpeechToText, SpeechToTextPreprocessor  # noqa: E402

__all__ += ["SpeechToText", "SpeechToTextPreprocessor"]
from kcookbook.tasks.text_to_image import TextToImage  # noqa: E402

__all__ += ["TextToImage"]
from kcookbook.tasks.image_segmenter import mask_box, mask_iou  # noqa: E402

__all__ += ["mask_box", "mask_iou"]
from kcookbook.tasks.image_segmenter import segmentation_loss  # noqa: E402

__all__ += ["segmentation_loss"]
from kcookbook.tasks.causal_lm_answers import answer_token_data, answer_token_model  # noqa: E402

__all__ += ["answer_token_data", "answer_token_model"]
