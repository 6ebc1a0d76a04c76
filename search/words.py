"""Word neighbourhoods over the built-in GloVe index (no torch import on this path)."""

from __future__ import annotations

from latent.indexer.builtin import word_index
from latent.indexer.errors import OutOfVocabulary
from latent.indexer.index import Index, Progress, _no_progress

from .query import Hit, similar


def neighbours(word: str, *, k: int = 10, index: Index | None = None,
               progress: Progress = _no_progress) -> list[Hit]:
    """The k nearest GloVe words to `word` (matched lower-cased), the word itself excluded."""
    index = index or word_index(progress=progress)
    key = word.strip().lower()
    if index.vector_of(key) is None:
        raise OutOfVocabulary([word])
    return similar(index, key=key, k=k)
