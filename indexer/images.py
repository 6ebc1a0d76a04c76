"""Images: finding them in folders, decoding them safely into RGB, and preparing them
(hash, decode, preprocess) in worker threads ahead of the model.

Bad files (empty, not an image, corrupt, truncated, unreadable, not a regular file,
decompression bombs) become Skips with a reason; symlink loops are walked once.

Memory is bounded whatever the files hold: a file is never read into memory whole (it is
decoded and hashed from disk); an image over MAX_PIXELS is refused from its header; only
the first frame of an animation is decoded; a large image is reduced toward WORK_SIDE
before any colour conversion or rotation (JPEGs while decoding), so its decoded pixels are
the only full-size copy; and worker threads decode at most MAX_PIXELS pixels at a time
between them.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import threading
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterable, Iterator

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

from .errors import InputError
from .records import Item, Record, Skip

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff",
                    ".ppm", ".pgm", ".pbm", ".pnm", ".ico"}
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*",
          b"P1", b"P2", b"P3", b"P4", b"P5", b"P6", b"\x00\x00\x01\x00")
# Images with more pixels than this are refused (decompression bombs); Pillow's own limit.
MAX_PIXELS = int(os.environ.get("LATENT_MAX_IMAGE_PIXELS", 89_478_485))
# Larger images are reduced by a whole factor (JPEGs while decoding, others right after,
# box filter) until their shorter side is under twice this, before colour conversion and
# EXIF rotation: still several times any encoder's input.
WORK_SIDE = 1024
_HASH_CHUNK = 1 << 20
_TRANSPOSE = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270",
              7: "TRANSVERSE", 8: "ROTATE_90"}  # by EXIF orientation, as ImageOps.exif_transpose


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


class _PixelBudget:
    """At most `limit` pixels being decoded at once, over all threads. An image over the
    limit is refused before it gets here, so each request is eventually granted."""

    def __init__(self, limit: int):
        self.limit = max(1, limit)
        self.used = 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, pixels: int):
        pixels = min(max(1, pixels), self.limit)
        with self._cond:
            self._cond.wait_for(lambda: self.used + pixels <= self.limit)
            self.used += pixels
        try:
            yield
        finally:
            with self._cond:
                self.used -= pixels
                self._cond.notify_all()


_BUDGET = _PixelBudget(MAX_PIXELS)


def _pil():
    """PIL.Image, with Pillow's own bomb limit set to ours (LATENT_MAX_IMAGE_PIXELS can raise it)."""
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS != MAX_PIXELS:
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    return Image


def decode_image(data: bytes | BinaryIO) -> tuple["Image.Image", dict]:
    """Decode an image (bytes, or a binary file open for reading) into RGB, EXIF orientation
    applied, and {width, height, format} of the image as stored (rotated as shown).

    Only the first frame of an animation is decoded; images whose shorter side is twice
    WORK_SIDE or more come back reduced by a whole factor. Raises ImageRefused with the
    reason for anything that is not a usable image.
    """
    Image = _pil()
    from PIL import UnidentifiedImageError

    if isinstance(data, (bytes, bytearray, memoryview)):
        if not data:
            raise ImageRefused("empty file")
        data = io.BytesIO(data)
    try:
        with warnings.catch_warnings():
            # Pillow warns between MAX_PIXELS and twice that; the check below refuses those.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(data)
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise ImageRefused(f"refused: {width}x{height} = {width * height:,} pixels is over the limit of "
                               f"{MAX_PIXELS:,} (a decompression bomb?); raise LATENT_MAX_IMAGE_PIXELS to allow it")
        fmt = image.format
        scale = WORK_SIDE / max(1, min(width, height))
        if scale <= 0.5 and fmt == "JPEG":  # let the decoder scale down (by 1/2, 1/4 or 1/8)
            image.draft(image.mode, (max(1, int(width * scale)), max(1, int(height * scale))))
        with _BUDGET.hold(image.size[0] * image.size[1]):
            image.load()  # the first frame only
            orientation = image.getexif().get(0x0112, 1)
            rgb = to_rgb(_transpose(_reduce(image), orientation))
    except ImageRefused:
        raise
    except Image.DecompressionBombError as e:
        raise ImageRefused(f"refused: decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise ImageRefused("not an image (no decoder recognises it)") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as e:  # truncated or corrupt data
        raise ImageRefused(f"corrupt or truncated image ({str(e)[:120]})") from None
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return rgb, {"width": width, "height": height, "format": fmt}


def _reduce(image: "Image.Image") -> "Image.Image":
    """The image reduced by a whole factor (box filter) until its shorter side is under twice
    WORK_SIDE; itself when it already is. Done a strip at a time, so the only full-size
    copy in memory is the decoded image itself."""
    Image = _pil()
    width, height = image.size
    factor = min(width, height) // WORK_SIDE
    if factor < 2:
        return image
    size = (-(-width // factor), -(-height // factor))
    if image.mode in ("1", "P", "PA"):  # palette indices cannot be averaged: sample them
        return image.resize(size, Image.Resampling.NEAREST)
    out = Image.new(image.mode, size)
    rows = factor * max(1, (1 << 22) // (width * factor))  # strips of about 4M pixels
    for top in range(0, height, rows):
        strip = image.crop((0, top, width, min(height, top + rows)))
        try:
            small = strip.reduce(factor)
        except ValueError:  # modes reduce() does not take (16-bit grey)
            small = strip.resize((size[0], -(-strip.height // factor)), Image.Resampling.BOX)
        out.paste(small, (0, top // factor))
    out.info = dict(image.info)
    return out


def _transpose(image: "Image.Image", orientation) -> "Image.Image":
    method = _TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
    return image.transpose(getattr(_pil().Transpose, method)) if method else image


def load_image(path: str | Path) -> "Image.Image":
    """An image file as RGB, for queries; InputError when it cannot be used."""
    return read_query_image(path)[0]


def read_query_image(path: str | Path) -> tuple["Image.Image", str]:
    """An image file as RGB and the SHA-256 of its bytes (the content hash an indexed copy of
    it is stored under), from one read; InputError when it cannot be used."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return decode_image(data)[0], hashlib.sha256(data).hexdigest()
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
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_size == 0:
        return "empty file"
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return None
    try:
        with open_regular(path) as f:
            head = f.read(16)
    except ImageRefused as e:
        return str(e)
    return None if looks_like_image(head) else "not an image"


def open_regular(path: str | Path) -> BinaryIO:
    """`path` open for reading in binary; ImageRefused when it cannot be opened or is not a
    regular file. Never blocks: a FIFO put in a file's place is refused, not waited on."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise ImageRefused(f"unreadable ({e.strerror or e})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageRefused("not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def file_sha256(f: BinaryIO) -> str:
    """The SHA-256 (hex) of an open binary file, read from its start in pieces (never whole);
    ImageRefused when it cannot be read."""
    try:
        f.seek(0)
        digest = hashlib.sha256()
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    except OSError as e:
        raise ImageRefused(f"unreadable ({e.strerror or e})") from None
    return digest.hexdigest()


# -- preparing them in parallel ------------------------------------------------------------------
@dataclass
class Prepared:
    """A decoded, preprocessed image: the model input and the file's metadata."""

    sha256: str
    array: np.ndarray
    metadata: dict


def prepare(record: ImageRecord, preprocess: Callable) -> Prepared:
    """Decode, hash and preprocess one image file (runs in a worker thread), reading it
    from disk in pieces: the file is never in memory whole."""
    path = Path(record.path)
    with open_regular(path) as f:
        st = os.fstat(f.fileno())
        if st.st_size == 0:
            raise ImageRefused("empty file")
        image, info = decode_image(f)
        sha = file_sha256(f)
    metadata = {"path": str(path), "bytes": st.st_size, **info, "mtime": round(st.st_mtime, 3), "sha256": sha}
    return Prepared(sha, np.asarray(preprocess(image), dtype=np.float32), metadata)


def prefetch(items: Iterable[Item], preprocess: Callable, *, ahead: int = 64,
             workers: int | None = None) -> Iterator[Item]:
    """Yield items in order; image records come with `prepared` futures running ahead in threads."""
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    pending: deque[Item] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="latent-image") as pool:
        try:
            for item in items:
                if isinstance(item, ImageRecord) and item.vector is None:  # (else encoded elsewhere)
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
