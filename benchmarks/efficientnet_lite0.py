"""EfficientNet-Lite0 ImageClassifier predict and fit ms/step at 224×224: kcookbook on jax, tensorflow
and torch vs the PyTorch reference implementation (``efficientnet_lite_pytorch``, eager), in one run.

    .venv/bin/python benchmarks/efficientnet_lite0.py
    .venv/bin/python benchmarks/efficientnet_lite0.py --backends jax --repeats 3 --steps 10

Every contender runs the same real ImageNet weights (``efficientnet_lite0_imagenet``) on the same
random 224×224 uint8 images, float32. kcookbook: ``ImageClassifier.predict`` / ``fit`` (Adam, sparse
cross-entropy; its preprocessing runs before the timed steps). ms/step is ``StepTimer``'s: start of
batch 1 to end of the last batch, divided by the batches in between (batch 0, with compilation, left
out). The reference: ``model(x)`` under ``torch.no_grad`` for predict, and an eager loop (forward,
cross-entropy, backward, Adam step) for fit, timed the same way (first batch left out). Each Keras
backend runs in its own subprocess; the reference runs in its own too. Reported: the median over
repeats and each contender's ratio to the reference (below 1 is faster).
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
    p.add_argument("--repeats", type=int, default=2, help="timed calls per contender")
    p.add_argument("--steps", type=int, default=5, help="timed steps per call (plus batch 0)")
    p.add_argument("--fit-batch", type=int, default=16)
    p.add_argument("--predict-batch", type=int, default=32)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def make_data(batch_size, steps, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    n = (steps + 1) * batch_size
    return (rng.integers(0, 256, (n, 224, 224, 3)).astype("uint8"),
            rng.integers(0, 1000, n).astype("int32"))


def keras_worker(args):
    import keras

    from kcookbook.benchmarks.timing import StepTimer
    from kcookbook.tasks import ImageClassifier

    classifier = ImageClassifier.from_preset("efficientnet_lite0_imagenet")
    classifier.compile(optimizer=keras.optimizers.Adam(1e-4))
    timer = StepTimer()
    out = {"predict": [], "fit": []}
    images, _ = make_data(args.predict_batch, args.steps)
    for _ in range(args.repeats):
        classifier.predict(images, batch_size=args.predict_batch, verbose=0, callbacks=[timer])
        out["predict"].append(timer.ms_per_step)
    images, labels = make_data(args.fit_batch, args.steps)
    for _ in range(args.repeats):
        classifier.fit(images, labels, batch_size=args.fit_batch, epochs=1, shuffle=False, verbose=0,
                       callbacks=[timer])
        out["fit"].append(timer.ms_per_step)
    return out


def torch_worker(args):
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    from kcookbook.presets import get_preset

    checkpoint = os.path.join(get_preset("efficientnet_lite0_imagenet").offline_path(),
                              "efficientnet-lite0-57934424.pth")
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=checkpoint)

    def pixels(images):  # the same normalisation as the preset: (x / 255 - 0.5) / 0.5
        return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0

    def timed(step, batches):
        times = []
        for batch in batches:
            start = time.perf_counter()
            step(batch)
            times.append(time.perf_counter() - start)
        return 1000.0 * sum(times[1:]) / len(times[1:])  # batch 0 left out, as StepTimer does

    out = {"predict": [], "fit": []}
    images, _ = make_data(args.predict_batch, args.steps)
    batches = [pixels(images[i:i + args.predict_batch]) for i in range(0, len(images), args.predict_batch)]
    model.eval()
    for _ in range(args.repeats):
        with torch.no_grad():
            out["predict"].append(timed(model, batches))
    images, labels = make_data(args.fit_batch, args.steps)
    batches = [(pixels(images[i:i + args.fit_batch]), torch.from_numpy(labels[i:i + args.fit_batch]).long())
               for i in range(0, len(images), args.fit_batch)]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()

    def train_step(batch):
        x, y = batch
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    for _ in range(args.repeats):
        out["fit"].append(timed(train_step, batches))
    return out


def run_worker(name, args):
    env = dict(os.environ, KERAS_BACKEND=name if name != "reference" else "torch",
               TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, os.path.abspath(__file__), "--worker", name, "--repeats", str(args.repeats),
               "--steps", str(args.steps), "--fit-batch", str(args.fit_batch),
               "--predict-batch", str(args.predict_batch)]
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"worker {name} failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        sys.path.insert(0, ROOT)
        out = torch_worker(args) if args.worker == "reference" else keras_worker(args)
        print("RESULT " + json.dumps(out), flush=True)
        return
    print(f"EfficientNet-Lite0 at 224x224, float32; predict batch {args.predict_batch}, fit batch "
          f"{args.fit_batch}; {args.steps} timed steps x {args.repeats} repeats; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    results = {}
    for name in ["reference"] + list(args.backends):
        results[name] = {k: statistics.median(v) for k, v in run_worker(name, args).items()}
        print(f"  done: {name}", flush=True)
    reference = results["reference"]
    print(f"\n{'contender':<34}{'predict ms/step':>17}{'ratio':>8}{'fit ms/step':>14}{'ratio':>8}")
    for name, r in results.items():
        label = "PyTorch reference (eager)" if name == "reference" else f"kcookbook ImageClassifier, {name}"
        print(f"{label:<34}{r['predict']:>17.1f}{r['predict'] / reference['predict']:>8.2f}"
              f"{r['fit']:>14.1f}{r['fit'] / reference['fit']:>8.2f}")


if __name__ == "__main__":
    main()
