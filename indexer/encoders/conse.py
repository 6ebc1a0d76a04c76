"""ConSE: one offline space for texts and images (Norouzi et al., ICLR 2014). An image is
the probability-weighted mean of the `minilm` embeddings of its top-T ImageNet classes
(from `efficientnet`); a text is its `minilm` embedding."""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from ..paths import cache_dir
from .base import Encoder, EncoderSpec, normalize
from .efficientnet import efficientnet_spec
from .minilm import minilm_spec

# Chosen by measurement (benchmarks/bench_conse.py: 14 text queries against 13 bundled photos;
# T in 1, 3, 5, 10, 20 x 4 prompts): T=5 with "an image of {}" ranked the right photo first
# for 13 of 14 queries and second for the last (MRR 0.964); T=1 gave 0.79 top-1.
TOP_T = 5
PROMPT = "an image of {}"


class ConseEncoder(Encoder):
    """Texts through minilm; images through EfficientNet class probabilities into minilm's space."""

    name = "conse"
    modalities = ("text", "image")
    default_batch_size = 32

    def __init__(self, text: Encoder, cnn: Encoder, *, top_t: int = TOP_T, prompt: str = PROMPT):
        self.text = text  # minilm
        self.cnn = cnn  # efficientnet: `labels` and `forward` give ImageNet class logits
        self.top_t, self.prompt = int(top_t), prompt
        self.dim, self.runtime = self.text.dim, self.text.runtime
        self.version = _version(self.top_t, self.prompt, self.text.version, self.cnn.version)
        self.class_vectors = _class_vectors(self.text, tuple(self.cnn.labels), prompt)

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


def _version(top_t: int, prompt: str, text_version: str, cnn_version: str) -> str:
    return f"T{top_t}|{prompt}|{text_version}|{cnn_version}"


def conse_spec(runtime: str) -> EncoderSpec:
    """What an index records of conse on `runtime`, known without loading either network."""
    text, cnn = minilm_spec(runtime), efficientnet_spec(runtime)
    return EncoderSpec("conse", _version(TOP_T, PROMPT, text.version, cnn.version), text.dim, ("text", "image"),
                       runtime)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _class_vectors(text: Encoder, labels: tuple[str, ...], prompt: str) -> np.ndarray:
    """minilm embeddings of the 1000 class prompts, cached on disk (they take seconds to compute)."""
    digest = hashlib.sha256("\n".join([text.version, prompt, *labels]).encode()).hexdigest()[:16]
    path = cache_dir() / f"conse-classes-{digest}.npy"
    return _load_or_compute(str(path), text, labels, prompt)


@lru_cache(maxsize=4)
def _load_or_compute(path: str, text: Encoder, labels: tuple[str, ...], prompt: str) -> np.ndarray:
    p = Path(path)
    if p.exists():
        try:
            vectors = np.load(p, allow_pickle=False)
            if vectors.shape == (len(labels), text.dim):
                return vectors
        except (OSError, ValueError):
            pass
    vectors = normalize(text.encode([prompt.format(label) for label in labels]))
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(f".tmp-{os.getpid()}.npy")
    np.save(tmp, vectors)
    os.replace(tmp, p)
    return vectors
