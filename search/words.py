"""Word neighbourhoods over the built-in GloVe index (no torch import on this path)."""

from __future__ import annotations

import re
from dataclasses import replace

from latent.indexer.builtin import word_index
from latent.indexer.errors import OutOfVocabulary
from latent.indexer.index import Index, Progress, _no_progress

from .query import MAX_K, Hit, similar


# A word as the examples show it: letters, with inner apostrophes, dots or hyphens (not "893-8241")
WORD = re.compile(r"[a-z]+(?:['.-][a-z]+)*")


def neighbours(word: str, *, k: int = 10, index: Index | None = None, progress: Progress = _no_progress,
               max_rank: int | None = None, words_only: bool = False) -> list[Hit]:
    """The k nearest GloVe words to `word` (matched lower-cased), the word itself excluded.

    `max_rank` keeps the neighbours among the `max_rank` most frequent words (their `rank`
    metadata): rare tokens of the web crawl (such as "prohertrib", rank 129,500, nearest to
    "paris") stay out. `words_only` drops tokens that are not words (numbers, codes)."""
    index = index or word_index(progress=progress)
    key = word.strip().lower()
    if index.vector_of(key) is None:
        raise OutOfVocabulary([word])
    if max_rank is None and not words_only:
        return similar(index, key=key, k=k)

    def wanted(hit: Hit) -> bool:
        rank = hit.metadata.get("rank")
        return (max_rank is None or (isinstance(rank, int) and rank <= max_rank)) and \
            (not words_only or WORD.fullmatch(hit.key) is not None)

    fetch = 4 * k  # most neighbours pass: filter a few more hits than asked for, not the whole index
    while True:
        hits = similar(index, key=key, k=min(fetch, MAX_K))
        kept = [h for h in hits if wanted(h)]
        if len(kept) >= k or len(hits) < fetch or fetch >= MAX_K:
            return [replace(h, rank=i + 1) for i, h in enumerate(kept[:k])]
        fetch *= 4
