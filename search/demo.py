"""The demo: nearest neighbours of a few words and sentences, on the built-in indexes."""

from __future__ import annotations

from indexer.builtin import sentence_index, word_index
from indexer.index import Progress, _no_progress

from .query import Hit, search
from .words import neighbours

WORDS = ("toilet", "king", "dog", "paris")
SENTENCES = (
    "a dog playing on the beach",
    "how do vaccines protect us",
    "the stock market fell sharply",
    "baking bread at home",
    "looking at planets through a telescope",
)


def run_demo(*, k: int = 5, progress: Progress = _no_progress) -> list[tuple[str, list[Hit]]]:
    """(title, hits) for each demo query, building the cached indexes on first use."""
    words = word_index(progress=progress)
    results = [(f"words nearest to {w!r} (GloVe, {words.count():,} words)", neighbours(w, k=k, index=words))
               for w in WORDS]
    sentences = sentence_index(progress=progress)
    results += [(f"sentences nearest to {q!r} (MiniLM, {sentences.count():,} sentences)", search(sentences, q, k=k))
                for q in SENTENCES]
    return results
