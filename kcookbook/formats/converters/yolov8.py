"""YOLOv8 detectors from an Ultralytics state dict (tensors only), with the model's scale and classes.

The format: a folder holding ``yolov8.json`` and one ``*.safetensors`` file (or a ``*.pt``/``*.pth``
that ``torch.load(weights_only=True)`` reads: a plain ``state_dict``). ``yolov8.json`` says what the
tensors alone cannot::

    {"scale": "n", "names": ["person", "bicycle", ...]}
    {"depth_multiple": 0.33, "width_multiple": 0.0625, "max_channels": 1024, "names": {"0": "a", ...}}

Ultralytics' own ``yolov8n.pt`` is a pickle of its classes, which kcookbook never unpickles. Export
its state dict once, where Ultralytics is installed::

    from ultralytics import YOLO; from safetensors.torch import save_file
    model = YOLO("yolov8n.pt").model.float()
    save_file(model.state_dict(), "yolov8n/model.safetensors")  # and write yolov8n/yolov8.json

Ultralytics' code and weights are AGPL-3.0; a converted preset keeps that licence. Names map as

    model.0 / 1 / 3 / 5 / 7               (conv)  → stem_p1 / down_p2 … down_p5
    model.2 / 4 / 6 / 8                   (C2f)   → c2f_p2 … c2f_p5
    model.9                               (SPPF)  → sppf
    model.12 / 15 / 16 / 18 / 19 / 21             → top_down_p4 / out_p3 / down_out_p4 / out_p4 / down_out_p5 / out_p5
    C2f cv1 / cv2 / m.k.cv1 / m.k.cv2             → _pre / _post / _bottleneck{k}_conv1 / _conv2
    SPPF cv1 / cv2                                → sppf_pre / sppf_post
    model.22.cv2.{l}.0 / .1 / .2  (box branch)    → head_p{l+3}_box1 / _box2 / _box_logits
    model.22.cv3.{l}.0 / .1 / .2  (class branch)  → head_p{l+3}_class1 / _class2 / _class_logits
    model.22.dfl.conv.weight                      → (the fixed bins 0…15 of the expectation; checked)

A conv-BN pair ``X.conv.weight`` / ``X.bn.{weight,bias,running_mean,running_var}`` becomes
``name_conv/kernel`` and ``name_bn/{gamma,beta,moving_mean,moving_variance}``.
"""

import glob
import os

import numpy as np

from kcookbook.backbones.yolov8 import SCALES, YOLOv8Backbone
from kcookbook.formats.converters.base import Converter
from kcookbook.formats.converters.common import take
from kcookbook.formats.converters.efficientnet_lite import conv_kernel, read_state_dict
from kcookbook.formats.loaders import PresetLoader
from kcookbook.presets import files
from kcookbook.presets.errors import PresetError

CONFIG_FILE = "yolov8.json"
BOX_BINS = 16
CONV_LAYERS = {0: "stem_p1", 1: "down_p2", 3: "down_p3", 5: "down_p4", 7: "down_p5", 16: "down_out_p4",
               19: "down_out_p5"}
C2F_LAYERS = {2: "c2f_p2", 4: "c2f_p3", 6: "c2f_p4", 8: "c2f_p5", 12: "top_down_p4", 15: "out_p3",
              18: "out_p4", 21: "out_p5"}
SPPF_LAYER = 9
HEAD_LAYER = 22
EXPORT_HINT = ("Export a tensor-only state dict where Ultralytics is installed: "
               "safetensors.torch.save_file(YOLO('yolov8n.pt').model.float().state_dict(), 'model.safetensors'), "
               f"next to a {CONFIG_FILE} naming the scale and class names.")


def _conv_bn(state, theirs, ours, out):
    out[f"{ours}_conv/kernel"] = conv_kernel(take(state, f"{theirs}.conv.weight"))
    for torch_name, keras_name in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
                                   ("running_var", "moving_variance")):
        out[f"{ours}_bn/{keras_name}"] = take(state, f"{theirs}.bn.{torch_name}")
    state.pop(f"{theirs}.bn.num_batches_tracked", None)


class YOLOv8Converter(Converter):
    """Ultralytics YOLOv8 detection state dicts (``StateDictLoader`` reads the folder)."""

    family = "yolov8"

    def weights_from_state_dict(self, state, backbone):
        out = {}
        for index, name in CONV_LAYERS.items():
            _conv_bn(state, f"model.{index}", name, out)
        for index, name in C2F_LAYERS.items():
            blocks = backbone.neck_blocks if index > SPPF_LAYER else backbone.stage_blocks[index // 2 - 1]
            _conv_bn(state, f"model.{index}.cv1", f"{name}_pre", out)
            _conv_bn(state, f"model.{index}.cv2", f"{name}_post", out)
            for k in range(blocks):
                _conv_bn(state, f"model.{index}.m.{k}.cv1", f"{name}_bottleneck{k}_conv1", out)
                _conv_bn(state, f"model.{index}.m.{k}.cv2", f"{name}_bottleneck{k}_conv2", out)
        _conv_bn(state, f"model.{SPPF_LAYER}.cv1", "sppf_pre", out)
        _conv_bn(state, f"model.{SPPF_LAYER}.cv2", "sppf_post", out)
        return out

    def head_weights_from_state_dict(self, state, name="head"):
        """The detection head's ``{variable.path: array}``; consumes its entries from ``state``."""
        out = {}
        bins = state.pop(f"model.{HEAD_LAYER}.dfl.conv.weight", None)
        if bins is not None and not np.array_equal(np.ravel(bins), np.arange(BOX_BINS)):
            raise PresetError(f"model.{HEAD_LAYER}.dfl.conv.weight is not the bins 0…{BOX_BINS - 1}: this is not "
                              "a YOLOv8 detection head kcookbook reads.")
        for level in range(3):
            prefix, ours = f"model.{HEAD_LAYER}", f"{name}_p{level + 3}"
            for branch, kind in (("cv2", "box"), ("cv3", "class")):
                _conv_bn(state, f"{prefix}.{branch}.{level}.0", f"{ours}_{kind}1", out)
                _conv_bn(state, f"{prefix}.{branch}.{level}.1", f"{ours}_{kind}2", out)
                out[f"{ours}_{kind}_logits/kernel"] = conv_kernel(take(state, f"{prefix}.{branch}.{level}.2.weight"))
                out[f"{ours}_{kind}_logits/bias"] = take(state, f"{prefix}.{branch}.{level}.2.bias")
        return out


def find_weights(path):
    """The one weights file of a ``yolov8.json`` folder."""
    found = sorted(f for pattern in ("*.safetensors", "*.pt", "*.pth") for f in glob.glob(os.path.join(path, pattern)))
    if len(found) != 1:
        raise PresetError(f"{path} holds {len(found)} weight files ({[os.path.basename(f) for f in found]}); "
                          f"a YOLOv8 folder holds exactly one *.safetensors or *.pt next to {CONFIG_FILE}.")
    return found[0]


def read_weights(path):
    """``{name: array}`` of a safetensors file or a tensor-only torch file; pickled models are refused."""
    if path.endswith(".safetensors"):
        return files.read_safetensors(path)
    try:
        return read_state_dict(path)
    except PresetError as e:
        raise PresetError(f"{e} A full Ultralytics checkpoint (YOLO('yolov8n.pt')) is a pickle of its "
                          f"classes and is never unpickled here. {EXPORT_HINT}") from e


def backbone_kwargs(config, source):
    """``YOLOv8Backbone`` arguments from ``yolov8.json``."""
    if "scale" in config:
        if config["scale"] not in SCALES:
            raise PresetError(f"{source}: scale {config['scale']!r} is not one of {sorted(SCALES)}.")
        depth, width, max_channels = SCALES[config["scale"]]
    else:
        try:
            depth, width = config["depth_multiple"], config["width_multiple"]
        except KeyError as e:
            raise PresetError(f"{source} names neither a scale ('n' … 'x') nor depth_multiple and "
                              f"width_multiple (missing {e}).") from None
        max_channels = config.get("max_channels", 1024)
    return {"depth_coefficient": depth, "width_coefficient": width, "max_channels": max_channels}


def class_names(config, source):
    names = config.get("names")
    if isinstance(names, dict):
        names = [names.get(str(i), names.get(i)) for i in range(len(names))]
    if not names or not all(isinstance(n, str) for n in names):
        raise PresetError(f"{source} needs 'names': the class names, a list or {{'0': name, …}}.")
    return list(names)


class StateDictLoader(PresetLoader):
    """A folder with ``yolov8.json`` and an Ultralytics state dict."""

    format = "yolov8_state_dict"

    @staticmethod
    def detect(path):
        return os.path.isdir(path) and os.path.exists(os.path.join(path, CONFIG_FILE))

    def __init__(self, path, handle, info=None):
        super().__init__(path, handle, info)
        self.config_file = self.file(CONFIG_FILE)
        self.config = files.read_json(self.config_file, "YOLOv8 config")
        self.weights_file = find_weights(path)
        self.converter = YOLOv8Converter()
        self._state = None

    def state_dict(self):
        if self._state is None:
            self._state = read_weights(self.weights_file)
        return dict(self._state)

    def load_backbone(self, load_weights=True, **overrides):
        backbone = YOLOv8Backbone(**{**backbone_kwargs(self.config, self.config_file), **overrides})
        if load_weights:
            state = self.state_dict()
            files.assign_weights(backbone, self.converter.weights_from_state_dict(state, backbone),
                                 self.weights_file)
        return backbone

    def load_task(self, task_cls, load_weights=True, with_preprocessor=True, backbone_kwargs=None, **kwargs):
        """The checkpoint's own head when ``num_classes`` is absent or the checkpoint's."""
        from kcookbook.tasks.object_detector import ObjectDetector

        names = class_names(self.config, self.config_file)
        if task_cls is not ObjectDetector or kwargs.get("num_classes", len(names)) != len(names):
            return None
        kwargs = {"num_classes": len(names), "class_names": names, **kwargs}
        task = task_cls(backbone=self.load_backbone(load_weights=load_weights, **(backbone_kwargs or {})),
                        **kwargs)
        if load_weights:
            state = self.state_dict()
            self.converter.weights_from_state_dict(state, task.backbone)  # consumed: what is left is the head
            task.assign_head_weights(self.converter.head_weights_from_state_dict(state), self.weights_file)
            if state:
                raise PresetError(f"{self.weights_file} has tensors a YOLOv8 detector does not use: "
                                  f"{sorted(state)[:5]}. Is {CONFIG_FILE}'s scale right?")
        return task
