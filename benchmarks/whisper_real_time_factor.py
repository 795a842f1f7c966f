"""Whisper real-time factor (seconds of compute per second of audio, lower is faster) on CPU:
kcookbook's SpeechToText on each backend vs transformers eager, the same clips, in one run.

    .venv/bin/python benchmarks/whisper_real_time_factor.py                     # real Whisper base
    .venv/bin/python benchmarks/whisper_real_time_factor.py --size tiny --new-tokens 4 --repeats 1

``--size base``: the real ``whisper_base`` weights (CTranslate2 float16, computed in float32) in both
libraries (transformers loads the same tensors through ``kcookbook.formats.ctranslate2``'s
conversion). ``--size tiny``: a random 2-layer, d_model-64 Whisper (the per-token overhead). The
clips are ``--clips`` seconds-long noise bursts (the speed does not depend on the words); each is
one 30 s window. Timed per clip batch: log-mel features (kcookbook's ``LogMelSpectrogram`` /
transformers' ``WhisperFeatureExtractor``) + encoder + greedy decoding of ``--new-tokens`` tokens
after the 4-token prompt with no stop token (both libraries produce the same number of tokens).

* kcookbook: ``SpeechToText.generate({"encoder_features", "decoder_token_ids"}, max_length=4 + N,
  stop_token_ids=None)``, compiled (jax, TensorFlow) or eager (torch).
* transformers (torch worker only): ``WhisperForConditionalGeneration`` in eval mode, generic
  ``GenerationMixin.generate`` with the same prompt, ``min_new_tokens=max_new_tokens=N``, under
  ``torch.no_grad``.

Each backend runs in its own subprocess; ``--torch-threads`` sets ``torch.set_num_threads``.
"""

import argparse
import sys
import time

from kcookbook.benchmarks.timing import BackendWorkerError, emit_result, run_backend_worker, time_calls

TINY = dict(vocab_size=51865, num_mel_bins=80, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, d_model=64,
            decoder_start_token_id=50258)
PROMPT = [50258, 50259, 50359, 50363]  # <|startoftranscript|><|en|><|transcribe|><|notimestamps|>


def timed(function, repeats):
    """(first call s, s per later call: ``time_calls``' warm-up, then ``repeats`` timed calls)."""
    start = time.perf_counter()
    function()
    first = time.perf_counter() - start
    ms, _ = time_calls(function, num_calls=repeats)
    return first, ms / 1000.0


def models(size, with_reference):
    """(kcookbook SpeechToText, transformers model or None) with the same weights."""
    import numpy as np

    from kcookbook.tasks import SpeechToText

    if size == "tiny":
        import tempfile

        import transformers

        reference = transformers.WhisperForConditionalGeneration(transformers.WhisperConfig(**TINY)).eval()
        folder = tempfile.mkdtemp()
        reference.save_pretrained(folder)
        return SpeechToText.from_preset(folder), (reference if with_reference else None)
    ours = SpeechToText.from_preset("whisper_base", preprocessor=None)
    if not with_reference:
        return ours, None
    import torch
    import transformers

    from kcookbook.formats.loaders import load

    loader = load("whisper_base")
    reference = transformers.WhisperForConditionalGeneration(transformers.WhisperConfig(**loader.config))
    reference.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in loader.read_tensors().items()},
                              strict=False)
    return ours, reference.eval()


def worker(args):
    import keras
    import numpy as np

    from kcookbook.components import LogMelSpectrogram

    backend = keras.config.backend()
    if backend == "torch":
        import torch

        torch.set_num_threads(args.torch_threads)
    ours, reference = models(args.size, backend == "torch")
    rng = np.random.default_rng(0)
    clips = [(0.1 * rng.normal(size=int(16000 * args.clip_seconds))).astype("float32")
             for _ in range(args.clips)]
    audio_seconds = args.clip_seconds * args.clips
    converter = LogMelSpectrogram()
    prompt = [PROMPT] * len(clips)

    def run_ours():
        features = converter(clips)
        ours.generate({"encoder_features": features, "decoder_token_ids": prompt},
                      max_length=len(PROMPT) + args.new_tokens, stop_token_ids=None)
    first, seconds = timed(run_ours, args.repeats)
    emit_result({"library": "kcookbook", "backend": backend, "first_s": first, "rtf": seconds / audio_seconds})
    if reference is not None:
        import torch
        import transformers

        extractor = transformers.WhisperFeatureExtractor()

        def run_theirs():
            with torch.no_grad():
                features = extractor(clips, sampling_rate=16000, return_tensors="pt").input_features
                transformers.GenerationMixin.generate(
                    reference, input_features=features, decoder_input_ids=torch.tensor(prompt),
                    do_sample=False, min_new_tokens=args.new_tokens, max_new_tokens=args.new_tokens)
        first, seconds = timed(run_theirs, args.repeats)
        emit_result({"library": "transformers", "backend": "torch eager", "first_s": first,
                     "rtf": seconds / audio_seconds})


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=["base", "tiny"], default="base")
    parser.add_argument("--backends", nargs="+", default=["jax", "tensorflow", "torch"])
    parser.add_argument("--clips", type=int, default=2)
    parser.add_argument("--clip-seconds", type=float, default=10.0)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    rows = []
    for backend in args.backends:
        arguments = [__file__, "--worker"] + [a for a in sys.argv[1:] if a != "--worker"]
        try:
            rows += run_backend_worker(arguments, backend)
        except BackendWorkerError as error:  # a backend that fails is reported, the others still run
            print(error)
    reference = next((r["rtf"] for r in rows if r["library"] == "transformers"), None)
    print(f"Whisper {args.size}: {args.clips} clips of {args.clip_seconds:g} s, {args.new_tokens} new tokens, "
          "greedy, float32, CPU")
    print(f"{'library':<13}{'backend':<13}{'first call s':>13}{'RTF':>9}  vs transformers")
    for r in rows:
        ratio = "" if reference is None else f"{r['rtf'] / reference:.2f}x"
        print(f"{r['library']:<13}{r['backend']:<13}{r['first_s']:>13.2f}{r['rtf']:>9.3f}  {ratio}")


if __name__ == "__main__":
    main()
