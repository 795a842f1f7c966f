"""Run inside a fresh virtual environment holding the kcookbook wheel installed with [jax] only.

    KERAS_BACKEND=jax python jax_only_smoke.py SENTENCES.json OUT.npz SCRATCH_DIR

Checks that neither TensorFlow nor torch is installed, that every kcookbook module imports without
them, that a classifier trains on raw strings, that a preset needing torch says so, and writes the
MiniLM embeddings of the sentences (offline) for the caller to compare with sentence-transformers.
"""

import importlib
import importlib.util
import json
import os
import pkgutil
import sys

sentences_path, out_path, scratch = sys.argv[1:4]
assert os.environ.get("KERAS_BACKEND") == "jax", os.environ.get("KERAS_BACKEND")
for absent in ("tensorflow", "torch"):
    assert importlib.util.find_spec(absent) is None, f"{absent} is installed in the jax-only environment"

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kcookbook  # noqa: E402

assert keras.backend.backend() == "jax"
assert kcookbook.__file__.startswith(sys.prefix), f"kcookbook imported from {kcookbook.__file__}, not the venv"
modules = [m.name for m in pkgutil.walk_packages(kcookbook.__path__, "kcookbook.")]
for name in modules:
    importlib.import_module(name)
loaded = sorted(m for m in ("tensorflow", "torch") if m in sys.modules)
assert not loaded, f"importing kcookbook's {len(modules)} modules loaded {loaded}"

from kcookbook.presets.errors import PresetError  # noqa: E402
from kcookbook.tasks import ImageClassifier, TextClassifier, TextEmbedder  # noqa: E402

with open(sentences_path, encoding="utf-8") as f:
    sentences = json.load(f)
embeddings = TextEmbedder.from_preset("all_minilm_l6_v2").predict(sentences, batch_size=64, verbose=0)

# Training on raw strings goes through Keras' own data pipeline, not tf.data.
classifier = TextClassifier.from_preset("all_minilm_l6_v2", num_classes=2)
history = classifier.fit(["what a lovely day", "worst service ever"] * 2, [1, 0, 1, 0], batch_size=2, epochs=1,
                         verbose=0)
assert np.isfinite(history.history["loss"][0]), history.history

# The EfficientNet-Lite0 weights ship as a PyTorch .pth: reading them needs torch on every backend.
# (A new head, num_classes=10: the ImageNet head's class names would need tensorflow-datasets first.)
checkpoint = os.path.join(scratch, "efficientnet-lite0.pth")
open(checkpoint, "wb").close()
try:
    ImageClassifier.from_preset(scratch, num_classes=10)
except PresetError as e:
    assert checkpoint in str(e) and "kcookbook[torch]" in str(e), str(e)
else:
    raise AssertionError("a .pth preset loaded without torch")

# The int8 kernel's C++ source ships in the wheel and compiles from it (into a fresh cache).
os.environ["KCOOKBOOK_CACHE"] = scratch
from kcookbook.kernels import int8_products  # noqa: E402

assert int8_products.SOURCE.is_file() and int8_products.SOURCE.is_relative_to(sys.prefix), int8_products.SOURCE
sums = int8_products.int8_product(np.ones((1, 3), "float32"), np.arange(6, dtype="int8").reshape(3, 2), "columns")
assert sums is not None and np.asarray(sums).tolist() == [[6.0, 9.0]], sums

np.savez(out_path, embeddings=embeddings, modules=np.array(modules))
print(f"jax-only smoke check passed: {len(modules)} modules imported, {len(sentences)} sentences embedded")
