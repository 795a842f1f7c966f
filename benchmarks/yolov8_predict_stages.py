"""Where YOLOv8n's predict time goes, kcookbook's ObjectDetector vs KerasCV's YOLOV8Detector, on the
backend in ``KERAS_BACKEND`` (exploratory: the stages in alternating rounds, one process).

    KERAS_BACKEND=jax .venv/bin/python benchmarks/yolov8_predict_stages.py --fit-epochs 2 --rounds 3

The models, images and boxes are ``yolov8_detector.py``'s (320 px, batch 8, 3 classes). With
``--fit-epochs`` both models first train that many epochs on its random boxes (the state its predict
numbers are measured in); 0 leaves them untrained. ``--confidence-threshold`` sets both NMS
thresholds (0.99 leaves no box above it: the cost of NMS on a scene with few objects). Each round
times every stage once on the same ``--steps`` batches, in this order:

* ``kcookbook letterbox``: ``ObjectDetector.letterbox`` (numpy: the images into the model's square);
* ``kcookbook network``: the raw head outputs (a ``keras.Model`` on the detector's layers);
* ``kcookbook folded network``: the same with conv → batch norm folded (``fold_batch_norms``; not jax,
  where ``predict`` does not fold);
* ``kcookbook network+NMS``: ``detection_model()`` (network, decode and NMS in one compiled call);
* ``kcookbook predict``: the whole ``predict`` (letterbox, that call, boxes back to the images);
* ``keras_cv network``: KerasCV's raw head outputs (a ``keras.Model`` on its layers);
* ``keras_cv predict``: KerasCV's ``predict`` (network, decode and its NMS in one compiled call).

Printed: the median ms per batch of each stage over rounds, and the median per-round ratio of its time
to KerasCV's ``predict``; the detections per image and the share of boxes above each model's
confidence threshold.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from yolov8_detector import build, make_data  # noqa: E402

from kcookbook.components.convolution import fold_batch_norms  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image-size", type=int, default=320)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3, help="timed batches per stage and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--fit-epochs", type=int, default=0)
    p.add_argument("--confidence-threshold", type=float, help="both models' NMS threshold (default: each "
                   "library's, 0.25 and 0.2); a high one leaves no box above it, as in a scene with few objects")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    images, targets = make_data(args)
    batch, timed = args.batch, images[args.batch:]
    ours, theirs = build("kcookbook", args), build("keras_cv", args)
    labels = {"boxes": targets["boxes"], "classes": targets["labels"].astype("float32")}
    if args.confidence_threshold is not None:  # before the first predict traces either NMS
        import keras_cv

        ours.confidence_threshold = ours.nms.confidence_threshold = args.confidence_threshold
        theirs.prediction_decoder = keras_cv.layers.NonMaxSuppression(
            bounding_box_format="xyxy", from_logits=False, iou_threshold=0.7,
            confidence_threshold=args.confidence_threshold)  # KerasCV's default decoder but this threshold
    for _ in range(args.fit_epochs):
        ours.fit(images, targets, batch_size=batch, epochs=1, shuffle=False, verbose=0)
        theirs.fit(images, labels, batch_size=batch, epochs=1, shuffle=False, verbose=0)
    our_network, their_network = keras.Model(ours.input, ours.output), keras.Model(theirs.input, theirs.output)
    stages = {"kcookbook letterbox": ours.letterbox,
              "kcookbook network": lambda x: our_network.predict(x, batch_size=batch, verbose=0)}
    if keras.backend.backend() != "jax":
        folded = fold_batch_norms(ours)
        stages["kcookbook folded network"] = lambda x: folded.predict(x, batch_size=batch, verbose=0)
    stages.update({
        "kcookbook network+NMS": lambda x: ours.detection_model().predict(x, batch_size=batch, verbose=0),
        "kcookbook predict": lambda x: ours.predict(x, batch_size=batch, verbose=0),
        "keras_cv network": lambda x: their_network.predict(x, batch_size=batch, verbose=0),
        "keras_cv predict": lambda x: theirs.predict(x, batch_size=batch, verbose=0),
    })
    for stage in stages.values():  # compile
        stage(images[:batch])
    seconds = {name: [] for name in stages}
    for _ in range(args.rounds):
        for name, stage in stages.items():
            start = time.perf_counter()
            stage(timed)
            seconds[name].append(time.perf_counter() - start)

    our_scores = keras.ops.convert_to_numpy(keras.ops.sigmoid(our_network.predict(timed, verbose=0)["classes"]))
    their_scores = keras.ops.convert_to_numpy(their_network.predict(timed, verbose=0)["classes"])  # sigmoid'ed
    print(f"{keras.backend.backend()}, {args.image_size} px, batch {batch}, {args.steps} batches x {args.rounds} "
          f"rounds, after {args.fit_epochs} fit epochs; load average {os.getloadavg()[0]:.1f}")
    print(f"detections per image: kcookbook {np.mean(ours.predict(timed, verbose=0)['num_detections']):.1f}, "
          f"keras_cv {np.mean(theirs.predict(timed, verbose=0)['num_detections']):.1f}; share of boxes above "
          f"the confidence threshold: kcookbook {np.mean(our_scores.max(-1) > ours.confidence_threshold):.0%}, "
          f"keras_cv {np.mean(their_scores.max(-1) > theirs.prediction_decoder.confidence_threshold):.0%}")
    reference = seconds["keras_cv predict"]
    for name, times in seconds.items():
        ratio = statistics.median(t / r for t, r in zip(times, reference))
        print(f"{name:<26}{statistics.median(times) * 1000 / args.steps:9.1f} ms/batch   "
              f"time / keras_cv predict {ratio:.2f}   rounds {' '.join(f'{t / r:.2f}' for t, r in zip(times, reference))}")


if __name__ == "__main__":
    main()
