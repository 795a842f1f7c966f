"""Stable Diffusion speed: one UNet step (ms) and a whole pipeline (s per image) for kcookbook on jax,
tensorflow and torch vs diffusers' ``StableDiffusionPipeline`` (torch, eager, ``no_grad``), in one run.

    .venv/bin/python benchmarks/stable_diffusion_speed.py            # the mid config; minutes on a CPU
    .venv/bin/python benchmarks/stable_diffusion_speed.py --tiny     # proves it runs
    .venv/bin/python benchmarks/stable_diffusion_speed.py --decoders # SD's VAE decoder vs TAESD's

Every contender runs the same randomly initialised pipeline, built by diffusers from a config and
saved once with ``save_pretrained`` (kcookbook converts it): ``--tiny`` is the test suite's (UNet
widths 16/32, 16 px images); the mid config has UNet widths 64/128/256 with two residual blocks per
level, a 4-layer width-256 CLIP text encoder and 128 px images (not SD's 860M parameters: a CPU
must finish it). The CLIP tokenizer is OpenAI's BPE (open-clip-torch's file). UNet step: the
classifier-free-guidance batch of 2 at the pipeline's latent size (``predict_on_batch`` on the UNet:
compiled on jax and tensorflow, eager on torch; diffusers' ``unet(...)``). Pipeline: ``--steps`` DDIM
steps with guidance 7.5 from the same latents (kcookbook's ``TextToImage.generate``: its compiled
loop; diffusers' pipeline call). ``time_calls`` leaves out a build and a warm-up call. Target
(issue 18): at least diffusers' eager speed on jax.

``--decoders`` times the two decoders a preview can choose from instead, at their real sizes with
random weights: Stable Diffusion 1.x's VAE decoder (``AutoencoderKL`` widths 128/256/512/512, two
residual blocks per level; kcookbook's ``VAEDecoder``) and TAESD's (diffusers' ``AutoencoderTiny``
defaults, as in ``madebyollin/taesd``; kcookbook's ``TinyVAEDecoder``), on the same latents of one
image (``--latent-size`` 16: a 128 × 128 image); ms per decode (``predict_on_batch``: compiled on jax
and tensorflow, eager on torch; diffusers' ``decode`` under ``no_grad``).
"""

import argparse
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PROMPT = "a photograph of an astronaut riding a horse"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", nargs="+", default=["jax", "tensorflow", "torch"])
    p.add_argument("--steps", type=int, default=10, help="denoising steps of the pipeline")
    p.add_argument("--calls", type=int, default=3, help="timed calls per measurement")
    p.add_argument("--tiny", action="store_true", help="the test suite's tiny config, to check that the script runs")
    p.add_argument("--decoders", action="store_true", help="time SD 1.x's VAE decoder against TAESD's instead")
    p.add_argument("--latent-size", type=int, default=16, help="with --decoders: the latents' side (16: 128 px)")
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def sizes(tiny):
    if tiny:
        return {"unet": (16, 32), "layers": 1, "heads": 2, "vae": (16, 32), "groups": 8, "text": 32,
                "text_layers": 2, "image": 16}
    return {"unet": (64, 128, 256), "layers": 2, "heads": 4, "vae": (32, 64, 64), "groups": 16, "text": 256,
            "text_layers": 4, "image": 128}


def write_tokenizer(folder):
    """vocab.json and merges.txt of OpenAI's CLIP BPE (the 49,408-token vocabulary)."""
    from kcookbook.components.byte_pair import end_of_word_vocabulary
    from kcookbook.formats.converters.clip import END_TOKEN, OPENAI_MERGES, START_TOKEN
    import gzip
    import importlib.util

    bpe = os.path.join(os.path.dirname(importlib.util.find_spec("open_clip").origin), "bpe_simple_vocab_16e6.txt.gz")
    with gzip.open(bpe, "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1:OPENAI_MERGES + 1]
    vocabulary = end_of_word_vocabulary(merges, [START_TOKEN, END_TOKEN])
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocabulary, f)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return len(vocabulary)


def save_pipeline(folder, tiny):
    import diffusers
    import torch
    import transformers

    s = sizes(tiny)
    torch.manual_seed(0)
    vocabulary_size = write_tokenizer(folder)
    tokenizer = transformers.CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"),
                                           model_max_length=77)
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=vocabulary_size, hidden_size=s["text"], intermediate_size=4 * s["text"],
        num_hidden_layers=s["text_layers"], num_attention_heads=4, max_position_embeddings=77,
        eos_token_id=vocabulary_size - 1))
    levels = len(s["unet"])
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=s["unet"], layers_per_block=s["layers"], sample_size=s["image"] // 2 ** (len(s["vae"]) - 1),
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        cross_attention_dim=s["text"], attention_head_dim=s["heads"], norm_num_groups=s["groups"])
    vae = diffusers.AutoencoderKL(
        block_out_channels=s["vae"], down_block_types=["DownEncoderBlock2D"] * len(s["vae"]),
        up_block_types=["UpDecoderBlock2D"] * len(s["vae"]), latent_channels=4, norm_num_groups=s["groups"],
        layers_per_block=1)
    scheduler = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                        timestep_spacing="leading")
    diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                      scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                      requires_safety_checker=False).save_pretrained(folder, safe_serialization=True)


def latents(tiny, batch):
    import numpy as np

    s = sizes(tiny)
    side = s["image"] // 2 ** (len(s["vae"]) - 1)
    return np.random.default_rng(0).standard_normal((batch, side, side, 4)).astype("float32"), s["text"]


def kcookbook_worker(args):
    import numpy as np

    from kcookbook.benchmarks.timing import time_calls
    from kcookbook.tasks import TextToImage

    model = TextToImage.from_preset(args.folder)
    noise, width = latents(args.tiny, 2)
    inputs = {"latents": noise, "timesteps": np.array([500.0, 500.0], "float32"),
              "context": np.random.default_rng(1).standard_normal((2, 77, width)).astype("float32")}
    step_ms, _ = time_calls(model.backbone.unet.predict_on_batch, inputs, num_calls=args.calls)
    pipeline_ms, _ = time_calls(lambda: model.generate(PROMPT, num_steps=args.steps, guidance_scale=7.5,
                                                        latents=noise[:1]), num_calls=args.calls)
    return step_ms, pipeline_ms


def diffusers_worker(args):
    import diffusers
    import numpy as np
    import torch

    from kcookbook.benchmarks.timing import time_calls

    pipeline = diffusers.StableDiffusionPipeline.from_pretrained(args.folder, safety_checker=None)
    pipeline.set_progress_bar_config(disable=True)
    noise, width = latents(args.tiny, 2)
    first = torch.from_numpy(np.ascontiguousarray(noise.transpose(0, 3, 1, 2)))
    context = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 77, width)).astype("float32"))
    with torch.no_grad():
        step_ms, _ = time_calls(lambda: pipeline.unet(first, torch.tensor([500.0, 500.0]), context).sample,
                                num_calls=args.calls)
        pipeline_ms, _ = time_calls(lambda: pipeline(PROMPT, num_inference_steps=args.steps, guidance_scale=7.5,
                                                     latents=first[:1], output_type="np").images,
                                    num_calls=args.calls)
    return step_ms, pipeline_ms


SD_VAE = {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "norm_num_groups": 32}


def decoder_latents(side):
    import numpy as np

    return np.random.default_rng(2).standard_normal((1, side, side, 4)).astype("float32")


def kcookbook_decoders(args):
    from kcookbook.backbones import TinyVAEDecoder, VAEDecoder
    from kcookbook.benchmarks.timing import time_calls

    vae = VAEDecoder(block_channels=list(SD_VAE["block_out_channels"]), layers_per_block=SD_VAE["layers_per_block"],
                     groups=SD_VAE["norm_num_groups"])
    tiny = TinyVAEDecoder()  # TAESD's config
    latents = decoder_latents(args.latent_size)
    return (time_calls(vae.predict_on_batch, latents, num_calls=args.calls)[0],
            time_calls(tiny.predict_on_batch, latents, num_calls=args.calls)[0])


def diffusers_decoders(args):
    import diffusers
    import numpy as np
    import torch

    from kcookbook.benchmarks.timing import time_calls

    levels = len(SD_VAE["block_out_channels"])
    vae = diffusers.AutoencoderKL(**SD_VAE, down_block_types=["DownEncoderBlock2D"] * levels,
                                  up_block_types=["UpDecoderBlock2D"] * levels, latent_channels=4).eval()
    tiny = diffusers.AutoencoderTiny().eval()
    latents = torch.from_numpy(np.ascontiguousarray(decoder_latents(args.latent_size).transpose(0, 3, 1, 2)))
    with torch.no_grad():
        return (time_calls(lambda: vae.decode(latents).sample, num_calls=args.calls)[0],
                time_calls(lambda: tiny.decode(latents).sample, num_calls=args.calls)[0])


def print_decoders(args, rows):
    side = args.latent_size * 8
    print(f"Stable Diffusion 1.x VAE decoder vs TAESD decoder (random weights), one {side}×{side} image, "
          f"{args.calls} timed calls")
    print(f"{'contender':<12}{'VAE ms':>10}{'TAESD ms':>10}{'VAE/TAESD':>11}")
    for row in rows:
        print(f"{row['contender']:<12}{row['vae_decode_ms']:>10.1f}{row['tiny_decode_ms']:>10.1f}"
              f"{row['vae_decode_ms'] / row['tiny_decode_ms']:>11.1f}")


def main(argv=None):
    args = parse_args(argv)
    from kcookbook.benchmarks.timing import emit_result, run_backend_worker

    if args.worker and args.decoders:
        vae_ms, tiny_ms = (diffusers_decoders if args.worker == "diffusers" else kcookbook_decoders)(args)
        emit_result({"contender": args.worker, "vae_decode_ms": vae_ms, "tiny_decode_ms": tiny_ms})
        return
    if args.decoders:
        flags = ["--decoders", "--calls", str(args.calls), "--latent-size", str(args.latent_size)]
        rows = []
        for contender in ["diffusers"] + args.backends:
            backend = "torch" if contender == "diffusers" else contender
            rows += run_backend_worker([os.path.abspath(__file__), "--worker", contender] + flags, backend)
        print_decoders(args, rows)
        return
    if args.worker:
        worker = diffusers_worker if args.worker == "diffusers" else kcookbook_worker
        step_ms, pipeline_ms = worker(args)
        emit_result({"contender": args.worker, "unet_step_ms": step_ms, "seconds_per_image": pipeline_ms / 1000})
        return
    with tempfile.TemporaryDirectory() as folder:
        save_pipeline(folder, args.tiny)
        flags = ["--folder", folder, "--steps", str(args.steps), "--calls", str(args.calls)] + \
            (["--tiny"] if args.tiny else [])
        rows = []
        for contender in ["diffusers"] + args.backends:
            backend = "torch" if contender == "diffusers" else contender
            rows += run_backend_worker([os.path.abspath(__file__), "--worker", contender] + flags, backend)
    reference = rows[0]
    print(f"Stable Diffusion {'tiny' if args.tiny else 'mid'} config, {args.steps} DDIM steps with guidance, "
          f"{args.calls} timed calls")
    print(f"{'contender':<12}{'UNet step ms':>14}{'speed-up':>10}{'s/image':>10}{'speed-up':>10}")
    for row in rows:
        print(f"{row['contender']:<12}{row['unet_step_ms']:>14.1f}"
              f"{reference['unet_step_ms'] / row['unet_step_ms']:>10.2f}{row['seconds_per_image']:>10.2f}"
              f"{reference['seconds_per_image'] / row['seconds_per_image']:>10.2f}")


if __name__ == "__main__":
    main()
