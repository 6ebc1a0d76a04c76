"""The demo: nearest neighbours of a few words and sentences, on the built-in indexes."""

from __future__ import annotations

from latent.indexer.builtin import image_index, sentence_index, word_index
from latent.indexer.index import Progress, _no_progress

from .query import Hit, search, similar
from .words import neighbours

WORDS = ("toilet", "king", "dog", "paris")
SENTENCES = (
    "a dog playing on the beach",
    "how do vaccines protect us",
    "the stock market fell sharply",
    "baking bread at home",
    "looking at planets through a telescope",
)
IMAGE_TEXTS = ("a cat", "a cup of coffee", "a rocket launch")
SIMILAR_PHOTO = "faces/face-00.png"
DEMO_RANK = 50_000  # the words shown are among the most frequent: GloVe's rare tokens are noisy


def run_demo(*, k: int = 5, progress: Progress = _no_progress) -> list[tuple[str, list[Hit]]]:
    """(title, hits) for each demo query, building the cached indexes on first use."""
    words = word_index(progress=progress)
    results = [(f"words nearest to {w!r} (GloVe, among the {DEMO_RANK:,} most frequent words)",
                neighbours(w, k=k, index=words, max_rank=DEMO_RANK, words_only=True))
               for w in WORDS]
    sentences = sentence_index(progress=progress)
    results += [(f"sentences nearest to {q!r} (MiniLM, {sentences.count():,} sentences)", search(sentences, q, k=k))
                for q in SENTENCES]
    photos = image_index(progress=progress)
    results += [(f"photos nearest to the text {q!r} (ConSE, {photos.count()} photos)", search(photos, q, k=k))
                for q in IMAGE_TEXTS]
    results.append((f"photos nearest to the photo {SIMILAR_PHOTO!r} (ConSE)",
                    similar(photos, key=SIMILAR_PHOTO, k=k)))
    return results
