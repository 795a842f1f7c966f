"""YOLOv8n training step ms and inference images/s (with NMS): kcookbook's ObjectDetector vs KerasCV's
YOLOV8Detector, on each Keras backend.

    .venv/bin/python benchmarks/yolov8_detector.py                           # 320 px, batch 8, 3 backends
    .venv/bin/python benchmarks/yolov8_detector.py --image-size 64 --steps 2 --repeats 1 --backends torch
    .venv/bin/python benchmarks/yolov8_detector.py --torch-threads 1        # a shared, busy CPU machine

Both models are YOLOv8n-sized (channels 16…256, C2f depths 1/2/2/1; KerasCV: stackwise_channels
[32, 64, 128, 256], fpn_depth 1), randomly initialised (speed does not depend on the values), 3
classes, float32, each compiled with its library's defaults. The same images and padded boxes (xyxy)
for both; fit ms/step is ``StepTimer``'s (batch 0, with compilation, left out); predict is images/s
over ``--steps`` batches after one warm-up batch, NMS included (kcookbook: class-aware, 300 boxes max;
KerasCV: its default NonMaxSuppression decoder). Each backend runs in its own subprocess; reported:
the median over repeats. keras-cv is a reference installed ``--no-deps``; its NMS on torch needs
torchvision (a row says so where it is missing).

``--torch-threads`` sets ``torch.set_num_threads`` in the torch workers. On a CPU machine whose cores
other processes also use, torch's default (one thread per core) makes every small op wait for a
descheduled thread: on the shared 2-core machine (load ~3 to 12) one training step of YOLOv8n at 64 px,
batch 8, took ~18 s with 2 threads and ~1.4 s with 1 (cProfile: ``torch.conv2d`` 35 ms a call vs 2 ms,
``Tensor.contiguous`` 5 ms vs 0.3 ms; the detector's loss and assigner ~0.06 s a step either way). That
is where the 52 s/step of an earlier run came from.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", nargs="+", default=["jax", "tensorflow", "torch"])
    p.add_argument("--libraries", nargs="+", default=["kcookbook", "keras_cv"])
    p.add_argument("--image-size", type=int, default=320)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="timed batches per call")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads in torch workers (0: torch's)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def make_data(args, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    n, size, max_boxes = (args.steps + 1) * args.batch, args.image_size, 4
    images = rng.uniform(0, 255, (n, size, size, 3)).astype("float32")
    corner = rng.uniform(0, size * 0.6, (n, max_boxes, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(size * 0.05, size * 0.4, (n, max_boxes, 2))], -1)
    labels = rng.integers(0, 3, (n, max_boxes)).astype("int32")
    labels[:, 3] = -1  # one padding row per image
    boxes[labels < 0] = -1
    return images, {"boxes": boxes.astype("float32"), "labels": labels}


def build(library, args):
    if library == "kcookbook":
        from kcookbook.backbones import YOLOv8Backbone
        from kcookbook.tasks import ObjectDetector

        return ObjectDetector(YOLOv8Backbone.from_scale("n"), num_classes=3, image_size=args.image_size)
    import keras
    import keras_cv

    backbone = keras_cv.models.YOLOV8Backbone(stackwise_channels=[32, 64, 128, 256], stackwise_depth=[1, 2, 2, 1],
                                              include_rescaling=True, activation="swish")
    model = keras_cv.models.YOLOV8Detector(num_classes=3, bounding_box_format="xyxy", backbone=backbone, fpn_depth=1)
    model.compile(optimizer=keras.optimizers.Adam(1e-3, global_clipnorm=10.0), classification_loss="binary_crossentropy",
                  box_loss="ciou")
    return model


def worker(args):
    import keras

    from kcookbook.benchmarks.timing import StepTimer

    if args.torch_threads and keras.backend.backend() == "torch":
        import torch

        torch.set_num_threads(args.torch_threads)

    images, targets = make_data(args)
    y = targets if args.worker.startswith("kcookbook") else {"boxes": targets["boxes"],
                                                             "classes": targets["labels"].astype("float32")}
    model = build(args.worker.split(":")[0], args)
    timer, out = StepTimer(), {"fit_ms": [], "predict_images_per_s": []}
    for _ in range(args.repeats):
        model.fit(images, y, batch_size=args.batch, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
        out["fit_ms"].append(timer.ms_per_step)
        model.predict(images[:args.batch], batch_size=args.batch, verbose=0)  # warm-up: compile
        start = time.perf_counter()
        model.predict(images[args.batch:], batch_size=args.batch, verbose=0)
        out["predict_images_per_s"].append((len(images) - args.batch) / (time.perf_counter() - start))
    return out


def run_worker(name, backend, args):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, os.path.abspath(__file__), "--worker", name, "--image-size", str(args.image_size),
               "--batch", str(args.batch), "--steps", str(args.steps), "--repeats", str(args.repeats),
               "--torch-threads", str(args.torch_threads)]
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"worker {name} on {backend} failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        sys.path.insert(0, ROOT)
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return
    print(f"YOLOv8n at {args.image_size} px, batch {args.batch}, 3 classes, float32; {args.steps} timed steps x "
          f"{args.repeats} repeats; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch threads: {args.torch_threads or 'default'}")
    print(f"\n{'backend':<12}{'library':<12}{'fit ms/step':>13}{'predict img/s':>15}")
    for backend in args.backends:
        for library in args.libraries:
            try:
                r = {k: statistics.median(v) for k, v in run_worker(library, backend, args).items()}
            except RuntimeError as e:  # KerasCV's NMS on torch imports torchvision, absent here
                print(f"{backend:<12}{library:<12}  failed: {str(e).strip().splitlines()[-1][:90]}", flush=True)
                continue
            print(f"{backend:<12}{library:<12}{r['fit_ms']:>13.1f}{r['predict_images_per_s']:>15.1f}", flush=True)


if __name__ == "__main__":
    main()
