"""Run under one KERAS_BACKEND: compute outputs of the same presets and save them to an .npz file.

    KERAS_BACKEND=torch python compute_outputs.py OUT.npz TINY_PRESET_DIR
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kcookbook  # noqa: E402
from helpers import TRICKY_SENTENCES, real_tweets  # noqa: E402


def main(out_path, tiny_preset):
    sentences = real_tweets(24, start=300) + TRICKY_SENTENCES
    minilm = kcookbook.tasks.TextEmbedder.from_preset("all_minilm_l6_v2")
    tiny_embedder = kcookbook.tasks.TextEmbedder.from_preset(tiny_preset)
    tiny_backbone = kcookbook.backbones.Backbone.from_preset(tiny_preset)
    inputs = dict(np.load(os.path.join(tiny_preset, "inputs.npz")))
    tiny = tiny_backbone(inputs)
    np.savez(
        out_path,
        backend=keras.backend.backend(),
        minilm=minilm.predict(sentences, batch_size=64, verbose=0),
        tiny_embeddings=tiny_embedder.predict(sentences, batch_size=64, verbose=0),
        tiny_sequence_output=keras.ops.convert_to_numpy(tiny["sequence_output"]),
        tiny_pooled_output=keras.ops.convert_to_numpy(tiny["pooled_output"]),
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
