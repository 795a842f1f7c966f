"""The 1000 ImageNet-1k (ILSVRC-2012) class names, read offline from TensorFlow Datasets' files.

TensorFlow Datasets (Apache-2.0) ships them with its sources: the human-readable names in class order
(``IMAGENET_LABELS_LIST`` in ``datasets/siscore/labels.py``, which is read as text, never imported).
Nothing is downloaded and no name is typed in by hand here.

    >>> names = imagenet_class_names()  # doctest: +SKIP
    >>> names[285], names[967], names[985]  # doctest: +SKIP
    ('Egyptian cat', 'espresso', 'daisy')
"""

import ast
import functools
import importlib.util
import os

SOURCE = "TensorFlow Datasets 4.x (Apache-2.0): datasets/siscore/labels.py"


def _tfds_dir():
    spec = importlib.util.find_spec("tensorflow_datasets")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "ImageNet class names are read from the tensorflow-datasets package, which is not installed: "
            "pip install tensorflow-datasets (or pass class_names=... yourself).")
    return list(spec.submodule_search_locations)[0]


@functools.lru_cache(maxsize=None)
def imagenet_full_names():
    """All synonyms of each class, e.g. ``'tench, Tinca tinca'``, in class-index order."""
    path = os.path.join(_tfds_dir(), "datasets", "siscore", "labels.py")
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "IMAGENET_LABELS_LIST":
            names = ast.literal_eval(node.value)
            if len(names) != 1000:
                raise ValueError(f"{path} lists {len(names)} ImageNet names, expected 1000.")
            return tuple(names)
    raise ValueError(f"{path} no longer defines IMAGENET_LABELS_LIST; pass class_names=... yourself.")


@functools.lru_cache(maxsize=None)
def imagenet_class_names():
    """The first (most common) name of each class, e.g. ``'tench'``, ``'Egyptian cat'``."""
    return tuple(name.split(",")[0].strip() for name in imagenet_full_names())

