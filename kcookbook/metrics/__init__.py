"""Evaluation metrics computed outside the model graph (numpy): COCO box mAP and its ``fit`` callback."""

from kcookbook.metrics.coco import BoxMAPCallback, coco_box_map

__all__ = ["BoxMAPCallback", "coco_box_map"]
