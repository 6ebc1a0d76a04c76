"""Built-in indexes kept in the user's cache directory: every GloVe word (for `latent
words`) and the sentence corpus shipped with latent (for `latent demo`). Built once,
reused afterwards; an interrupted build resumes where it stopped."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import IndexExists
from .index import Index, Progress, _no_progress
from .readers import Record, read_inputs

SENTENCES = Path(__file__).parent / "data" / "sentences.jsonl"


def cache_dir() -> Path:
    """$LATENT_CACHE_DIR, else the platform's user cache directory for latent."""
    env = os.environ.get("LATENT_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("latent"))


def _open_or_create(directory: Path, encoder: str, index_type: str) -> Index:
    if (directory / "latent.db").exists():
        return Index.open(directory)
    try:
        return Index.create(directory, encoder=encoder, index_type=index_type)
    except IndexExists:  # another process created it meanwhile
        return Index.open(directory)


def _ensure(directory: Path, encoder: str, records, total: int, progress: Progress, batch_size: int) -> Index:
    index = _open_or_create(directory, encoder, "auto")
    if not index.store.manifest().get("complete"):
        index.add(records(), batch_size=batch_size, progress=progress, total=total)
        index.store.set_manifest(complete=True)
    return index


def word_index(*, progress: Progress = _no_progress) -> Index:
    """The index of all 400,000 GloVe words (keys are the words), built on first use."""
    from .encoders.glove import load_glove

    directory = cache_dir() / "glove-words"
    if (directory / "latent.db").exists():
        index = Index.open(directory)
        if index.store.manifest().get("complete"):
            return index
        index.close()

    def records():
        for word in load_glove()[0]:
            yield Record(text=word, key=word, kind="word", source="glove")

    return _ensure(directory, "glove", records, 400_000, progress, 20_000)


def sentence_index(*, progress: Progress = _no_progress) -> Index:
    """The index of latent's demo sentences (minilm), built on first use."""
    directory = cache_dir() / "demo-sentences"
    return _ensure(directory, "minilm",
                   lambda: read_inputs([str(SENTENCES)], fmt="jsonl", text_field="text", key_field="id"),
                   sum(1 for _ in open(SENTENCES, "rb")), progress, 128)
