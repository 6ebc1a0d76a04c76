"""`vectors:<dim>`: no model, for indexes of vectors made elsewhere (added with
`Index.add_vectors`, searched with `search_vectors` or by a stored item's key)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import EncoderMismatch, EncoderUnavailable
from .base import Encoder

MAX_DIM = 65_536


class PrecomputedVectors(Encoder):
    """Holds the dimension of vectors the user brings; encodes nothing itself."""

    version = "1"
    modalities = ()

    def __init__(self, dim: int):
        self.dim = dim
        self.name = f"vectors:{dim}"

    def _embed(self, items: Sequence[str]) -> np.ndarray:
        raise EncoderMismatch(f"this index holds precomputed {self.dim}-d vectors ({self.name}): it cannot encode "
                              "text; search it by a vector (search_vectors) or by the key of a stored item")

    def preprocess(self, image) -> np.ndarray:
        raise EncoderMismatch(f"this index holds precomputed {self.dim}-d vectors ({self.name}): it cannot encode "
                              "images; search it by a vector (search_vectors) or by the key of a stored item")


def parse(name: str) -> PrecomputedVectors:
    text = name.split(":", 1)[1]
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_DIM:
        raise EncoderUnavailable(f"{name!r}: give the dimension of the vectors, a whole number from 1 to "
                                 f"{MAX_DIM:,}, as in vectors:384")
    return PrecomputedVectors(int(text))
