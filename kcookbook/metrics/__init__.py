"""Evaluation metrics computed outside the model graph (numpy): COCO box mAP and its ``fit`` callback, and
how close a changed (bfloat16, int8) model's outputs stay to its float32 ones, and retrieval recall@k."""

from kcookbook.metrics.closeness import embedding_closeness, logits_closeness, next_token_nll
from kcookbook.metrics.coco import BoxMAPCallback, coco_box_map
from kcookbook.metrics.retrieval import recall_at_k

__all__ = ["BoxMAPCallback", "coco_box_map", "embedding_closeness", "logits_closeness", "next_token_nll", "recall_at_k"]
