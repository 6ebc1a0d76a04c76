"""Images: finding them in folders, decoding them safely into RGB, and preparing them
(hash, decode, preprocess) in worker threads ahead of the model.

Bad files (empty, not an image, corrupt, truncated, unreadable, decompression bombs)
become Skips with a reason; symlink loops are walked once.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

from .errors import InputError
from .readers import Item, Record, Skip

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff",
                    ".ppm", ".pgm", ".pbm", ".pnm", ".ico"}
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*",
          b"P1", b"P2", b"P3", b"P4", b"P5", b"P6", b"\x00\x00\x01\x00")
# Images with more pixels than this are refused (decompression bombs); Pillow's own limit.
MAX_PIXELS = int(os.environ.get("LATENT_MAX_IMAGE_PIXELS", 89_478_485))


class ImageRefused(Exception):
    """An input that is not a usable image; the message is the reason shown to the user."""


def looks_like_image(head: bytes) -> bool:
    """Whether the first bytes of a file carry an image signature."""
    return head.startswith(_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def to_rgb(image) -> "Image.Image":
    """Any Pillow mode to 8-bit RGB: transparency over white, 16-bit and float scaled, CMYK converted."""
    from PIL import Image

    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or arr.max() > 255 else 255.0
        image = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


def decode_image(data: bytes) -> tuple["Image.Image", dict]:
    """Decode bytes into an RGB image (EXIF orientation applied) and {width, height, format}.

    Raises ImageRefused with the reason for anything that is not a usable image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise ImageRefused("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageRefused(f"refused: {width}x{height} = {width * height:,} pixels is over the limit of "
                                   f"{MAX_PIXELS:,} (a decompression bomb?); raise LATENT_MAX_IMAGE_PIXELS to allow it")
            fmt = image.format
            image.load()
            image = ImageOps.exif_transpose(image)
            rgb = to_rgb(image)
    except ImageRefused:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageRefused(f"refused: decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise ImageRefused("not an image (no decoder recognises it)") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as e:  # truncated or corrupt data
        raise ImageRefused(f"corrupt or truncated image ({str(e)[:120]})") from None
    return rgb, {"width": rgb.width, "height": rgb.height, "format": fmt}


def load_image(path: str | Path) -> "Image.Image":
    """An image file as RGB, for queries; InputError when it cannot be used."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return decode_image(data)[0]
    except ImageRefused as e:
        raise InputError(f"{path}: {e}") from None


# -- finding images -----------------------------------------------------------------------------
@dataclass
class ImageRecord(Record):
    """An image file to index: `path` on disk; `prepared` is filled by `prefetch`."""

    path: str = ""
    prepared: Future | None = None


def _walk(root: Path) -> Iterator[Path | Skip]:
    """Files under root, recursively, following symlinks but never into a directory twice;
    a Skip for each directory that cannot be listed."""
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            st = directory.stat()
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue  # a symlink loop, or a directory reached twice
        seen.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as e:
            yield Skip(str(directory), None, f"unreadable directory ({e.strerror})")
            continue
        subdirs = []
        for entry in entries:
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                subdirs.append(path)
            else:
                yield path
        stack.extend(reversed(subdirs))


def read_images(paths: Iterable[str]) -> Iterator[Item]:
    """ImageRecords (key: the path relative to the root given) and Skips for the files of
    every input: folders recursively, or single files (key: the file name)."""
    for p in paths:
        root = Path(p)
        if not root.exists():
            raise InputError(f"input {p} does not exist")
        files = _walk(root) if root.is_dir() else iter([root])
        base = root if root.is_dir() else root.parent
        for path in files:
            if isinstance(path, Skip):
                yield path
                continue
            key = path.relative_to(base).as_posix()
            reason = _not_an_image_file(path)
            if reason:
                yield Skip(str(path), None, reason)
                continue
            yield ImageRecord(text="", key=key, kind="image", source=str(path), path=str(path.resolve()))


def _not_an_image_file(path: Path) -> str | None:
    """A reason to skip `path` without decoding it, or None when it should be decoded."""
    try:
        st = path.stat()
    except OSError as e:
        return f"unreadable ({e.strerror})"
    if not path.is_file():
        return "not a regular file"
    if st.st_size == 0:
        return "empty file"
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        return f"unreadable ({e.strerror})"
    return None if looks_like_image(head) else "not an image"


# -- preparing them in parallel ------------------------------------------------------------------
@dataclass
class Prepared:
    """A decoded, preprocessed image: the model input and the file's metadata."""

    sha256: str
    array: np.ndarray
    metadata: dict


def prepare(record: ImageRecord, preprocess: Callable) -> Prepared:
    """Read, hash, decode and preprocess one image file (runs in a worker thread)."""
    path = Path(record.path)
    try:
        data = path.read_bytes()
        st = path.stat()
    except OSError as e:
        raise ImageRefused(f"unreadable ({e.strerror or e})") from None
    image, info = decode_image(data)
    sha = hashlib.sha256(data).hexdigest()
    metadata = {"path": str(path), "bytes": len(data), **info, "mtime": round(st.st_mtime, 3), "sha256": sha}
    return Prepared(sha, np.asarray(preprocess(image), dtype=np.float32), metadata)


def prefetch(items: Iterable[Item], preprocess: Callable, *, ahead: int = 64,
             workers: int | None = None) -> Iterator[Item]:
    """Yield items in order; image records come with `prepared` futures running ahead in threads."""
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    pending: deque[Item] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="latent-image") as pool:
        try:
            for item in items:
                if isinstance(item, ImageRecord):
                    item.prepared = pool.submit(prepare, item, preprocess)
                pending.append(item)
                if len(pending) > ahead:
                    yield pending.popleft()
            while pending:
                yield pending.popleft()
        finally:
            for item in pending:
                if isinstance(item, ImageRecord) and item.prepared is not None:
                    item.prepared.cancel()
