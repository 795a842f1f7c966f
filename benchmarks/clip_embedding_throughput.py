"""CLIP image and text embedding throughput (images/s, texts/s): kcookbook on jax, tensorflow and torch
vs transformers' ``CLIPModel`` (torch, eager, ``no_grad``), the same config, in one run.

    .venv/bin/python benchmarks/clip_embedding_throughput.py                 # ViT-B/32 sizes; minutes
    .venv/bin/python benchmarks/clip_embedding_throughput.py --tiny --calls 2  # proves it runs (seconds)

Every contender runs a randomly initialised CLIP of the same configuration (ViT-B/32: 224×224 images,
12 + 12 layers, projection 512, 77-token texts; ``--tiny``: 32×32 images, 2 + 2 layers, width 32)
saved once by transformers and converted by kcookbook, on the same float32 pixel arrays and token
ids. kcookbook: the projected features through a Keras model's ``predict_on_batch`` (compiled on jax
and tensorflow, eager on torch); transformers: ``get_image_features`` / ``get_text_features``. Each
contender runs in its own process; ``time_calls`` leaves out a build and a warm-up call and
synchronises every result. Reported: items per second and the ratio to transformers (above 1 is
faster). Target (issue 17): at least transformers' eager speed on jax.
"""

import argparse
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", nargs="+", default=["jax", "tensorflow", "torch"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--calls", type=int, default=5, help="timed calls per contender")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every contender this many times, in rotating order, and keep each one's best "
                        "(on a shared machine the load moves between rows; the best of rounds is the "
                        "nearest to a quiet run, and every contender gets the same number of tries)")
    p.add_argument("--tiny", action="store_true", help="a tiny config, to check that the script runs")
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def save_checkpoint(folder, tiny):
    import torch
    import transformers

    if tiny:
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      image_size=32, patch_size=8)
        config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)
    else:
        config = transformers.CLIPConfig()  # ViT-B/32
    torch.manual_seed(0)
    transformers.CLIPModel(config).save_pretrained(folder)
    return config


def inputs(config, batch):
    import numpy as np

    rng = np.random.default_rng(0)
    size = config.vision_config.image_size
    pixels = rng.normal(size=(batch, 3, size, size)).astype("float32")
    length = config.text_config.max_position_embeddings
    ids = np.full((batch, length), config.text_config.vocab_size - 1, "int32")
    ids[:, 0] = config.text_config.vocab_size - 2
    ids[:, 1:length // 2] = rng.integers(0, config.text_config.vocab_size - 2, (batch, length // 2 - 1))
    return pixels, ids


def kcookbook_worker(args, config):
    import keras

    from kcookbook.backbones import Backbone
    from kcookbook.benchmarks.timing import time_calls

    backbone = Backbone.from_preset(args.folder)
    images = keras.Input(backbone.image_shape)
    token_ids = keras.Input((None,), dtype="int32")
    image_model = keras.Model(images, backbone.vision_projection(backbone.vision_encoder(images)["pooled_output"]))
    text_model = keras.Model(token_ids, backbone.text_projection(backbone.text_encoder(token_ids)["pooled_output"]))
    pixels, ids = inputs(config, args.batch)
    image_ms, _ = time_calls(image_model.predict_on_batch, pixels.transpose(0, 2, 3, 1), num_calls=args.calls)
    text_ms, _ = time_calls(text_model.predict_on_batch, ids, num_calls=args.calls)
    return image_ms, text_ms


def transformers_worker(args, config):
    import torch
    import transformers

    from kcookbook.benchmarks.timing import time_calls

    model = transformers.CLIPModel.from_pretrained(args.folder).eval()
    pixels, ids = inputs(config, args.batch)
    pixels, ids = torch.from_numpy(pixels), torch.from_numpy(ids).long()
    with torch.no_grad():
        image_ms, _ = time_calls(lambda: model.get_image_features(pixel_values=pixels), num_calls=args.calls)
        text_ms, _ = time_calls(lambda: model.get_text_features(input_ids=ids), num_calls=args.calls)
    return image_ms, text_ms


def main(argv=None):
    args = parse_args(argv)
    from kcookbook.benchmarks.timing import emit_result, run_backend_worker

    if args.worker:
        import transformers

        config = transformers.CLIPConfig.from_pretrained(args.folder)
        worker = transformers_worker if args.worker == "transformers" else kcookbook_worker
        image_ms, text_ms = worker(args, config)
        emit_result({"contender": args.worker, "images_per_s": 1000 * args.batch / image_ms,
                     "texts_per_s": 1000 * args.batch / text_ms})
        return
    with tempfile.TemporaryDirectory() as folder:
        save_checkpoint(folder, args.tiny)
        flags = ["--folder", folder, "--batch", str(args.batch), "--calls", str(args.calls)]
        contenders = ["transformers"] + args.backends
        tries = {contender: [] for contender in contenders}
        for round_index in range(args.rounds):
            shift = round_index % len(contenders)
            for contender in contenders[shift:] + contenders[:shift]:
                backend = "torch" if contender == "transformers" else contender
                tries[contender] += run_backend_worker([os.path.abspath(__file__), "--worker", contender] + flags,
                                                       backend)
    rows = [{"contender": contender, **{key: max(row[key] for row in rows_of)
                                        for key in ("images_per_s", "texts_per_s")}}
            for contender, rows_of in tries.items()]
    reference = rows[0]
    print(f"CLIP {'tiny' if args.tiny else 'ViT-B/32'}, batch {args.batch}, {args.calls} timed calls, "
          f"best of {args.rounds} round(s); load average now {os.getloadavg()[0]:.1f}")
    print(f"{'contender':<14}{'images/s':>10}{'ratio':>8}{'texts/s':>10}{'ratio':>8}   all tries (images/s)")
    for row in rows:
        spread = ", ".join(f"{r['images_per_s']:.1f}" for r in tries[row["contender"]])
        print(f"{row['contender']:<14}{row['images_per_s']:>10.1f}"
              f"{row['images_per_s'] / reference['images_per_s']:>8.2f}{row['texts_per_s']:>10.1f}"
              f"{row['texts_per_s'] / reference['texts_per_s']:>8.2f}   {spread}")


if __name__ == "__main__":
    main()
