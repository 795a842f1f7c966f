"""The Backbone contract: a Keras functional model from token ids (or pixels) to features.

A backbone is built from its config alone (``get_config``/``from_config`` round-trip), knows nothing
about the task on top, and loads from any preset handle with ``from_preset``.
"""

import keras

from kcookbook.components.preset_entry import load_preset
from kcookbook.presets import save_preset


class Backbone(keras.Model):
    """Base class of every backbone.

    Subclasses build a functional graph in ``__init__`` and call
    ``super().__init__(inputs=..., outputs=..., name=..., dtype=...)``, then record the constructor
    arguments that ``get_config`` returns.
    """

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)

    @classmethod
    def from_preset(cls, handle, load_weights=True, **kwargs):
        """Build the backbone of a preset: a built-in name, a directory, ``kaggle://…`` or ``hf://…``.

        >>> backbone = Backbone.from_preset("all_minilm_l6_v2")  # doctest: +SKIP
        >>> sorted(backbone.input)  # doctest: +SKIP
        ['padding_mask', 'segment_ids', 'token_ids']

        Args:
            handle: where the preset is.
            load_weights: False builds the architecture with random weights.
            **kwargs: override config entries (e.g. ``dropout=0.0``, ``dtype="bfloat16"``).
        """
        backbone = load_preset(handle).load_backbone(load_weights=load_weights, **kwargs)
        if not isinstance(backbone, cls):
            raise TypeError(
                f"Preset {handle!r} holds a {type(backbone).__name__}, not a {cls.__name__}. "
                f"Use Backbone.from_preset or {type(backbone).__name__}.from_preset."
            )
        return backbone

    def first_token_outputs(self, inputs):
        """Symbolic outputs for a task that reads only the first token (``[CLS]``), computed without
        the work no other token needs; None where a backbone has no such path (the default), and
        tasks then call the backbone. :class:`BertBackbone` returns ``first_token_output`` (=
        ``sequence_output[:, 0]``) and ``pooled_output``."""
        return None

    def save_to_preset(self, directory, metadata=None):
        """Write ``config.json``, ``model.weights.h5`` and ``metadata.json`` (KerasHub layout), atomically."""
        save_preset(directory, backbone=self, metadata=metadata)

    # ----- LoRA (see kcookbook.components.lora) -----
    def enable_lora(self, rank, target_names=None, lora_alpha=None):
        """Add rank-``rank`` LoRA weights to the attention projections and freeze everything else.

        ``target_names`` are layer names; the default adapts the query/key/value projections
        (``"qkv"`` in kcookbook's attention). Afterwards only the LoRA matrices are trainable.

        >>> backbone.enable_lora(4)  # doctest: +SKIP
        >>> backbone.fit(...)  # doctest: +SKIP
        >>> backbone.save_lora_weights("adapter.lora.h5")  # doctest: +SKIP
        """
        from kcookbook.components import lora

        return lora.enable_lora(self, rank, target_names or lora.DEFAULT_LORA_TARGETS, lora_alpha)

    def save_lora_weights(self, path):
        """Write only the LoRA matrices (a few hundred KB for a small model) to ``path`` (.h5)."""
        from kcookbook.components import lora

        lora.save_lora_weights(self, path)

    def load_lora_weights(self, path):
        """Load LoRA matrices saved by ``save_lora_weights``; enables LoRA on the same layers if needed."""
        from kcookbook.components import lora

        lora.load_lora_weights(self, path)

    def merge_lora(self):
        """Fold the LoRA updates into the kernels and remove the LoRA weights (same outputs)."""
        from kcookbook.components import lora

        lora.merge_lora(self)
