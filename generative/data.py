"""Training data and model inputs of the generative models, and labelling images by the
engine's own nearest-neighbour search.

Every image becomes one grey float32 array (1, size, size) in [0, 1] the same way:
grey ("L"), resized bilinearly to size x size, divided by 255. scikit-learn's digits
(8x8, values 0..16) go through that same path from an 8x8 grey image (value * 255 / 16),
so a digit saved as a PNG and read back gives (within rounding) its own model input.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from latent.indexer.encoders.base import Encoder
from latent.indexer.errors import InputError, LatentError
from latent.indexer.images import ImageRefused, decode_image, load_image, read_images
from latent.indexer.index import Index, Progress, _no_progress
from latent.indexer.records import Skip
from latent.search.query import search_vectors

DIGITS = "digits"
DIGITS_SIZE = 16  # default model size for the digits: the 8x8 images upsampled twice
FOLDER_SIZE = 28  # default model size for folders of images
MIN_SIZE, MAX_SIZE = 8, 64

def check_size(size: int) -> int:
    """Model sizes are multiples of 4 (two stride-2 layers) from 8 to 64."""
    if not isinstance(size, int) or isinstance(size, bool) or not MIN_SIZE <= size <= MAX_SIZE or size % 4:
        raise InputError(f"image size must be a multiple of 4 from {MIN_SIZE} to {MAX_SIZE}, got {size!r}")
    return size


@dataclass
class Dataset:
    """Images (n, 1, size, size) float32 in [0, 1]; keys; labels (None for unlabelled folders)."""

    images: np.ndarray
    keys: list[str]
    labels: np.ndarray | None = None
    source: str = DIGITS
    skipped: list[Skip] = field(default_factory=list)

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def __len__(self) -> int:
        return len(self.images)


def to_model_input(image, size: int) -> np.ndarray:
    """One PIL image (any mode) to the float32 (1, size, size) grey model input in [0, 1]."""
    from PIL import Image

    grey = image.convert("L")
    if grey.size != (size, size):
        grey = grey.resize((size, size), Image.Resampling.BILINEAR)
    return (np.asarray(grey, dtype=np.float32) / 255.0)[None]


def digit_image(values: np.ndarray):
    """An 8x8 sklearn digit (values 0..16) as an 8x8 grey PIL image."""
    from PIL import Image

    pixels = np.clip(np.rint(np.asarray(values, dtype=np.float64) * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="L")


def digit_key(i: int) -> str:
    return f"digits/{i:05d}"


def load_digits(size: int = DIGITS_SIZE) -> Dataset:
    """scikit-learn's 1,797 handwritten digits at size x size; keys digits/00000.., labels 0..9."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise InputError("the digits data set needs scikit-learn: pip install scikit-learn") from None
    check_size(size)
    bunch = sk_load_digits()
    images = np.stack([to_model_input(digit_image(v), size) for v in bunch.images]).astype(np.float32)
    return Dataset(images=images, keys=[digit_key(i) for i in range(len(images))],
                   labels=np.asarray(bunch.target, dtype=np.int64), source=DIGITS)


def load_folder(paths: Sequence[str | Path], size: int = FOLDER_SIZE, *,
                progress: Progress = _no_progress) -> Dataset:
    """The images of folders (recursively) or files, grey and resized; bad files become Skips."""
    check_size(size)
    arrays, keys, skipped = [], [], []
    progress("read", 0, None)
    for item in read_images([str(p) for p in paths]):
        if isinstance(item, Skip):
            skipped.append(item)
        else:
            try:
                image, _ = decode_image(Path(item.path).read_bytes())
            except ImageRefused as e:
                skipped.append(Skip(item.source, None, str(e)))
            except OSError as e:
                skipped.append(Skip(item.source, None, f"unreadable ({e.strerror or e})"))
            else:
                arrays.append(to_model_input(image, size))
                keys.append(item.key)
        progress("read", 1, None)
    if not arrays:
        why = f" ({len(skipped)} file(s) skipped, e.g. {skipped[0].source}: {skipped[0].reason})" if skipped else ""
        raise InputError(f"no usable images in {', '.join(map(str, paths))}{why}; give a folder of image files "
                         f"or `{DIGITS}`")
    return Dataset(images=np.stack(arrays).astype(np.float32), keys=keys, labels=None,
                   source=", ".join(os.path.abspath(p) for p in paths), skipped=skipped)


def load_dataset(spec: str | Path, size: int | None = None, *, progress: Progress = _no_progress) -> Dataset:
    """`digits` (scikit-learn's digits) or a folder / image file; size None: the default for the data."""
    if str(spec) == DIGITS and not Path(str(spec)).exists():
        return load_digits(size or DIGITS_SIZE)
    if not Path(spec).exists():
        raise InputError(f"data {spec} does not exist; give a folder of images, or `{DIGITS}` for "
                         "scikit-learn's handwritten digits")
    return load_folder([spec], size or FOLDER_SIZE, progress=progress)


def load_reference(ref: str | Path, size: int) -> tuple[np.ndarray, str]:
    """(model input (1, size, size), description) of `digits:<n>` or an image file."""
    text = str(ref)
    if text.startswith(DIGITS + ":") and not Path(text).exists():
        number = text[len(DIGITS) + 1:]
        if not number.isdigit():
            raise InputError(f"{text!r}: give a digit by its index, e.g. digits:42")
        from sklearn.datasets import load_digits as sk_load_digits

        bunch = sk_load_digits()
        i = int(number)
        if i >= len(bunch.images):
            raise InputError(f"{text!r}: the digits data set has {len(bunch.images)} images, 0 to "
                             f"{len(bunch.images) - 1}")
        return to_model_input(digit_image(bunch.images[i]), size), f"{digit_key(i)} (label {bunch.target[i]})"
    return to_model_input(load_image(text), size), text


def as_images(array: np.ndarray) -> np.ndarray:
    """(n, 1, s, s) or (n, s, s) or (s, s) arrays to float32 (n, s, s)."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 2:
        array = array[None]
    if array.ndim == 4:
        if array.shape[1] != 1:
            raise InputError(f"expected grey images (n, 1, s, s), got shape {array.shape}")
        array = array[:, 0]
    if array.ndim != 3:
        raise InputError(f"expected images (n, s, s), got shape {array.shape}")
    return array


def to_pil(image: np.ndarray):
    """A (s, s) array in [0, 1] to an RGB PIL image (what image encoders' `preprocess` takes)."""
    from PIL import Image

    pixels = np.clip(np.rint(np.asarray(image, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="L").convert("RGB")


# -- indexes of labelled images -----------------------------------------------------------------------
class PixelEncoder(Encoder):
    """Raw pixels as vectors: size*size-d, from grey size x size images (the cosine of pixel vectors).

    Used for reference indexes built in process (`pixels:<size>` is not in the registry)."""

    modalities = ("image",)
    default_batch_size = 256

    def __init__(self, size: int):
        self.size = check_size(size)
        self.name = f"pixels:{size}"
        self.dim = size * size

    def preprocess(self, image) -> np.ndarray:
        return to_model_input(image, self.size)

    def _embed_images(self, batch: np.ndarray) -> tuple[np.ndarray, None]:
        return batch.reshape(len(batch), -1), None


def add_arrays(index, encoder: Encoder, images: np.ndarray, keys: Sequence[str],
               metadata: Sequence[dict] | None = None, *, batch_size: int = 256,
               progress: Progress = _no_progress):
    """Encode model inputs (n, 1, s, s) with `encoder` and add them to `index` under keys (upsert)."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[:, None]
    index.check_encoder(encoder)
    progress("encode", 0, len(images))
    blocks = []
    for start in range(0, len(images), batch_size):
        vectors, _ = encoder.encode_preprocessed(images[start:start + batch_size])
        blocks.append(vectors)
        progress("encode", len(vectors), len(images))
    vectors = np.concatenate(blocks) if blocks else np.zeros((0, encoder.dim), dtype=np.float32)
    return index.add_vectors(list(keys), vectors, metadata=metadata)


def add_dataset(index, encoder: Encoder, data: Dataset, *, progress: Progress = _no_progress):
    """Add a labelled Dataset (the digits) by vectors: metadata {"label": <int>}."""
    metadata = None if data.labels is None else [{"label": int(y)} for y in data.labels]
    return add_arrays(index, encoder, data.images, data.keys, metadata, progress=progress)


def reference_index(directory: str | Path, data: Dataset, encoder: Encoder | None = None):
    """A new flat index in `directory` of a labelled Dataset (pixel vectors unless `encoder` is given)."""
    if data.labels is None:
        raise InputError(f"{data.source} has no labels; nearest-neighbour labels need a labelled index "
                         "(give an index whose items carry a label)")
    encoder = encoder or PixelEncoder(data.size)
    index = Index.create(directory, encoder=encoder, index_type="flat")
    add_dataset(index, encoder, data)
    return index


def label_images(index, images: np.ndarray, *, encoder: Encoder | None = None, k: int = 10,
                 field: str = "label") -> list[str | None]:
    """The majority label (metadata[field], as text) of each image's k nearest items in `index`.

    Images are (n, s, s) arrays in [0, 1]; they are encoded like any query image, by
    `encoder` (default: the index's own) from RGB PIL images. Ties go to the label met
    first, i.e. the nearer one; None when no neighbour carries the field."""
    encoder = encoder or index.encoder
    images = as_images(images)
    labels: list[str | None] = []
    for start in range(0, len(images), 256):
        chunk = [to_pil(im) for im in images[start:start + 256]]
        vectors, _ = encoder.encode_images(chunk)
        for hits in search_vectors(index, vectors, k=k):
            votes = Counter(str(h.metadata[field]) for h in hits
                            if isinstance(h.metadata, dict) and h.metadata.get(field) is not None)
            labels.append(votes.most_common(1)[0][0] if votes else None)
    if images.size and all(label is None for label in labels):
        raise LatentError(f"no item of {index.directory} near these images has metadata {field!r}; "
                          f"give another field, or an index whose items carry it")
    return labels
