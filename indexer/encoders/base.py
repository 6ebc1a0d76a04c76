"""The encoder interface: one abstract batch method, normalisation in one place.

Every encoder returns float32 (n, dim) L2-normalised vectors from `encode`;
subclasses only implement `_embed`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np

from ..errors import EncoderMismatch


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Return float32 rows scaled to unit L2 norm; all-zero rows stay zero.

    Raises EncoderMismatch for non-finite values, which would corrupt an index.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    if vectors.ndim != 2:
        raise EncoderMismatch(f"vectors must be 2-D (n, dim), got shape {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise EncoderMismatch("vectors contain NaN or infinite values; refusing to index or search them")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return vectors / norms


class Encoder(ABC):
    """Maps items (texts, words, ...) to vectors of one latent space."""

    name: str = ""
    version: str = "1"
    dim: int = 0
    modalities: tuple[str, ...] = ()
    default_batch_size: int = 64

    @abstractmethod
    def _embed(self, items: Sequence[str]) -> np.ndarray:
        """Return raw float (len(items), dim) vectors; `encode` normalises them."""

    def encode(self, items: Sequence[str]) -> np.ndarray:
        """Encode items into float32 (n, dim) L2-normalised vectors."""
        items = list(items)
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = normalize(self._embed(items))
        if vectors.shape != (len(items), self.dim):
            raise EncoderMismatch(
                f"encoder {self.name} returned shape {vectors.shape}, expected {(len(items), self.dim)}"
            )
        return vectors

    def describe(self) -> dict:
        return {"name": self.name, "version": self.version, "dim": self.dim, "modalities": list(self.modalities)}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} dim={self.dim}>"
