"""Pictures of small images: rows of equally sized grey images into one PNG, upscaled
(nearest neighbour, so 8x8 and 16x16 pixels stay crisp) with thin grey separators.
Grey mode and PNG's optimiser keep the files small (a few kB)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from latent.indexer.errors import InputError

CELL_PIXELS = 64  # default upscaling: each image at least this many pixels wide
SEPARATOR = 2     # pixels between cells (and around the picture)
WIDE = 8          # pixels of a wide gap (set off inputs from what was decoded)
SEPARATOR_GREY = 128


def default_scale(size: int) -> int:
    return max(1, math.ceil(CELL_PIXELS / max(1, size)))


def _pixels(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 2:
        raise ValueError(f"grid cells must be 2-D grey images, got shape {image.shape}")
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def compose(rows: Sequence[Sequence[np.ndarray]], *, scale: int | None = None, sep: int = SEPARATOR,
            wide_after: Sequence[int] = (), wide: int = WIDE, grey: int = SEPARATOR_GREY):
    """A grey PIL image of `rows` of (s, s) arrays in [0, 1]; rows may differ in length.

    `wide_after`: column numbers after which the gap is `wide` pixels instead of `sep`."""
    from PIL import Image

    rows = [[_pixels(cell) for cell in row] for row in rows]
    if not rows or not any(rows):
        raise ValueError("nothing to draw")
    h, w = next(cell for row in rows for cell in row).shape
    if any(cell.shape != (h, w) for row in rows for cell in row):
        raise ValueError("grid cells must all have the same size")
    scale = scale or default_scale(max(h, w))
    ch, cw = h * scale, w * scale
    ncols = max(len(row) for row in rows)
    gaps = [wide if c in set(wide_after) else sep for c in range(ncols - 1)]
    xs = [sep]
    for gap in gaps:
        xs.append(xs[-1] + cw + gap)
    width = xs[-1] + cw + sep
    height = sep + len(rows) * (ch + sep)
    canvas = np.full((height, width), grey, dtype=np.uint8)
    for r, row in enumerate(rows):
        y = sep + r * (ch + sep)
        for c, cell in enumerate(row):
            canvas[y:y + ch, xs[c]:xs[c] + cw] = np.kron(cell, np.ones((scale, scale), dtype=np.uint8))
    return Image.fromarray(canvas, mode="L")


def save_grid(rows: Sequence[Sequence[np.ndarray]], path: str | Path, **kw) -> dict:
    """Compose `rows` (see `compose`) and write a PNG; {path, width, height, bytes}."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a file name for the picture, e.g. {path / 'grid.png'}")
    if not path.parent.exists():
        raise InputError(f"cannot write {path}: folder {path.parent} does not exist; create it first")
    image = compose(rows, **kw)
    try:
        image.save(path, format="PNG", optimize=True)
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror or e}") from None
    return {"path": str(path), "width": image.width, "height": image.height, "bytes": path.stat().st_size}


def chunk(images: Sequence[np.ndarray], cols: int) -> list[list[np.ndarray]]:
    """A flat list of images as rows of `cols`."""
    images = list(images)
    return [images[i:i + cols] for i in range(0, len(images), cols)]
