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
KerasCV: its default NonMaxSuppression decoder). Each backend runs in its own subprocess, holding both
models; each round (``--repeats``) runs kcookbook's fit and predict, then KerasCV's, so that both see the
same load. Reported: the median over rounds of each number, and the median over rounds of the per-round
ratio kcookbook / KerasCV (fit: ≤ 1 is faster; predict: ≥ 1 is faster).

Predict is timed twice per round, because KerasCV's NMS costs what the boxes make it cost: on jax its
loop (``keras_cv.layers.NonMaxSuppression``) takes the boxes in 512-box tiles (2,100 boxes at 320 px:
five tiles) and stops only once every image of the batch has its 100 detections. ``predict`` is the
model being trained (after this round's fit); ``predict untrained`` is a second, never-trained copy
of each model. Both KerasCV models put every anchor above its 0.2 threshold (100 detections an image),
yet on jax its NMS took ~20 ms a batch after fit and ~380 ms untrained (``yolov8_predict_stages.py``):
its loops (over tiles, and within a tile until the suppression settles) run longer on the untrained
boxes. A trained detector on a real scene has far fewer than 100 boxes above the threshold, so
KerasCV's loop then runs all five tiles. The detections per image of both cases are printed beside
them.

keras-cv is a reference installed ``--no-deps``; its NMS on torch needs torchvision (a row says so
where it is missing).

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
    """Both libraries in this process, taking turns each round: ``{library: {"fit_ms": [...],
    "predict_images_per_s": [...]}}``, one entry per round."""
    import keras

    from kcookbook.benchmarks.timing import StepTimer

    if args.torch_threads and keras.backend.backend() == "torch":
        import torch

        torch.set_num_threads(args.torch_threads)

    images, targets = make_data(args)
    models, untrained, out = {}, {}, {}
    for library in args.libraries:
        try:
            models[library], untrained[library] = build(library, args), build(library, args)
        except Exception as e:  # KerasCV's NMS on torch imports torchvision, absent here
            out[library] = {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:90]}"}
    labels = {"kcookbook": targets, "keras_cv": {"boxes": targets["boxes"],
                                                 "classes": targets["labels"].astype("float32")}}
    for _ in range(args.repeats):
        for library, model in list(models.items()):
            try:
                timer = StepTimer()
                model.fit(images, labels[library], batch_size=args.batch, epochs=1, shuffle=False, verbose=0,
                          callbacks=[timer])
                rate, detections = predict_rate(model, images, args.batch)
                untrained_rate, untrained_detections = predict_rate(untrained[library], images, args.batch)
            except Exception as e:
                out[library] = {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:90]}"}
                del models[library]
                continue
            result = out.setdefault(library, {key: [] for key in RESULT_KEYS})
            for key, value in zip(RESULT_KEYS, (timer.ms_per_step, rate, detections, untrained_rate,
                                                untrained_detections)):
                result[key].append(value)
    return out


RESULT_KEYS = ("fit_ms", "predict_images_per_s", "detections", "untrained_images_per_s", "untrained_detections")


def predict_rate(model, images, batch):
    """``(images/s, mean detections per image)`` of ``model.predict`` over all but the first batch,
    after a warm-up call on the first (compilation)."""
    import numpy as np

    model.predict(images[:batch], batch_size=batch, verbose=0)
    start = time.perf_counter()
    found = model.predict(images[batch:], batch_size=batch, verbose=0)
    rate = (len(images) - batch) / (time.perf_counter() - start)
    return rate, float(np.mean(found["num_detections"]))


def run_worker(backend, args):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, os.path.abspath(__file__), "--worker", backend, "--image-size", str(args.image_size),
               "--batch", str(args.batch), "--steps", str(args.steps), "--repeats", str(args.repeats),
               "--torch-threads", str(args.torch_threads), "--libraries", *args.libraries]
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"worker on {backend} failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def paired_ratios(results, key):
    """Median over rounds of kcookbook's value / KerasCV's in the same round (None without both)."""
    a, b = results.get("kcookbook", {}).get(key), results.get("keras_cv", {}).get(key)
    if not a or not b:
        return None
    return statistics.median(x / y for x, y in zip(a, b))


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        sys.path.insert(0, ROOT)
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return
    print(f"YOLOv8n at {args.image_size} px, batch {args.batch}, 3 classes, float32; {args.steps} timed steps x "
          f"{args.repeats} repeats; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch threads: {args.torch_threads or 'default'}")
    print(f"\n{'backend':<12}{'library':<12}{'fit ms/step':>13}{'predict img/s':>15}{'(dets/img)':>12}"
          f"{'untrained img/s':>17}{'(dets/img)':>12}{'fit ratio':>11}{'predict ratio':>15}{'untrained ratio':>17}")
    for backend in args.backends:
        try:
            results = run_worker(backend, args)
        except RuntimeError as e:
            print(f"{backend:<12}{'':<12}  failed: {str(e).strip().splitlines()[-1][:90]}", flush=True)
            continue
        ratios = [paired_ratios(results, key) for key in ("fit_ms", "predict_images_per_s", "untrained_images_per_s")]
        for library in args.libraries:
            r = results.get(library, {})
            if "error" in r or not r:
                print(f"{backend:<12}{library:<12}  failed: {r.get('error', 'no result')}", flush=True)
                continue
            fit, rate, dets, untrained, untrained_dets = (statistics.median(r[key]) for key in RESULT_KEYS)
            shown = ("".join(f"{x:>{w}.2f}" for x, w in zip(ratios, (11, 15, 17)))
                     if library == "kcookbook" and ratios[0] else "")
            print(f"{backend:<12}{library:<12}{fit:>13.1f}{rate:>15.1f}{dets:>12.1f}{untrained:>17.1f}"
                  f"{untrained_dets:>12.1f}{shown}", flush=True)
        print(f"{'':<24}rounds: fit ratio {_rounds(results, 'fit_ms')}; predict ratio "
              f"{_rounds(results, 'predict_images_per_s')}; untrained "
              f"{_rounds(results, 'untrained_images_per_s')}", flush=True)


def _rounds(results, key):
    a, b = results.get("kcookbook", {}).get(key), results.get("keras_cv", {}).get(key)
    return " ".join(f"{x / y:.2f}" for x, y in zip(a or [], b or [])) or "-"

if __name__ == "__main__":
    main()
