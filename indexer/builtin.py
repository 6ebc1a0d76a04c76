"""Built-in indexes kept in the user's cache directory: every GloVe word (for `latent
words`), the sentence corpus shipped with latent and the photos shipped with
scikit-image and scikit-learn (for `latent demo`). Built once, reused afterwards; an
interrupted build resumes where it stopped."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .encoders.glove import load_glove
from .errors import IndexExists, IndexNotFound
from .images import read_images
from .index import Index, Progress, _no_progress
from .paths import cache_dir
from .readers import read_inputs
from .records import Record

SENTENCES = Path(__file__).parent / "data" / "sentences.jsonl"
BUILDING = "building the built-in index"  # the progress stages of a first-time build start with this


def _open_or_create(cls: type[Index], directory: Path, encoder: str, index_type: str) -> Index:
    if (directory / "latent.db").exists():
        return cls.open(directory)
    try:
        return cls.create(directory, encoder=encoder, index_type=index_type)
    except IndexExists:  # another process created it meanwhile
        return cls.open(directory)


def _ensure(cls: type[Index], name: str, directory: Path, encoder: str, records: Callable[[], Iterable],
            total: Callable[[], int], progress: Progress, batch_size: int) -> Index:
    """Open (or create) a built-in index; the records are read, and counted, only to build it."""
    index = _open_or_create(cls, directory, encoder, "auto")
    if not index.store.manifest().get("complete"):
        title = f"{BUILDING} {name} in {directory} (once)"
        index.add(records(), batch_size=batch_size, total=total(),
                  progress=lambda stage, n, count: progress(f"{title}: {stage}", n, count))
        index.store.set_manifest(complete=True)
    return index


def word_index(*, progress: Progress = _no_progress, cls: type[Index] = Index) -> Index:
    """The index of all 400,000 GloVe words (keys are the words, metadata their frequency rank:
    GloVe's vocabulary is in order of frequency, 1 the most frequent), built on first use."""
    def records():
        for rank, word in enumerate(load_glove()[0], start=1):
            yield Record(text=word, key=word, kind="word", metadata={"rank": rank}, source="glove", line=rank)

    # "-2": the first layout had no ranks; a cache built by it is left alone, not reused
    return _ensure(cls, "@words", cache_dir() / "glove-words-2", "glove", records, lambda: len(load_glove()[0]),
                   progress, 20_000)


def sentence_index(*, progress: Progress = _no_progress, cls: type[Index] = Index) -> Index:
    """The index of latent's demo sentences (minilm), built on first use."""
    directory = cache_dir() / "demo-sentences"
    return _ensure(cls, "@sentences", directory, "minilm",
                   lambda: read_inputs([str(SENTENCES)], fmt="jsonl", text_field="text", key_field="id"),
                   lambda: len(SENTENCES.read_bytes().splitlines()), progress, 128)


# Real photos that ship inside scikit-image (skimage.data) and scikit-learn, no download.
DEMO_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "hubble_deep_field",
               "immunohistochemistry", "retina", "clock", "page")
DEMO_FACES = 8  # from skimage.data.lfw_subset()


def write_demo_photos(directory: Path) -> Path:
    """Save the bundled photos as PNG/JPEG files into `directory` (once); returns it."""
    import skimage.data
    from PIL import Image
    from sklearn.datasets import load_sample_images

    directory.mkdir(parents=True, exist_ok=True)

    for name in DEMO_PHOTOS:
        target = directory / f"{name}.png"
        if not target.exists():
            pixels = np.asarray(getattr(skimage.data, name)())
            tmp = target.with_suffix(".tmp.png")
            Image.fromarray(pixels).save(tmp)
            os.replace(tmp, target)
    for path in load_sample_images().filenames:
        target = directory / Path(path).name
        if not target.exists():
            shutil.copyfile(path, target)
    faces = skimage.data.lfw_subset()  # 25x25 grey faces in [0, 1]
    for i in range(DEMO_FACES):
        target = directory / "faces" / f"face-{i:02d}.png"
        if not target.exists():
            target.parent.mkdir(exist_ok=True)
            Image.fromarray((faces[i] * 255).astype(np.uint8)).resize((100, 100)).save(target)
    return directory


def image_index(*, progress: Progress = _no_progress, cls: type[Index] = Index) -> Index:
    """A `conse` index (texts and images in one space) over the bundled photos."""
    return _ensure(cls, "@photos", cache_dir() / "demo-images", "conse",
                   lambda: read_images([str(write_demo_photos(cache_dir() / "demo-photos"))]),
                   lambda: len(DEMO_PHOTOS) + 2 + DEMO_FACES, progress, 16)


BUILTIN = {"@words": word_index, "@sentences": sentence_index, "@photos": image_index}


def open_index(directory: str | Path, *, progress: Progress = _no_progress, cls: type[Index] = Index) -> Index:
    """Open an index directory, or a built-in index by name (@words, @sentences, @photos),
    built in the cache directory on first use, as an instance of `cls`."""
    name = str(directory)
    if name.startswith("@"):
        if name not in BUILTIN:
            raise IndexNotFound(f"no built-in index {name!r}; built-in indexes: {', '.join(BUILTIN)}")
        return BUILTIN[name](progress=progress, cls=cls)
    return cls.open(directory)
