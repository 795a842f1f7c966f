"""Segment Anything: image-encoder ms/image and prompt-decoder ms/prompt, kcookbook on jax, tensorflow
and torch vs transformers' ``SamModel`` (eager, ``torch.no_grad``) on the same config, in one run.

    .venv/bin/python benchmarks/sam_encoder_decoder.py                 # ViT-B config, 1024 px
    .venv/bin/python benchmarks/sam_encoder_decoder.py --size tiny --backends torch

The model is a random ``SamModel`` of the chosen configuration (``base``: facebook/sam-vit-base's
shape; ``tiny``: 64 px, width 16, to prove the script runs), saved with ``save_pretrained`` and
converted by kcookbook, so both sides hold the same weights. Image encoder: one image per call
(``predict_on_batch`` of the encoder: compiled on jax and tensorflow). Prompt decoder: prompt encoder
+ mask decoder on a precomputed embedding, one box prompt per call, as in interactive use. The first
call of each (compilation) is left out; reported: the median ms over ``--repeats`` calls, and each
contender's ratio to transformers (below 1 is faster). Each contender runs in its own subprocess.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", nargs="+", default=["jax", "tensorflow", "torch"])
    p.add_argument("--size", choices=["tiny", "base"], default="base")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def save_model(size, folder):
    import torch
    from transformers import (SamConfig, SamMaskDecoderConfig, SamModel, SamPromptEncoderConfig,
                              SamVisionConfig)

    torch.manual_seed(0)
    if size == "tiny":
        config = SamConfig(
            vision_config=SamVisionConfig(hidden_size=16, output_channels=16, num_hidden_layers=2,
                                          num_attention_heads=2, mlp_dim=32, image_size=64, patch_size=8,
                                          window_size=3, global_attn_indexes=[1], num_pos_feats=8).to_dict(),
            prompt_encoder_config=SamPromptEncoderConfig(hidden_size=16, image_size=64, patch_size=8,
                                                         mask_input_channels=4).to_dict(),
            mask_decoder_config=SamMaskDecoderConfig(hidden_size=16, mlp_dim=32, num_attention_heads=2,
                                                     iou_head_hidden_dim=8).to_dict())
    else:
        config = SamConfig()  # facebook/sam-vit-base: ViT-B, 1024 px, 256-d prompt encoder and decoder
    SamModel(config).eval().save_pretrained(folder)
    return config.vision_config.image_size


def timed(fn, repeats, sync=lambda out: out):
    sync(fn())  # compilation / warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sync(fn())
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def keras_worker(args):
    import numpy as np

    from kcookbook.benchmarks.timing import synchronize
    from kcookbook.presets import load

    backbone = load(args.folder).load_backbone()
    size, e = backbone.image_size, backbone.embedding_size
    images = np.random.default_rng(0).normal(size=(1, size, size, 3)).astype("float32")
    encoder = backbone.image_encoder_model
    encoder_ms = timed(lambda: encoder.predict_on_batch(images), args.repeats)

    decoder = backbone.prompt_decoder  # prompt encoder + mask decoder, compiled by predict_on_batch
    prompt = {"image_embeddings": np.asarray(encoder.predict_on_batch(images)),
              "points": np.zeros((1, 0, 2), "float32"), "labels": np.zeros((1, 0), "float32"),
              "boxes": np.array([[[size * 0.1, size * 0.2, size * 0.6, size * 0.7]]], "float32"),
              "masks": np.zeros((1, 4 * e, 4 * e, 1), "float32"), "has_mask": np.zeros((1,), "float32")}
    decoder_ms = timed(lambda: decoder.predict_on_batch(prompt), args.repeats, synchronize)
    return {"encoder_ms": encoder_ms, "decoder_ms": decoder_ms}


def transformers_worker(args):
    import torch
    from transformers import SamModel

    model = SamModel.from_pretrained(args.folder).eval()
    size = model.config.vision_config.image_size
    pixels = torch.randn(1, 3, size, size)
    with torch.no_grad():
        encoder_ms = timed(lambda: model.get_image_embeddings(pixels), args.repeats)
        embedding = model.get_image_embeddings(pixels)
        box = torch.tensor([[[size * 0.1, size * 0.2, size * 0.6, size * 0.7]]])
        decoder_ms = timed(lambda: model(image_embeddings=embedding, input_boxes=box, multimask_output=True),
                           args.repeats)
    return {"encoder_ms": encoder_ms, "decoder_ms": decoder_ms}


def run_worker(name, args, folder):
    env = dict(os.environ, PYTHONPATH=ROOT)
    if name != "transformers":
        env["KERAS_BACKEND"] = name
    command = [sys.executable, os.path.abspath(__file__), "--worker", name, "--folder", folder,
               "--repeats", str(args.repeats)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode:
        return {"error": result.stderr.strip().splitlines()[-1:]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        out = transformers_worker(args) if args.worker == "transformers" else keras_worker(args)
        print(json.dumps(out))
        return
    with tempfile.TemporaryDirectory() as folder:
        image_size = save_model(args.size, folder)
        results = {name: run_worker(name, args, folder) for name in ["transformers"] + args.backends}
    reference = results["transformers"]
    print(f"SAM {args.size} ({image_size} px), median of {args.repeats} calls, ms (ratio to transformers eager)")
    print(f"{'contender':<14}{'encoder ms/image':>24}{'decoder ms/prompt':>24}")
    for name, row in results.items():
        if "error" in row:
            print(f"{name:<14}failed: {row['error']}")
            continue
        cells = [f"{row[k]:.1f} ({row[k] / reference[k]:.2f})" if "error" not in reference else f"{row[k]:.1f}"
                 for k in ("encoder_ms", "decoder_ms")]
        print(f"{name:<14}{cells[0]:>24}{cells[1]:>24}")


if __name__ == "__main__":
    main()
