"""The encoder interface: one abstract batch method, normalisation in one place.

Every encoder returns float32 (n, dim) L2-normalised vectors from `encode`;
subclasses only implement `_embed`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from ..errors import EncoderMismatch


_NON_FINITE = "vectors contain NaN or infinite values; refusing to index or search them"


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Return float32 rows scaled to unit L2 norm; all-zero rows stay zero.

    Raises EncoderMismatch for non-finite values, which would corrupt an index.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    if vectors.shape[0] == 1 and vectors.ndim == 2:  # one query: the same in scalar steps, 3x faster
        row = vectors[0].astype(np.float64)
        squared = float(row @ row)  # NaN or infinite when any value is
        if not math.isfinite(squared):
            raise EncoderMismatch(_NON_FINITE)
        if abs(squared - 1.0) < 1e-6:  # already unit length (most queries): as it is
            return vectors.copy()
        return (row / math.sqrt(squared) if squared else row).astype(np.float32)[None, :]
    if vectors.ndim != 2:
        raise EncoderMismatch(f"vectors must be 2-D (n, dim), got shape {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise EncoderMismatch(_NON_FINITE)
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1, keepdims=True)  # float32 over/underflows
    norms[norms == 0] = 1.0
    return (vectors / norms).astype(np.float32)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with torch limited to n intra-op threads (None: leave torch's setting)."""
    import torch

    before = torch.get_num_threads()
    change = n is not None and int(n) != before
    if change:
        torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        if change:
            torch.set_num_threads(before)


# Named in errors that send users to an encoder able to take their input.
TEXT_ENCODERS = "minilm, conse, glove (single words), st:<name-or-path>, clip:<arch>/<pretrained>"
IMAGE_ENCODERS = "efficientnet, conse, clip:<arch>/<pretrained>, vae:<model file>"


@dataclass(frozen=True)
class EncoderSpec:
    """What an index records of its encoder; bundled encoders know it without loading a model.
    `runtime` is onnx or torch for the bundled networks, None for encoders with one way to run."""

    name: str
    version: str
    dim: int
    modalities: tuple[str, ...]
    runtime: str | None = None


class Encoder:
    """Maps items (texts, words, images) to vectors of one latent space.

    Text and word encoders implement `_embed`; image encoders implement `preprocess`
    (one decoded RGB image to a model input, run in worker threads) and `_embed_images`
    (a stacked batch of inputs to raw vectors, plus optional per-image metadata).
    """

    name: str = ""
    version: str = "1"
    dim: int = 0
    modalities: tuple[str, ...] = ()
    runtime: str | None = None
    default_batch_size: int = 64

    def to_spec(self) -> EncoderSpec:
        return EncoderSpec(self.name, self.version, self.dim, tuple(self.modalities), self.runtime)

    # -- texts and words -----------------------------------------------------------------
    def _embed(self, items: Sequence[str]) -> np.ndarray:
        """Return raw float (len(items), dim) vectors; `encode` normalises them."""
        raise EncoderMismatch(
            f"encoder {self.name!r} encodes {' and '.join(self.modalities) or 'nothing'}, not text; "
            f"encoders that take text: {TEXT_ENCODERS}"
        )

    def unknown_words(self, text: str) -> list[str]:
        """Words of `text` that the encoder leaves out (a vocabulary encoder's unknown words)."""
        return []

    def encode(self, items: Sequence[str]) -> np.ndarray:
        """Encode texts (or words) into float32 (n, dim) L2-normalised vectors."""
        items = list(items)
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._checked(normalize(self._embed(items)), len(items))

    # -- images ----------------------------------------------------------------------------
    def preprocess(self, image) -> np.ndarray:
        """One RGB PIL image to a float32 model input (for example (3, 224, 224))."""
        raise EncoderMismatch(
            f"encoder {self.name!r} encodes {' and '.join(self.modalities) or 'nothing'}, not images; "
            f"encoders that take images: {IMAGE_ENCODERS}"
        )

    def _embed_images(self, batch: np.ndarray) -> tuple[np.ndarray, list[dict] | None]:
        """Raw (n, dim) vectors of a stacked batch of `preprocess` outputs, and per-image metadata or None."""
        raise NotImplementedError

    def encode_preprocessed(self, batch: np.ndarray) -> tuple[np.ndarray, list[dict]]:
        """(float32 (n, dim) L2-normalised vectors, metadata dicts) of a batch of preprocessed images."""
        if len(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32), []
        vectors, metadata = self._embed_images(np.ascontiguousarray(batch, dtype=np.float32))
        return self._checked(normalize(vectors), len(batch)), list(metadata or [{} for _ in range(len(batch))])

    def encode_images(self, images: Sequence) -> tuple[np.ndarray, list[dict]]:
        """Encode RGB PIL images: preprocess each, then one batch."""
        images = list(images)
        if not images:
            return self.encode_preprocessed(np.zeros((0,), dtype=np.float32))
        return self.encode_preprocessed(np.stack([self.preprocess(im) for im in images]))

    # -- shared --------------------------------------------------------------------------------
    def _checked(self, vectors: np.ndarray, n: int) -> np.ndarray:
        if vectors.shape != (n, self.dim):
            raise EncoderMismatch(f"encoder {self.name} returned shape {vectors.shape}, expected {(n, self.dim)}")
        return vectors

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} dim={self.dim}>"


