"""ConSE: one offline space for texts and images (Norouzi et al., ICLR 2014). An image is
the probability-weighted mean of the `minilm` embeddings of its top-T ImageNet classes
(from `efficientnet`); a text is its `minilm` embedding."""

from __future__ import annotations

import hashlib
import os
import threading
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..paths import cache_dir
from .base import Encoder, EncoderSpec, normalize
from .efficientnet import efficientnet_spec, imagenet_definitions, imagenet_names
from .minilm import minilm_spec

# Chosen by measurement on the ImageNet dev set (benchmarks/bench_image_features.py: 500 photos, one
# per even class; the README's "Image features" table). A class's vector is the mean of its name in
# four prompts (as CLIP's prompt ensembles), plus its name with its WordNet definition ("beagle: a
# small short-legged smooth-coated breed of hound"), each normalised; an image takes its top 10
# classes. Against the first default (T=5, "an image of {}" alone): text->image R@1 0.890 -> 0.900,
# R@10 0.952 -> 0.966, and same-coarse-class neighbours (coarse@5) 0.515 -> 0.699, since the
# definitions put kinds of dogs, birds or fish near each other.
TOP_T = 10
PROMPTS = ("a photo of a {}.", "a picture of a {}.", "an image of {}", "{}")
DEFINITIONS = True
# Indexes made with an earlier default keep it: the settings are read back from their recorded version.
LEGACY = {"T5|an image of {}": {"top_t": 5, "prompts": ("an image of {}",), "definitions": False}}


class ConseEncoder(Encoder):
    """Texts through minilm; images through EfficientNet class probabilities into minilm's space."""

    name = "conse"
    modalities = ("text", "image")
    default_batch_size = 32

    def __init__(self, text: Encoder, cnn: Encoder | Callable[[], Encoder], *, top_t: int = TOP_T,
                 prompts: Sequence[str] = PROMPTS, definitions: bool = DEFINITIONS):
        """`cnn` is efficientnet, or a function that loads it: then text queries never load the
        network, which only images need (its class names and version are known without it)."""
        self.text = text  # minilm
        self._cnn, self._load_cnn = (cnn, None) if isinstance(cnn, Encoder) else (None, cnn)
        self._cnn_lock = threading.Lock()
        self.top_t, self.prompts, self.definitions = int(top_t), tuple(prompts), bool(definitions)
        self.dim, self.runtime = self.text.dim, self.text.runtime
        cnn_version = self._cnn.version if self._cnn is not None else efficientnet_spec(self.runtime).version
        self.version = _version(self.top_t, self.prompts, self.definitions, self.text.version, cnn_version)
        labels = self._cnn.labels if self._cnn is not None else imagenet_names()[0]
        glosses = tuple(imagenet_definitions()) if self.definitions else ()
        self.class_vectors = _class_vectors(self.text, tuple(labels), self.prompts, glosses)

    @property
    def cnn(self) -> Encoder:
        """efficientnet: `labels` and `forward` give ImageNet class logits (loaded on first use)."""
        if self._cnn is None:
            with self._cnn_lock:  # image preprocessing runs in worker threads
                if self._cnn is None:
                    self._cnn = self._load_cnn()
        return self._cnn

    def _embed(self, items: Sequence[str]) -> np.ndarray:
        return self.text._embed(items)

    def preprocess(self, image) -> np.ndarray:
        return self.cnn.preprocess(image)

    def _embed_images(self, batch: np.ndarray) -> tuple[np.ndarray, list[dict]]:
        _, logits = self.cnn.forward(batch)
        return self.combine(logits), self.cnn.describe_logits(logits)

    def combine(self, logits: np.ndarray) -> np.ndarray:
        """The convex combination of the top-T class embeddings, weighted by their probabilities."""
        probs = _softmax(logits)
        top = np.argsort(-probs, axis=1)[:, : self.top_t]
        weights = np.take_along_axis(probs, top, axis=1)
        weights /= weights.sum(axis=1, keepdims=True)
        return np.einsum("nt,ntd->nd", weights, self.class_vectors[top]).astype(np.float32)


def _settings_key(top_t: int, prompts: Sequence[str], definitions: bool) -> str:
    return f"T{top_t}|{' / '.join(prompts)}" + (" + name: definition" if definitions else "")


def _version(top_t: int, prompts: Sequence[str], definitions: bool, text_version: str, cnn_version: str) -> str:
    return f"{_settings_key(top_t, prompts, definitions)}|{text_version}|{cnn_version}"


def settings_of(version: str | None) -> dict:
    """The ConseEncoder settings an index recorded in its encoder version: an earlier default's
    (LEGACY) or, for anything else, today's."""
    for key, settings in LEGACY.items():
        if version and version.startswith(key + "|"):
            return settings
    return {}


def conse_spec(runtime: str) -> EncoderSpec:
    """What an index records of conse on `runtime`, known without loading either network."""
    text, cnn = minilm_spec(runtime), efficientnet_spec(runtime)
    return EncoderSpec("conse", _version(TOP_T, PROMPTS, DEFINITIONS, text.version, cnn.version), text.dim,
                       ("text", "image"), runtime)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _class_vectors(text: Encoder, labels: tuple[str, ...], prompts: tuple[str, ...],
                   glosses: tuple[str, ...]) -> np.ndarray:
    """minilm embeddings of the 1000 classes, cached on disk (they take seconds to compute): the
    normalised mean of the prompts, plus "name: definition" when `glosses` are given, normalised."""
    digest = hashlib.sha256("\n".join([text.version, *prompts, *labels, *glosses]).encode()).hexdigest()[:16]
    path = cache_dir() / f"conse-classes-{digest}.npy"
    return _load_or_compute(str(path), text, labels, prompts, glosses)


@lru_cache(maxsize=4)
def _load_or_compute(path: str, text: Encoder, labels: tuple[str, ...], prompts: tuple[str, ...],
                     glosses: tuple[str, ...]) -> np.ndarray:
    p = Path(path)
    if p.exists():
        try:
            vectors = np.load(p, allow_pickle=False)
            if vectors.shape == (len(labels), text.dim):
                return vectors
        except (OSError, ValueError):
            pass
    vectors = normalize(np.mean([normalize(text.encode([prompt.format(label) for label in labels]))
                                 for prompt in prompts], axis=0))
    if glosses:
        vectors = normalize(vectors + normalize(text.encode([f"{label}: {gloss}"
                                                              for label, gloss in zip(labels, glosses)])))
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(f".tmp-{os.getpid()}.npy")
    np.save(tmp, vectors)
    os.replace(tmp, p)
    return vectors
